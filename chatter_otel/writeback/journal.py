"""The write-ahead journal: every record on disk before it waits in memory for the database.

A SIGKILL (or OOM kill, or power loss) takes the processor's memory with it. So that such a
crash loses at most the turns that ended in the last flush interval, whether the database is
up or down, the assembler appends each pass's records to the journal with one fsync before
handing them to the writer (a few fsyncs per second at most, off the application's thread).

The journal is a :class:`~.spool.Spool` of its own in the spool directory: the same file
format, naming and ``flock`` as spool files, so when the process dies its journal files are
replayed by the next process exactly like a dead process's spool files (a record that had
been written already is applied again harmlessly: the ledger keeps it once). While the
process lives it never replays its own journal: those records are in its memory.

A journal file is deleted once every record in it is settled: written, orphaned or rejected
by the database, moved to a spool file, appended again to a newer journal file (records
waiting for their message row), or counted lost. Files are deleted oldest first and at most
two exist at a time, so during a database outage the file being appended to grows with the
spool (records beyond ``max_queue`` are in both until the outage ends and the older file,
holding the records in memory, can go).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool import OwnClaim, Spool

logger = logging.getLogger("chatter_otel.writeback")

_ROTATE_AFTER = 2.0
"""Seconds after which the file being appended to is sealed, so it can be deleted once its
records are settled (a file is not deleted while it is being appended to)."""

_Key = tuple[str, str]


class _Segment:
    __slots__ = ("open", "outstanding")

    def __init__(self) -> None:
        self.outstanding = 0
        self.open = True


class Journal:
    """Thread-safe: the assembler appends, the writer settles."""

    def __init__(self, spool: Spool, *, rotate_after: float = _ROTATE_AFTER) -> None:
        """``spool``: a spool of the journal's own, created with ``seal_after=inf`` (the
        journal decides when its file is sealed)."""
        self._spool = spool
        self._rotate_after = rotate_after
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._where: dict[_Key, _Segment] = {}
        self._opened = 0.0
        self._failing = False
        self._closed = False

    def write(self, records: Sequence[TurnRecord]) -> bool:
        """Appends and fsyncs; False (logged once per outage) when the disk refuses: the
        records then live in memory only, as they would without a journal."""
        if not records:
            return True
        with self._lock:
            if self._closed:
                return False  # a writer still stuck at shutdown: its records were spooled
            self._rotate_locked(time.monotonic())
            try:
                self._spool.append(records)
            except OSError as exc:
                if not self._failing:
                    logger.error(
                        "write-back journal in %s unusable (%s): records are kept in memory "
                        "only until it works again",
                        self._spool.directory,
                        exc,
                    )
                self._failing = True
                return False
            self._failing = False
            if not self._segments or not self._segments[-1].open:
                self._segments.append(_Segment())
                self._opened = time.monotonic()
            segment = self._segments[-1]
            for record in records:
                key = (record.trace_id, record.span_id)
                previous = self._where.get(key)
                if previous is not None:
                    previous.outstanding -= 1
                self._where[key] = segment
                segment.outstanding += 1
            self._delete_settled_locked()
        return True

    def settle(self, records: Sequence[TurnRecord]) -> None:
        """These records no longer need the journal (written, moved elsewhere, or lost)."""
        if not records:
            return
        with self._lock:
            for record in records:
                segment = self._where.pop((record.trace_id, record.span_id), None)
                if segment is not None:
                    segment.outstanding -= 1
            self._rotate_locked(time.monotonic())
            self._delete_settled_locked()

    def _rotate_locked(self, now: float) -> None:
        """Seals the file being appended to once it is old enough and no sealed file is
        left: at most two files (and two descriptors) at any time. While an older file
        waits for its records (a database outage), the current one keeps growing."""
        if (
            len(self._segments) == 1
            and self._segments[-1].open
            and now - self._opened >= self._rotate_after
        ):
            claim = self._spool.claim(now, created_before=float("inf"), seal=True)
            if claim is not None:
                claim.release()  # only sealing was wanted: the file stays ours
            self._segments[-1].open = False

    def _delete_settled_locked(self) -> None:
        """Deletes sealed files whose records are all settled, oldest first (the order the
        spool hands its sealed files back in)."""
        while self._segments and not self._segments[0].open and self._segments[0].outstanding <= 0:
            claim = self._spool.claim(time.monotonic(), created_before=float("inf"))
            if claim is None:
                return
            if not isinstance(claim, OwnClaim):
                claim.release()  # a dead process's file: the writer replays those
                return
            claim.done()
            self._segments.popleft()

    @property
    def unsettled(self) -> int:
        with self._lock:
            return len(self._where)

    def close(self, *, settled_all: bool) -> None:
        """At shutdown: when every record was settled, seal and delete every file; otherwise
        they stay on disk for the next start to replay."""
        with self._lock:
            self._closed = True
            if settled_all:
                self._where.clear()
                for segment in self._segments:
                    segment.outstanding = 0
                self._opened = float("-inf")
                self._delete_settled_locked()
                self._rotate_locked(time.monotonic())
                self._delete_settled_locked()
        self._spool.close()
