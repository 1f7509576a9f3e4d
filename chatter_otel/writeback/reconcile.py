"""``chatter-otel reconcile``: every conversation's totals recomputed from its messages.

The write-back leaves a conversation exact each time it writes one of its messages; what
it has not written since (history from before adoption, an application that still updates
the totals itself, rows edited by hand) can drift. This walks all conversations in id
order, in batches of one short transaction each (the same lock and the same recompute
statement as the write-back, so it can run beside live traffic), and reports what differed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import URL

from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.store import ApplyResult, Store

Progress = Callable[[int, int, int], None]
"""``progress(done, total, drifted)`` after each batch."""


@dataclass
class Drift:
    """One conversation whose stored totals differ from its messages."""

    conversation_id: str
    stored_tokens: int
    tokens: int
    stored_cost: float
    cost: float
    stored_count: int
    count: int


@dataclass
class ReconcileReport:
    checked: int = 0
    drifted: list[Drift] = field(default_factory=list)
    """Conversations whose tokens, cost or message count differed."""
    repaired: int = 0
    """Of those, written (0 in a dry run)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Conversations the database refused to update, by reason (logged)."""


def reconcile(
    url: str | URL,
    *,
    mapping: WritebackMapping | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Recomputes (or with ``dry_run`` only compares) every conversation's totals.

    Raises TransientError or PermanentError (see :mod:`.dberrors`) when the database
    cannot be read at all."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = Store(url, mapping or WritebackMapping())
    report = ReconcileReport()
    try:
        with store.transaction() as conn:
            total = int(conn.execute(store.sql.count_conversations).scalar() or 0)
        after = ""
        while True:
            with store.transaction() as conn:
                ids = [
                    row[0]
                    for row in conn.execute(
                        store.sql.page_conversations, {"after": after, "n": batch_size}
                    )
                ]
                if not ids:
                    break
                _batch(store, conn, ids, report, dry_run)
            after = ids[-1]
            report.checked += len(ids)
            if progress is not None:
                progress(report.checked, max(total, report.checked), len(report.drifted))
    finally:
        store.dispose()
    return report


def _batch(store: Store, conn: Any, ids: list[str], report: ReconcileReport, dry: bool) -> None:
    if store.sql.lock_conversations is not None and not dry:
        conn.execute(store.sql.lock_conversations, {"ids": ids})
    drifted = [Drift(*row) for row in conn.execute(store.sql.select_drift, {"ids": ids})]
    report.drifted += drifted
    if dry:
        return
    result = ApplyResult()
    # All of them, not only the drifted: the last message time is repaired too.
    refused = set(store.recompute(conn, result, ids))
    for reason, amount in result.rejections.items():
        report.refused[reason] = report.refused.get(reason, 0) + amount
    report.repaired += sum(1 for d in drifted if d.conversation_id not in refused)


class StderrProgress:
    """A one-line progress display on a terminal (nothing when stderr is not one)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._shown = False

    def __call__(self, done: int, total: int, drifted: int) -> None:
        if not self._stream.isatty():
            return
        width = 30
        filled = width * done // max(total, 1)
        self._stream.write(
            f"\rreconcile [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"conversations, {drifted} drifted"
        )
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


def describe(report: ReconcileReport, *, dry_run: bool, limit: int = 20) -> list[str]:
    """The lines ``chatter-otel reconcile`` prints."""
    verb = "would be repaired" if dry_run else "repaired"
    lines = [
        f"{report.checked} conversations checked, {len(report.drifted)} differed from their "
        f"messages, {len(report.drifted) if dry_run else report.repaired} {verb}"
    ]
    for d in report.drifted[:limit]:
        lines.append(
            f"  {d.conversation_id}: tokens {d.stored_tokens} -> {d.tokens}, "
            f"cost {d.stored_cost:.6f} -> {float(d.cost):.6f}, messages {d.stored_count} -> "
            f"{d.count}"
        )
    if len(report.drifted) > limit:
        lines.append(f"  ... and {len(report.drifted) - limit} more")
    for reason, amount in sorted(report.refused.items()):
        lines.append(f"  {amount} conversation(s) not updated: {reason} (see the log)")
    return lines
