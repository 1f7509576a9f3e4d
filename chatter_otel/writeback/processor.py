"""``WritebackSpanProcessor``: LLM usage from spans into Chatter's messages and conversations.

Three stages, so the application thread never waits on anything:

``on_end`` (application thread)
    appends the finished span to a deque. Nothing else: no filtering, no attribute reads, no
    lock, no I/O. Unsampled (RECORD_ONLY) spans are handled exactly like sampled ones: the
    write-back must see 100% of the calls.

assembler thread
    every quarter of the flush interval (25 to 250 ms) reads the queued spans (see
    :mod:`.assembler`), turns each owner span into
    one :class:`~.records.TurnRecord` and hands records to the writer. It never touches the
    database, so spans keep being consumed while the database is slow or down; records
    beyond ``max_queue`` in memory go to the spool instead. While the application ends spans
    in a burst (over ~80,000/s) it stays off the GIL for up to half a second or 65,536
    queued spans, and it yields the GIL every 2 ms while reading: ending spans is the
    request's work, assembling them is not urgent.

writer thread
    writes records in batches (one transaction per batch, see :mod:`.store`) when
    ``batch_size`` records are ready or the oldest one's span ended ``flush_interval``
    seconds ago;
    retries with capped exponential backoff while the database is unreachable; keeps
    records whose message row is not committed yet and retries them until ``message_ttl``
    has passed (then they are logged and counted as orphaned); replays spool files, its own
    and those left by processes that died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from sqlalchemy.engine import URL

from chatter_otel import dburl
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool import Claim, Spool, default_spool_dir, fallback_spool_dir
from chatter_otel.writeback.stats import Counters, WritebackStats
from chatter_otel.writeback.store import (
    STATUS_REJECTED,
    PermanentError,
    Store,
    TransientError,
)

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")

_POLL_SHARE = 0.25
_POLL_MIN, _POLL_MAX = 0.025, 0.25
"""Seconds between assembler passes: a quarter of the flush interval, within these bounds.
Records are not written before the flush interval anyway, and a pass costs the application
more than the spans it reads: it takes the GIL from the request thread and runs on cold
caches. Ten times fewer passes halved the write-back's added time per plain chat turn
(139 to 68 us, ``benchmarks/turn_overhead.py``)."""
_BURST_RATE = 80_000
"""Spans per second ended by the application that make a burst."""
_BURST_DEFER = 0.5
"""During a burst the assembler stays off the GIL up to this long (and while the backlog is
below half ``_HARD_LIMIT``): ending spans is the request's work, assembling them is not."""
_CATCH_UP = 4096
"""Backlog above which the assembler stops yielding the GIL early: it takes its full share,
so a sustained producer cannot build up a backlog (and memory) beyond about this."""
_HARD_LIMIT = 131_072
"""Backlog above which ``on_end`` waits for the assembler (backpressure instead of unbounded
memory or dropped spans); only a producer outrunning it for seconds ever gets there."""
_BACKPRESSURE_WAIT = 2.0
_OVERFLOW_BATCH = 2048
_OVERFLOW_DELAY = 0.2
"""Records beyond ``max_queue`` are spooled in batches of this size or age (s)."""
_OVERFLOW_STUCK = 8 * _OVERFLOW_BATCH
_OVERFLOW_STUCK_S = 1.0
"""Overflow older than this is spooled by the assembler: ``max_queue`` stays a bound even
while the writer hangs in a statement."""
"""Overflow the assembler spools itself, the writer being busy elsewhere."""
_EXPIRE_EVERY = 1.0
_DRAIN_LIMIT = 8192
"""Spans read per assembler pass before finalizing owners again."""
_YIELD_EVERY = 0.002
"""Longest stretch (s) the assembler keeps the GIL while reading a burst of spans."""


class _FlushMarker:
    """Queued by force_flush behind the spans it must wait for."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


_suppress: Callable[[], contextlib.AbstractContextManager[None]] | None
try:  # imported here, never in a thread: an import lock held at fork() would hang the child
    from opentelemetry.instrumentation.utils import suppress_instrumentation as _suppress
except ImportError:  # pragma: no cover - a dependency of every instrumentation package
    _suppress = None


def _suppressed() -> contextlib.AbstractContextManager[None]:
    """The writer's own SQL must not produce spans (the SQLAlchemy instrumentation)."""
    return _suppress() if _suppress is not None else contextlib.nullcontext()


class WritebackSpanProcessor(SpanProcessor):
    """Writes tokens, cost, model, provider and timing of LLM calls into Chatter's tables.

    Args:
        url: the database, as Chatter configures it (``postgresql+asyncpg://`` is accepted
            and used through psycopg; ``sqlite:///path``).
        mapping: table and column names (Chatter's by default).
        pricing: prices calls that carry usage but no ``gen_ai.usage.cost``; default
            :class:`chatter_otel.pricing.Pricing`.
        flush_interval: longest time (s) from a turn's end until a write of its record is
            attempted (sooner once ``batch_size`` records are ready); also
            the pace at which records wait for their message row.
        message_ttl: how long (s, from the owner span's end) a record waits for its message
            row before it is logged and counted as orphaned.
        max_queue: records kept in memory; more go to the spool file.
        spool_path: directory of spool files (default: per user and database under
            ``$XDG_STATE_HOME/chatter-otel/writeback``).
        meter_provider: for the processor's own metrics (default: the global one).
        batch_size: records per transaction.
        late_span_grace: seconds an owner waits after ending for children that end late.
        trace_ttl: seconds an incomplete trace is kept without activity.
        max_traces: traces tracked at once (the least recently active is dropped).
        connect_timeout: seconds to wait for a database connection.
        backoff: (first, longest) pause in seconds between attempts while the database fails.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        mapping: WritebackMapping | None = None,
        pricing: PricingLike | None = None,
        flush_interval: float = 1.0,
        message_ttl: float = 300.0,
        max_queue: int = 100_000,
        spool_path: str | os.PathLike[str] | None = None,
        meter_provider: MeterProvider | None = None,
        batch_size: int = 500,
        late_span_grace: float = 0.1,
        trace_ttl: float = 300.0,
        max_traces: int = 50_000,
        connect_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0, got {flush_interval!r}")
        if not message_ttl >= 0:
            raise ValueError(f"message_ttl must be >= 0, got {message_ttl!r}")
        if max_queue < 1 or batch_size < 1 or max_traces < 1:
            raise ValueError("max_queue, batch_size and max_traces must be >= 1")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(
                f"backoff must be (first, longest) with 0 < first <= longest, got {backoff!r}"
            )
        self._url = url
        self._mapping = mapping or WritebackMapping()
        if pricing is None:
            from chatter_otel.pricing import Pricing

            pricing = Pricing()
        self._pricing = pricing
        self._flush_interval = float(flush_interval)
        self._poll = min(_POLL_MAX, max(_POLL_MIN, _POLL_SHARE * self._flush_interval))
        self._ttl_ns = int(message_ttl * 1e9)
        self._max_queue = int(max_queue)
        self._batch_size = int(batch_size)
        self._grace = float(late_span_grace)
        self._trace_ttl = float(trace_ttl)
        self._max_traces = int(max_traces)
        self._connect_timeout = float(connect_timeout)
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._spool_dir = Path(spool_path) if spool_path is not None else default_spool_dir(url)
        # A configured directory is used or fails loudly; only the default falls back.
        self._spool_fallback = None if spool_path is not None else fallback_spool_dir(url)
        self._limits = (
            self._mapping.model_max_length,
            self._mapping.provider_max_length,
            self._mapping.finish_reason_max_length,
        )
        dburl.sync_url(url)  # a bad URL fails here, at configuration time
        self._meter_provider = meter_provider
        self._counters = Counters(meter_provider)
        self._counters.bind_gauges(self._gauges)
        self._start()
        self_ref = weakref.ref(self)

        def _after_fork() -> None:
            processor = self_ref()
            if processor is not None and not processor._shutdown:
                processor._restart_after_fork()

        os.register_at_fork(after_in_child=_after_fork)

    # --- construction and fork -------------------------------------------------------------

    def _start(self) -> None:
        self._queue: deque[ReadableSpan | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._shutdown = False
        self._stop_assembler = False
        self._stop_writer = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: deque[TurnRecord] = deque()
        self._waiting: deque[tuple[float, TurnRecord]] = deque()
        self._inflight: list[TurnRecord] = []
        self._overflow: list[TurnRecord] = []  # records beyond max_queue, to be spooled
        self._overflow_since = 0.0
        self._flush_lock = threading.Lock()
        self._flush_seq = 0
        self._assembled_seq = 0
        self._flush_target = 0
        self._written_seq = 0
        self._failed_seq = 0
        self._db_failing = False
        self._store = Store(self._url, self._mapping, connect_timeout=self._connect_timeout)
        store = self._store
        self._spool = Spool(
            self._spool_dir,
            seal_after=self._flush_interval,
            fallback=self._spool_fallback,
            url=self._url,
            database=lambda: store.identity,
            on_reject=self._counters.reject,
        )
        self._claim: Claim | None = None
        self._assembler = Assembler(
            pricing=self._pricing,
            counters=self._counters,
            limits=self._limits,
            grace=self._grace,
            trace_ttl=self._trace_ttl,
            # Finished traces are kept this long for children that end after their owner.
            done_ttl=max(2.0, 10 * self._grace),
            max_traces=self._max_traces,
            max_spans_per_trace=10_000,
        )
        self._assembler_thread = threading.Thread(
            target=self._assemble_loop, name="chatter-otel-writeback-assembler", daemon=True
        )
        self._writer_thread = threading.Thread(
            target=self._write_loop, name="chatter-otel-writeback-writer", daemon=True
        )
        self._assembler_thread.start()
        self._writer_thread.start()

    def _restart_after_fork(self) -> None:
        # The parent's threads, connections and spool files stay the parent's.
        self._store.engine.dispose(close=False)
        self._spool.forget_after_fork()
        self._counters = Counters(self._meter_provider)
        self._counters.bind_gauges(self._gauges)
        self._start()

    # --- SpanProcessor ---------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do: everything is read from the finished span."""

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown:
            return
        try:
            queue = self._queue
            queue.append(span)  # all an ordinary call does on the application's thread
            if len(queue) > _HARD_LIMIT:
                self._backpressure()
        except Exception:  # never into the application
            pass

    def _backpressure(self) -> None:
        """Waits (bounded) until the assembler has worked the backlog down to half."""
        self._counters.add("throttled")
        deadline = time.monotonic() + _BACKPRESSURE_WAIT
        self._wake.set()
        while len(self._queue) > _HARD_LIMIT // 2 and self._assembler_thread.is_alive():
            if time.monotonic() >= deadline:
                return  # never hang the application: the span is queued regardless
            time.sleep(0.001)

    def force_flush(self, timeout_millis: int | None = 30000) -> bool:
        """Writes everything ended so far; False (and a log line) when something remains.

        Records whose message row is not there yet are tried once more and, if still
        missing, remain waiting (their time-to-live continues): they make the result False.
        """
        try:
            return self._flush((30000 if timeout_millis is None else timeout_millis) / 1000.0)
        except Exception:
            logger.exception("write-back flush failed")
            return False

    def shutdown(self, timeout_millis: int = 30000) -> None:
        """Flushes, stops the threads and spools whatever could not be written."""
        if self._shutdown:
            return
        try:
            self._close(timeout_millis / 1000.0)
        except Exception:
            logger.exception("write-back shutdown failed")

    # --- introspection ---------------------------------------------------------------------

    @property
    def stats(self) -> WritebackStats:
        return self._counters.snapshot()

    @property
    def spool_dir(self) -> Path:
        return self._spool.directory

    @property
    def store(self) -> Store:
        """The database side (tests use its ``fault`` hook)."""
        return self._store

    def _gauges(self) -> tuple[int, int, int]:
        return (
            len(self._queue) + len(self._ready) + len(self._waiting) + len(self._overflow),
            len(self._waiting),
            self._spool.own_files,
        )

    # --- flush and shutdown ----------------------------------------------------------------

    def _flush(self, timeout: float) -> bool:
        if self._stop_writer:  # after shutdown: nothing runs any more
            return not (self._queue or self._ready or self._waiting)
        deadline = time.monotonic() + max(0.0, timeout)
        if not self._flush_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            stage = self._flush_locked(deadline)
        finally:
            self._flush_lock.release()
        return True if stage is None else self._report_incomplete(stage)

    def _flush_locked(self, deadline: float) -> str | None:
        """None when everything was written, else the stage that did not complete."""
        with self._cond:
            self._flush_seq += 1
            seq = self._flush_seq
        # Behind every span that ended before this call: when the assembler reaches it, all
        # of them have been read, however many keep arriving after it.
        self._queue.append(_FlushMarker(seq))
        self._wake.set()
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._assembled_seq >= seq or self._stop_assembler,
                timeout=max(0.0, deadline - time.monotonic()),
            ):
                return "assembling spans"
            self._flush_target = seq
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: (
                    self._written_seq >= seq
                    # The database failed during this flush: say so now rather than hold
                    # the caller (and the processors after this one) until the deadline.
                    or self._failed_seq >= seq
                    or self._stop_writer
                    or (self._shutdown and self._db_failing)
                ),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if self._written_seq < seq:
                return "database unavailable" if self._db_failing else "writing records"
            left = len(self._ready) + len(self._waiting)
        if left or self._overflow or self._spool.own_files or self._queue:
            return "records remain"
        return None

    def _report_incomplete(self, stage: str) -> bool:
        with self._lock:
            ready, waiting = len(self._ready), len(self._waiting)
        logger.warning(
            "write-back flush incomplete (%s): %d span(s) queued, %d record(s) to write, "
            "%d waiting for their message row, %d spool file(s)",
            stage,
            len(self._queue),
            ready,
            waiting,
            self._spool.own_files,
        )
        return False

    def _close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._shutdown = True  # on_end ignores new spans from here on
        self._flush(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stop_assembler = True
            self._cond.notify_all()
        self._wake.set()
        self._assembler_thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stop_writer = True
            self._cond.notify_all()
        self._writer_thread.join(max(0.1, deadline - time.monotonic()))
        claim, self._claim = self._claim, None
        if claim is not None and not self._writer_thread.is_alive():
            claim.release()
        with self._cond:
            remaining = list(self._ready) + [record for _, record in self._waiting]
            remaining += self._overflow
            self._overflow = []
            self._ready.clear()
            self._waiting.clear()
            if self._writer_thread.is_alive():
                # Stuck in the database: spool its batch too (a duplicate is harmless).
                remaining.extend(self._inflight)
        if self._queue:
            logger.error(
                "write-back shutdown: %d span(s) were never read (assembler stuck)",
                len(self._queue),
            )
        if remaining:
            written = self._spool_records(remaining, keep_on_failure=False)
            if written:
                logger.warning(
                    "write-back shutdown: %d record(s) not written to the database, spooled "
                    "to %s for the next start",
                    written,
                    self.spool_dir,
                )
        self._spool.close()
        with contextlib.suppress(Exception):
            self._store.dispose()
        stats = self.stats
        if stats.lost:
            logger.error("write-back: %d record(s) were lost (see errors above)", stats.lost)

    # --- assembler thread ------------------------------------------------------------------

    def _assemble_loop(self) -> None:
        last_expire = time.monotonic()
        more = False
        backlog, checked = 0, time.monotonic()
        deferring_since: float | None = None
        while True:
            if not more:
                self._wake.wait(self._poll)
                self._wake.clear()
            stopping = self._stop_assembler
            queued, now = len(self._queue), time.monotonic()
            rate = (queued - backlog) / max(now - checked, 1e-3)
            if self._burst(rate, queued, deferring_since, stopping):
                # The application is ending spans in a burst: let it have the GIL.
                deferring_since = deferring_since or now
                backlog, checked, more = queued, now, False
                continue
            deferring_since = None
            marker: int | None = None
            try:
                more, marker = self._drain(now, polite=queued < _CATCH_UP)
                # A flush (or shutdown) finalizes every owner read so far, grace or not.
                records = self._assembler.take(now, force=marker is not None or stopping)
                if now - last_expire >= _EXPIRE_EVERY:
                    last_expire = now
                    self._assembler.expire(now)
                if stopping and not more:
                    self._assembler.expire(now + 10 * (self._trace_ttl + 3600.0))
                    records += self._assembler.take(now, force=True)
                if records:
                    self._enqueue(records)
                self._spool_stuck_overflow()
            except Exception:
                more = False
                logger.exception("write-back assembler error (continuing)")
            if marker is not None:
                with self._cond:
                    self._assembled_seq = max(self._assembled_seq, marker)
                    self._cond.notify_all()
            if stopping and not more:
                return
            backlog, checked = len(self._queue), time.monotonic()

    def _burst(self, rate: float, queued: int, since: float | None, stopping: bool) -> bool:
        """Whether to leave the queue alone for one more poll."""
        if stopping or rate < _BURST_RATE or queued >= _HARD_LIMIT // 2:
            return False
        if self._flush_seq > self._assembled_seq:
            return False  # someone waits for these spans
        return since is None or time.monotonic() - since < _BURST_DEFER

    def _drain(self, now: float, *, polite: bool) -> tuple[bool, int | None]:
        """Reads queued spans: up to a flush marker, or ``_DRAIN_LIMIT`` of them so owners
        keep being finalized under sustained load. Returns (more queued, marker seen).

        ``polite``: hand the GIL to waiting application threads every ``_YIELD_EVERY``.
        """
        queue, add = self._queue, self._assembler.add
        count = 0
        marker: int | None = None
        yielded = now
        while count < _DRAIN_LIMIT:
            try:
                span = queue.popleft()
            except IndexError:
                break
            if isinstance(span, _FlushMarker):
                marker = span.seq
                break
            count += 1
            try:
                add(span, now)
            except Exception:
                logger.exception("write-back: unreadable span skipped")
                self._counters.reject("span_unreadable")
            if polite and count % 32 == 0:
                now = time.monotonic()
                if len(queue) >= _CATCH_UP:
                    polite = False  # falling behind: keep the GIL for the switch interval
                elif now - yielded >= _YIELD_EVERY:
                    # Let application threads waiting for the GIL run now rather than at
                    # the end of the switch interval: span-ending latency stays flat.
                    time.sleep(0)
                    yielded = now
        self._counters.add("spans_seen", count)
        return bool(queue), marker

    def _enqueue(self, records: list[TurnRecord]) -> None:
        with self._cond:
            room = max(0, self._max_queue - len(self._ready) - len(self._waiting))
            keep, overflow = records[:room], records[room:]
            was_empty = not self._ready
            self._ready.extend(keep)
            if overflow:
                if not self._overflow:
                    self._overflow_since = time.monotonic()
                self._overflow.extend(overflow)
            if (keep and (was_empty or len(self._ready) >= self._batch_size)) or (
                len(self._overflow) >= _OVERFLOW_BATCH
            ):
                self._cond.notify_all()

    def _spool_stuck_overflow(self) -> None:
        """Spools the overflow here when the writer has not for a while (a hung statement).

        Checked on every pass, not only when records arrive: after the last turn, overflow
        left in memory would otherwise wait for the writer and be lost in a crash."""
        with self._cond:
            stuck = len(self._overflow) >= _OVERFLOW_STUCK or (
                bool(self._overflow)
                and time.monotonic() - self._overflow_since >= _OVERFLOW_STUCK_S
            )
        if stuck:
            self._spool_overflow(force=True)

    def _overflow_due(self) -> bool:
        """Caller holds the lock."""
        return bool(self._overflow) and (
            len(self._overflow) >= _OVERFLOW_BATCH
            or time.monotonic() - self._overflow_since >= _OVERFLOW_DELAY
        )

    def _spool_overflow(self, *, force: bool = False) -> None:
        """Spools the records that did not fit in memory: in batches, one fsync each, on the
        writer thread (idle while the database is down), never one fsync per pass."""
        with self._cond:
            if not (self._overflow and (force or self._overflow_due())):
                return
            batch, self._overflow = self._overflow, []
        self._spool_records(batch, keep_on_failure=True)

    def _spool_records(
        self, records: Sequence[TurnRecord], *, keep_on_failure: bool, count: bool = True
    ) -> int:
        try:
            written = self._spool.append(records)
        except OSError as exc:
            if keep_on_failure:
                with self._cond:
                    room = max(0, 2 * self._max_queue - len(self._ready) - len(self._waiting))
                    self._ready.extend(records[:room])
                lost = len(records) - room if len(records) > room else 0
            else:
                lost = len(records)
            if lost:
                self._counters.add("lost", lost)
            logger.error(
                "write-back spool %s unusable (%s): %d record(s) kept in memory, %d lost",
                self.spool_dir,
                exc,
                len(records) - lost,
                lost,
            )
            return 0
        if count:
            self._counters.add("spooled", written)
        return written

    # --- writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        with _suppressed():
            self._write_loop_inner()

    def _flushing(self) -> bool:
        return self._flush_target > self._written_seq

    def _write_loop_inner(self) -> None:
        delay = 0.0
        failing_since: float | None = None
        while True:
            self._spool_overflow(force=self._flushing() or self._stop_writer)
            with self._cond:
                if delay:
                    # Backing off: only shutdown interrupts (a flush waits like everyone);
                    # records that do not fit in memory are spooled meanwhile.
                    until = time.monotonic() + delay
                    while not self._stop_writer and time.monotonic() < until:
                        self._cond.wait_for(
                            lambda: self._stop_writer or self._overflow_due(),
                            timeout=min(_OVERFLOW_DELAY, max(0.0, until - time.monotonic())),
                        )
                        if self._overflow_due():
                            self._cond.release()
                            try:
                                self._spool_overflow()
                            finally:
                                self._cond.acquire()
                else:
                    # Idle until records arrive (or a flush, or the next retry of records
                    # waiting for their message row), then wait for a full batch until the
                    # oldest span ended flush_interval ago: a transaction costs ~3 ms
                    # whatever its size, so small batches would cost CPU on every turn.
                    self._cond.wait_for(
                        lambda: (
                            self._stop_writer
                            or self._flushing()
                            or bool(self._ready)
                            or self._overflow_due()
                        ),
                        timeout=min(self._flush_interval, _OVERFLOW_DELAY)
                        if self._overflow
                        else self._flush_interval,
                    )
                    if self._ready and not self._flushing():
                        self._cond.wait_for(
                            lambda: (
                                self._stop_writer
                                or self._flushing()
                                or len(self._ready) >= self._batch_size
                            ),
                            timeout=self._batch_wait(),
                        )
                if self._stop_writer:
                    return
                target = self._flush_target
                flushing = target > self._written_seq
            try:
                self._round(flushing)
            except TransientError as exc:
                self._counters.add("db_errors")
                now = time.monotonic()
                with self._cond:
                    self._db_failing = True
                    if flushing:
                        self._failed_seq = max(self._failed_seq, target)
                    self._cond.notify_all()  # a flush waiting on us stops waiting
                if failing_since is None:
                    failing_since = now
                    logger.warning(
                        "write-back: database unavailable (%s); retrying with backoff, "
                        "nothing is dropped",
                        exc,
                    )
                else:
                    logger.debug("write-back: database still unavailable: %s", exc)
                delay = min(self._backoff[1], max(self._backoff[0], delay * 2))
                delay *= random.uniform(0.8, 1.0)
                continue
            except Exception:
                logger.exception("write-back writer error (continuing)")
                delay = self._backoff[1]
                continue
            if failing_since is not None:
                logger.warning(
                    "write-back: database reachable again after %.1f s",
                    time.monotonic() - failing_since,
                )
                failing_since = None
            delay = 0.0
            with self._cond:
                self._db_failing = False
                if flushing:
                    self._written_seq = max(self._written_seq, target)
                    self._cond.notify_all()

    def _batch_wait(self) -> float:
        """Seconds until the oldest ready record's span ended ``flush_interval`` ago (the
        interval bounds how long a record waits from its span's end, not from assembly).
        Caller holds the lock."""
        age = (time.time_ns() - self._ready[0].end_ns) / 1e9
        return min(self._flush_interval, max(0.0, self._flush_interval - age))

    def _round(self, flushing: bool) -> None:
        started = time.monotonic()
        if flushing:
            self._spool_overflow(force=True)
        if not self._store.schema_ready:
            self._store.ensure_schema()
        with self._cond:
            # A flush tries every waiting record once, whether or not it is due.
            forced = len(self._waiting) if flushing else 0
        for batch in self._batches(forced):
            self._write_batch(batch)
        self._replay(started, flushing)

    def _batches(self, forced: int) -> Iterator[list[TurnRecord]]:
        """Ready records, then waiting records that are due (and the first ``forced``)."""
        while True:
            now = time.monotonic()
            with self._cond:
                batch: list[TurnRecord] = []
                while self._ready and len(batch) < self._batch_size:
                    batch.append(self._ready.popleft())
                while (
                    self._waiting
                    and len(batch) < self._batch_size
                    and (forced > 0 or self._waiting[0][0] <= now)
                ):
                    batch.append(self._waiting.popleft()[1])
                    forced -= 1
                self._inflight = batch
            if not batch:
                return
            yield batch

    def _write_batch(self, batch: list[TurnRecord]) -> None:
        try:
            self._apply(batch, from_spool=False)
        except TransientError:
            with self._cond:
                self._ready.extendleft(reversed(batch))
            self._counters.add("retried", len(batch))
            raise
        finally:
            with self._cond:
                self._inflight = []

    def _apply(self, batch: list[TurnRecord], *, from_spool: bool) -> None:
        try:
            result = self._store.apply(batch, time.time_ns(), self._ttl_ns)
        except PermanentError as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                self._apply(batch[:middle], from_spool=from_spool)
                self._apply(batch[middle:], from_spool=from_spool)
                return
            record = batch[0]
            self._counters.reject(exc.reason)
            logger.error(
                "write-back: the database refused the record of span %s for message %s (%s); "
                "rejected and kept in the ledger as %s",
                record.span_id,
                record.message_id,
                exc,
                STATUS_REJECTED,
            )
            with contextlib.suppress(TransientError):
                self._store.mark([record], STATUS_REJECTED)
            return
        self._counters.add("applied", len(result.applied))
        for reason, amount in result.rejections.items():  # each already logged by the store
            self._counters.reject(reason, amount)
        self._counters.add("aggregate_drift", result.drifted)
        if result.orphaned:
            self._counters.add("orphaned", len(result.orphaned))
            logger.warning(
                "write-back: %d record(s) orphaned: no message row within %.0f s of the span "
                "(messages %s); kept in the ledger as orphaned",
                len(result.orphaned),
                self._ttl_ns / 1e9,
                ", ".join(sorted({r.message_id for r in result.orphaned})[:5]),
            )
        if result.waiting:
            self._counters.add("retried", len(result.waiting))
            if from_spool:
                # Back into a live spool file before the replayed one is deleted.
                self._spool_records(result.waiting, keep_on_failure=True, count=False)
            else:
                self._hold(result.waiting)

    def _hold(self, records: list[TurnRecord]) -> None:
        """Keeps records whose message row is not there yet (in memory, or spooled)."""
        retry_at = time.monotonic() + self._flush_interval
        with self._cond:
            room = max(0, self._max_queue - len(self._ready) - len(self._waiting))
            self._waiting.extend((retry_at, record) for record in records[:room])
            overflow = records[room:]
        if overflow:
            self._spool_records(overflow, keep_on_failure=True)

    def _replay(self, started: float, flushing: bool) -> None:
        """Spool files back into the database while memory has room."""
        deadline = started + self._flush_interval
        while flushing or time.monotonic() < deadline:
            if self._stop_writer:
                return
            with self._cond:
                used = len(self._ready) + len(self._waiting)
            if used >= max(1, self._max_queue // 2):
                return
            claim = self._claim
            if claim is None:
                claim = self._spool.claim(time.monotonic(), created_before=started, seal=flushing)
                if claim is None:
                    return
                self._claim = claim
            records, offset = claim.read(self._batch_size, self._limits, self._counters.reject)
            if records:
                self._counters.add("replayed", len(records))
                try:
                    self._apply(records, from_spool=True)
                except TransientError:
                    self._counters.add("retried", len(records))
                    claim.release()
                    self._claim = None
                    raise
            claim.advance(offset)
            if claim.exhausted:
                claim.done()
                self._claim = None
