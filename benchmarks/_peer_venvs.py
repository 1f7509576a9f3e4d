"""The peers' own virtualenvs: ``.venv-peers/<env>``, one per requirements file.

OpenLIT and traceloop-sdk pin and pull many packages (boto3, anthropic, forty
instrumentations); installed into the project's ``.venv`` they would change what the tests
and the other benchmarks run on. Each peer therefore gets a venv of its own, built from
``benchmarks/peer_requirements/<env>.txt`` (the shared LangChain/OpenAI/OTel pins in
``common.txt``) plus this project in editable mode with the ``service`` extra, which the
turn needs (LangGraph, langchain-openai, the fake OpenAI server).

    python -m benchmarks._peer_venvs            # build or refresh every env
    python -m benchmarks._peer_venvs openlit    # one

A venv is rebuilt only when its requirements (or pyproject.toml) changed since it was built:
a stamp file holds their hash.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "peer_requirements"
VENVS = ROOT / ".venv-peers"
ENVS = ("base", "openinference", "openlit", "openllmetry")
_STAMP = ".chatter-bench-stamp"


def python(env: str) -> Path:
    return VENVS / env / "bin" / "python"


def _fingerprint(env: str) -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS / "common.txt", REQUIREMENTS / f"{env}.txt", ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current(env: str) -> bool:
    stamp = VENVS / env / _STAMP
    return (
        python(env).exists() and stamp.exists() and stamp.read_text().strip() == _fingerprint(env)
    )


def build(env: str, *, quiet: bool = True) -> None:
    """Create (or refresh) ``.venv-peers/<env>``; pip is upgraded before anything else."""
    if env not in ENVS:
        raise ValueError(f"unknown peer env {env!r}; one of {', '.join(ENVS)}")
    target = VENVS / env
    if not python(env).exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    flags = ["--quiet"] if quiet else []
    pip = [str(python(env)), "-m", "pip", "--disable-pip-version-check", *flags]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run(
        [*pip, "install", "-r", str(REQUIREMENTS / f"{env}.txt"), "-e", f"{ROOT}[service]"],
        check=True,
        cwd=ROOT,
    )
    frozen = subprocess.run(
        [*pip[:3], "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    (target / "freeze.txt").write_text(frozen)
    (target / _STAMP).write_text(_fingerprint(env) + "\n")


def ensure(envs: list[str]) -> None:
    for env in envs:
        if not is_current(env):
            print(f"   building .venv-peers/{env} (pip install, a minute or more) ...", flush=True)
            build(env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._peer_venvs", description=__doc__)
    parser.add_argument("envs", nargs="*", help=f"any of {', '.join(ENVS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="reinstall even when up to date")
    args = parser.parse_args(argv)
    unknown = set(args.envs) - set(ENVS)
    if unknown:
        parser.error(f"unknown env(s): {', '.join(sorted(unknown))}")
    for env in args.envs or ENVS:
        if args.force or not is_current(env):
            print(f"== .venv-peers/{env}", flush=True)
            build(env, quiet=False)
        else:
            print(f"== .venv-peers/{env}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
