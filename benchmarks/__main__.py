"""``python -m benchmarks``: every measurement of chatter-otel's cost, one table.

    python -m benchmarks            # full run (~11 min), writes benchmarks/RESULTS.md
    python -m benchmarks --quick    # smoke run (~2 min), prints only
    python -m benchmarks --only turn [--only http ...]
    python -m benchmarks --only peers   # OpenLIT, OpenLLMetry, openinference, in .venv-peers/

Parts run one after the other in this process (subprocesses where a part needs its own
interpreter: memory, writer processes, the HTTP service and its load generator), each on its
own private PostgreSQL database that it drops afterwards.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from benchmarks import _db, _machine
from benchmarks._report import Options, Section, markdown_notes, markdown_table, text_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def _parts() -> dict[str, Callable[[], ModuleType]]:
    # Imported lazily so --only loads only what it runs.
    def load(name: str) -> Callable[[], ModuleType]:
        def _import() -> ModuleType:
            import importlib

            return importlib.import_module(f"benchmarks.{name}")

        return _import

    return {
        "turn": load("turn_overhead"),
        "span": load("span_cost"),
        "writeback": load("writeback_throughput"),
        "memory": load("memory"),
        "http": load("http_load"),
        "peers": load("peers"),
    }


def main(argv: list[str] | None = None) -> int:
    parts = _parts()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--only", action="append", choices=list(parts), help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to write (default: benchmarks/RESULTS.md for a full run of every "
        "part, nothing for --quick or --only)",
    )
    parser.add_argument("--seed", type=int, default=7, help="shuffling seed")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions for the parts that honour it (turn, peers; http: the fewest rounds)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    selected = args.only or list(parts)
    output = args.output
    if output is None and not args.quick and not args.only:
        output = RESULTS
    server = _db.server_url()
    try:
        pg_version = _db.server_version(server)
    except Exception as exc:
        print(f"benchmarks: PostgreSQL at {server.render_as_string()} unreachable: {exc}")
        return 2
    machine = _machine.describe(pg_version)
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-"))
    options = Options(
        quick=args.quick, server=server, workdir=workdir, seed=args.seed, reps=args.reps
    )
    sections: list[Section] = []
    failed = False
    started = time.monotonic()
    try:
        for name in selected:
            print(f"== {name} ...", flush=True)
            t0 = time.monotonic()
            try:
                section = parts[name]().run(options)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                section = Section(name, f"{name} (failed)")
                section.add(
                    f"{name}: the part failed",
                    f"{type(exc).__name__}: {exc}"[:200],
                    verdict="error",
                )
            section.seconds = time.monotonic() - t0
            sections.append(section)
            print(text_table([section]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    command = (
        "python -m benchmarks"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {n}" for n in args.only or [])
    )
    print()
    print(text_table(sections))
    print(f"\n{command}: {total:.0f} s")
    if output is not None:
        output.write_text(_markdown(sections, machine, command, total))
        print(f"written to {output}")
    missed = sum(r.verdict == "MISSED" for s in sections for r in s.rows)
    print(f"{missed} target(s) missed" if missed else "every target met")
    # Missed targets are results, not failures: only a part that could not run fails.
    return 1 if failed else 0


def _markdown(
    sections: list[Section], machine: list[tuple[str, str]], command: str, total: float
) -> str:
    lines = [
        "# chatter-otel benchmark results",
        "",
        f"Produced by `{command}` (`make bench`) in {total / 60:.1f} min; this file is its "
        "output, not edited by hand. Every ratio is measured side by side in the same run, "
        "variants interleaved, repeated; the table gives the median and the spread "
        "(min–max over repetitions, n = repetitions).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine),
        "",
        "## Results",
        "",
        markdown_table(sections),
        "",
        "## How each part was measured",
        "",
        markdown_notes(sections),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
