"""What the numbers were measured on: ratios move with the CPU, the core count and versions.

Read from ``/proc`` and package metadata only (no extra dependency), so the description is
available wherever the suite runs.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-fastapi",
    "openinference-instrumentation-langchain",
    "langchain-core",
    "langgraph",
    "sqlalchemy",
    "psycopg",
    "asyncpg",
    "fastapi",
    "uvicorn",
)

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _command(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _git() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git)."""
    head = _command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    if head in ("not installed", "unknown") or "fatal" in head:
        return "unknown"
    try:
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    return f"{head}{' (with uncommitted changes)' if status else ''}"


def describe(postgres_version: str | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs for the header of ``RESULTS.md``."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    rows = [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("memory", _memory()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("load average at start", " ".join(f"{x:.2f}" for x in load)),
        ("PostgreSQL", postgres_version or "unknown"),
        ("wrk", _command("wrk", "--version").split(" Copyright")[0]),
        ("chatter-otel commit", _git()),
    ]
    rows.extend((package, _version(package)) for package in PACKAGES)
    return rows
