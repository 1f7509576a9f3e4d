"""The table every measurement contributes to, printed and written to ``RESULTS.md``.

One row per figure: what was compared, the median, its spread, the target when the issue
sets one, and whether it was met. Notes under the table say how each part was measured,
because a ratio without its method cannot be checked by anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.engine import URL

T = TypeVar("T")

Verdict = Literal["met", "MISSED", "info", "error"]


@dataclass
class Row:
    measurement: str
    value: str
    spread: str = ""
    target: str = ""
    verdict: Verdict = "info"


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        measurement: str,
        value: str,
        spread: str = "",
        target: str = "",
        verdict: Verdict = "info",
    ) -> Row:
        row = Row(measurement, value, spread, target, verdict)
        self.rows.append(row)
        return row

    def check(self, measurement: str, value: str, spread: str, target: str, ok: bool) -> Row:
        return self.add(measurement, value, spread, target, "met" if ok else "MISSED")


HEADER = ("#", "measurement", "median", "spread (min–max, n)", "target", "met?")


def _cells(sections: list[Section]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for index, section in enumerate(sections, 1):
        for sub, row in enumerate(section.rows, 1):
            verdict = "" if row.verdict == "info" else row.verdict
            rows.append(
                (f"{index}.{sub}", row.measurement, row.value, row.spread, row.target, verdict)
            )
    return rows


def markdown_table(sections: list[Section]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for cells in _cells(sections):
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines)


def text_table(sections: list[Section]) -> str:
    cells = [HEADER, *_cells(sections)]
    widths = [min(70, max(len(row[i]) for row in cells)) for i in range(len(HEADER))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_notes(sections: list[Section]) -> str:
    parts: list[str] = []
    for index, section in enumerate(sections, 1):
        parts.append(
            f"### {index}. {section.title} (`--only {section.name}`, {section.seconds:.0f} s)"
        )
        parts.append("")
        parts.extend(f"- {note}" for note in section.notes)
        parts.append("")
    return "\n".join(parts)


@dataclass(frozen=True)
class Options:
    """What every part receives from ``__main__``."""

    quick: bool
    server: URL
    workdir: Path
    seed: int = 7
    reps: int | None = None
    """Repetitions asked for on the command line (``--reps``); None: each part's default."""

    def pick(self, full: T, quick: T) -> T:
        return quick if self.quick else full
