"""The assembler thread: finished spans in, journaled turn records out, at a gentle pace.

The application's threads only append spans to :attr:`AssemblyWorker.inbox`. This thread
reads them every quarter of the flush interval (25 to 250 ms), turns each owner span into a
:class:`~.records.TurnRecord` (see :mod:`.assembler`), appends the pass's records to the
write-ahead journal (one fsync) and hands them to the writer through the
:class:`~.buffer.RecordBuffer`; records beyond its room go to the spool. It never touches the
database, so spans keep being consumed, journaled and, beyond ``max_queue``, spooled while
the database is slow, down or hanging.

Pacing (measured with ``benchmarks/turn_overhead.py``): a pass costs the application more
than the spans it reads, since it takes the GIL from the request thread and runs on cold
caches; ten times fewer passes halved the write-back's added time per plain chat turn (139
to 68 us). While the application ends spans in a burst (over ~80,000/s) the thread stays off
the GIL for up to a quarter of the flush interval (at most 0.5 s), and it yields the GIL
every 2 ms while reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan

from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.buffer import FlushRequest, RecordBuffer
from chatter_otel.writeback.journal import Journal
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.stats import Counters

logger = logging.getLogger("chatter_otel.writeback")

_POLL_SHARE = 0.25
_POLL_MIN, _POLL_MAX = 0.025, 0.25
"""Seconds between passes: a quarter of the flush interval, within these bounds."""
_BURST_RATE = 80_000
"""Spans per second ended by the application that make a burst."""
_BURST_DEFER = 0.5
"""Longest a burst keeps the thread off the GIL (and never beyond a quarter of the flush
interval: the journal must hold every record within one flush interval of its span's end)."""
_CATCH_UP = 4096
"""Backlog above which the thread stops yielding the GIL early: it takes its full share, so
a sustained producer cannot build up a backlog (and memory) beyond about this."""
HARD_LIMIT = 131_072
"""Backlog above which ``on_end`` waits (bounded, counted) for this thread."""
BACKPRESSURE_WAIT = 2.0
_EXPIRE_EVERY = 1.0
_DRAIN_LIMIT = 8192
"""Spans read per pass before finalizing owners again."""
_YIELD_EVERY = 0.002
"""Longest stretch (s) the thread keeps the GIL while reading a burst of spans."""

Spill = Callable[[list[TurnRecord]], int]
"""Spools records that do not fit in memory (and settles them in the journal)."""


class AssemblyWorker:
    """Owns the inbox and the :class:`Assembler`; the only thread that reads spans."""

    def __init__(
        self,
        *,
        assembler: Assembler,
        buffer: RecordBuffer,
        journal: Journal,
        counters: Counters,
        spill: Spill,
        flush_interval: float,
        trace_ttl: float,
    ) -> None:
        self.inbox: deque[ReadableSpan | FlushRequest] = deque()
        """Appended to by ``on_end`` without a lock (``deque.append`` is atomic)."""
        self._assembler = assembler
        self._buffer = buffer
        self._journal = journal
        self._counters = counters
        self._spill = spill
        self._poll = min(_POLL_MAX, max(_POLL_MIN, _POLL_SHARE * flush_interval))
        self._defer = min(_BURST_DEFER, _POLL_SHARE * flush_interval)
        self._trace_ttl = trace_ttl
        self._cond = threading.Condition(threading.Lock())
        """Wakes this thread (a flush, shutdown) and ``on_end`` calls under backpressure."""
        self._wake = False
        self._stop = False
        self._flushes_queued = 0
        self.thread = threading.Thread(
            target=self._loop, name="chatter-otel-writeback-assembler", daemon=True
        )

    # --- called from other threads -------------------------------------------------------

    def wake(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def submit_flush(self, request: FlushRequest) -> None:
        """Queues ``request`` behind every span ended so far: when this thread reaches it,
        all of them have been read, however many keep arriving after it."""
        with self._cond:
            self.inbox.append(request)
            self._flushes_queued += 1
            self._wake = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._wake = True
            self._cond.notify_all()

    def backpressure(self) -> None:
        """``on_end`` found the inbox over :data:`HARD_LIMIT`: waits on the condition (at
        most :data:`BACKPRESSURE_WAIT`) until this thread has worked it down to half.
        Counted as ``throttled``; the span is queued whatever happens."""
        self._counters.add("throttled")
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: len(self.inbox) <= HARD_LIMIT // 2 or self._stop,
                timeout=BACKPRESSURE_WAIT,
            )

    # --- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        last_expire = time.monotonic()
        more = False
        backlog, checked = 0, time.monotonic()
        deferring_since: float | None = None
        while True:
            with self._cond:
                if not more:
                    self._cond.wait_for(lambda: self._wake, timeout=self._poll)
                self._wake = False
                stopping = self._stop
            queued, now = len(self.inbox), time.monotonic()
            rate = (queued - backlog) / max(now - checked, 1e-3)
            if self._burst(rate, queued, deferring_since, stopping):
                deferring_since = deferring_since or now
                backlog, checked, more = queued, now, False
                continue
            deferring_since = None
            flushes: list[FlushRequest] = []
            try:
                more, flushes = self._drain(now, polite=queued < _CATCH_UP)
                # A flush (or shutdown) finalizes every owner read so far, grace or not.
                records = self._assembler.take(now, force=bool(flushes) or stopping)
                if now - last_expire >= _EXPIRE_EVERY:
                    last_expire = now
                    self._assembler.expire(now)
                if stopping and not more:
                    self._assembler.expire(now + 10 * (self._trace_ttl + 3600.0))
                    records += self._assembler.take(now, force=True)
                self._hand_over(records)
            except Exception:
                more = False
                logger.exception("write-back assembler error (continuing)")
            for request in flushes:
                self._buffer.request_flush(request)
            with self._cond:
                self._flushes_queued -= len(flushes)
                self._cond.notify_all()  # on_end calls waiting under backpressure
            if stopping and not more:
                return
            backlog, checked = len(self.inbox), time.monotonic()

    def _hand_over(self, records: list[TurnRecord]) -> None:
        """Journal first (the crash bound), then memory; what does not fit is spooled."""
        if not records:
            return
        self._journal.write(records)
        overflow = self._buffer.admit(records)
        if overflow:
            self._spill(overflow)

    def _burst(self, rate: float, queued: int, since: float | None, stopping: bool) -> bool:
        """Whether to leave the inbox alone for one more poll."""
        if stopping or rate < _BURST_RATE or queued >= HARD_LIMIT // 2:
            return False
        with self._cond:
            if self._flushes_queued:
                return False  # someone waits for these spans
        return since is None or time.monotonic() - since < self._defer

    def _drain(self, now: float, *, polite: bool) -> tuple[bool, list[FlushRequest]]:
        """Reads queued spans: up to a flush request, or ``_DRAIN_LIMIT`` of them so owners
        keep being finalized under sustained load. Returns (more queued, flush requests)."""
        inbox, add = self.inbox, self._assembler.add
        count = 0
        flushes: list[FlushRequest] = []
        yielded = now
        while count < _DRAIN_LIMIT:
            try:
                item = inbox.popleft()
            except IndexError:
                break
            if isinstance(item, FlushRequest):
                flushes.append(item)
                break
            count += 1
            try:
                add(item, now)
            except Exception:
                logger.exception("write-back: unreadable span skipped")
                self._counters.reject("span_unreadable")
            if polite and count % 32 == 0:
                now = time.monotonic()
                if len(inbox) >= _CATCH_UP:
                    polite = False  # falling behind: keep the GIL for the switch interval
                elif now - yielded >= _YIELD_EVERY:
                    # Let application threads waiting for the GIL run now rather than at
                    # the end of the switch interval: span-ending latency stays flat.
                    time.sleep(0)
                    yielded = now
        self._counters.add("spans_seen", count)
        return bool(inbox), flushes
