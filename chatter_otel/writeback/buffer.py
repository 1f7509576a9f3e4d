"""The records between the assembler and the writer: one lock, one condition, one rule for room.

Everything the two threads share lives here and is read and changed only under the lock:
records ready to be written, records waiting for their message row, the batch being written,
pending flush requests and the stop flag. Both threads decide what to do under the lock and
do their I/O (spool, database) after releasing it.

The rule for room: records in memory (ready + waiting) never exceed ``max_queue``; what
:meth:`RecordBuffer.admit` cannot keep is returned to the caller, who spools it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from chatter_otel.writeback.records import TurnRecord


class FlushRequest:
    """One ``force_flush`` call: completed by the writer once everything enqueued before it
    was written (or could not be, with the reason)."""

    __slots__ = ("_done", "failure")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.failure: str | None = None
        """Why the flush is incomplete (None: everything before it was written)."""

    def complete(self, failure: str | None) -> None:
        self.failure = failure
        self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once completed (successfully or not) within ``timeout`` seconds."""
        return self._done.wait(max(0.0, timeout))


class RecordBuffer:
    """Records in memory, in the order they will be written."""

    def __init__(self, max_queue: int, batch_size: int) -> None:
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.cond = threading.Condition(threading.Lock())
        self.ready: deque[TurnRecord] = deque()
        self.waiting: deque[tuple[float, TurnRecord]] = deque()
        """(monotonic time of the next attempt, record) whose message row was missing."""
        self.inflight: list[TurnRecord] = []
        self.flushes: list[FlushRequest] = []
        """Flush requests the assembler has passed on: every record before them is here."""
        self.stopping = False

    # --- the one rule for room (caller holds the lock) ---------------------------------------

    def _room(self) -> int:
        return max(0, self.max_queue - len(self.ready) - len(self.waiting))

    # --- assembler side --------------------------------------------------------------------

    def admit(self, records: Sequence[TurnRecord]) -> list[TurnRecord]:
        """Queues what fits for writing; returns the rest (to be spooled by the caller)."""
        if not records:
            return []
        with self.cond:
            room = self._room()
            self.ready.extend(records[:room])
            if records[:room]:
                self.cond.notify_all()
            return list(records[room:])

    def request_flush(self, request: FlushRequest) -> None:
        with self.cond:
            self.flushes.append(request)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    # --- writer side (caller holds the lock unless said otherwise) -------------------------

    def next_batch(self, now: float, forced: int) -> tuple[list[TurnRecord], int]:
        """Ready records, then waiting records that are due (and the first ``forced`` of
        them whether due or not); remembered as in flight. Returns (batch, forced left)."""
        batch: list[TurnRecord] = []
        while self.ready and len(batch) < self.batch_size:
            batch.append(self.ready.popleft())
        while (
            self.waiting
            and len(batch) < self.batch_size
            and (forced > 0 or self.waiting[0][0] <= now)
        ):
            batch.append(self.waiting.popleft()[1])
            forced -= 1
        self.inflight = batch
        return batch, forced

    def retry_first(self, batch: Sequence[TurnRecord]) -> None:
        """A batch the database did not take goes back to the front (it had room already)."""
        self.ready.extendleft(reversed(batch))

    def hold(self, records: Sequence[TurnRecord], retry_at: float) -> list[TurnRecord]:
        """Keeps records whose message row is missing; returns those without room."""
        room = self._room()
        self.waiting.extend((retry_at, record) for record in records[:room])
        return list(records[room:])

    def drain(self) -> list[TurnRecord]:
        """Everything left in memory (the batch in flight too), emptied: for shutdown."""
        left = [*self.ready, *(record for _, record in self.waiting), *self.inflight]
        self.ready.clear()
        self.waiting.clear()
        self.inflight = []
        return left

    # --- introspection (takes the lock) ----------------------------------------------------

    def sizes(self) -> tuple[int, int]:
        """(records in memory including the batch in flight, records waiting for a row)."""
        with self.cond:
            return len(self.ready) + len(self.waiting) + len(self.inflight), len(self.waiting)

    def waiting_records(self) -> list[TurnRecord]:
        with self.cond:
            return [record for _, record in self.waiting]

    def oldest_end_ns(self) -> int | None:
        """When the span of the oldest record in memory ended (ns since the epoch)."""
        with self.cond:
            heads = [r.end_ns for r in self.inflight[:1]]
            if self.ready:
                heads.append(self.ready[0].end_ns)
            if self.waiting:
                heads.append(min(record.end_ns for _, record in self.waiting))
        return min(heads) if heads else None

    def oldest_age(self) -> float:
        oldest = self.oldest_end_ns()
        return 0.0 if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
