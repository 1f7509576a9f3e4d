"""``WritebackSpanProcessor``: LLM usage from spans into Chatter's messages and conversations.

The shape of the OTel SDK's own ``BatchProcessor``: a thin :class:`SpanProcessor` facade in
front of two background threads, each with one job.

``on_end`` (the application's thread)
    appends the finished span to the assembler's inbox: no filtering, no attribute reads, no
    lock, no I/O. Unsampled (RECORD_ONLY) spans are handled like sampled ones: the write-back
    must see 100% of the calls. The inbox has no fixed size; only when a producer outruns
    the assembler for seconds (over 131,072 spans queued) does ``on_end`` wait, at most 2 s
    per call, counted as ``throttled`` (see :mod:`.pacing`).

assembler thread (:mod:`.pacing`)
    turns owner spans into turn records, appends them to the write-ahead journal
    (:mod:`.journal`) and hands them to the writer through the record buffer
    (:mod:`.buffer`, at most ``max_queue`` records; the rest is spooled).

writer thread (:mod:`.writer`)
    writes records in batches, bisects refused batches down to the record, backs off while
    the database is unreachable, retries records waiting for their message row, replays
    spool files (its own and dead processes').

``force_flush`` hands a :class:`~.buffer.FlushRequest` to the assembler behind every span
ended so far; the writer completes it after a round that tried everything before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from sqlalchemy.engine import URL

from chatter_otel import dburl
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.buffer import FlushRequest, RecordBuffer
from chatter_otel.writeback.journal import Journal
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.pacing import HARD_LIMIT, AssemblyWorker
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool import Spool, default_spool_dir, fallback_spool_dir
from chatter_otel.writeback.stats import Counters, Gauges, WritebackStats, observe_gauges
from chatter_otel.writeback.store import Store
from chatter_otel.writeback.writer import Timing, Writer

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")


class WritebackSpanProcessor(SpanProcessor):
    """Writes tokens, cost, model, provider and timing of LLM calls into Chatter's tables.

    Args:
        url: the database, as Chatter configures it (``postgresql+asyncpg://`` is accepted
            and used through psycopg; ``sqlite:///path``).
        mapping: table and column names (Chatter's by default).
        pricing: prices calls that carry usage but no ``gen_ai.usage.cost``; default
            :class:`chatter_otel.pricing.Pricing`.
        flush_interval: longest time (s) from a turn's end until a write of its record is
            attempted (sooner once ``batch_size`` records are ready); also the pace at which
            records wait for their message row, and the bound on what a hard kill loses.
        message_ttl: how long (s, from the owner span's end) a record waits for its message
            row before it is logged and counted as orphaned.
        max_queue: records kept in memory; more go to the spool.
        spool_path: directory of spool and journal files (default: per user and database
            under ``$XDG_STATE_HOME/chatter-otel/writeback``).
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
        dburl.sync_url(url)  # a bad URL fails here, at configuration time
        self._url = url
        self._mapping = mapping or WritebackMapping()
        if pricing is None:
            from chatter_otel.pricing import Pricing

            pricing = Pricing()
        self._pricing = pricing
        self._flush_interval = float(flush_interval)
        self._max_queue = int(max_queue)
        self._batch_size = int(batch_size)
        self._grace = float(late_span_grace)
        self._trace_ttl = float(trace_ttl)
        self._max_traces = int(max_traces)
        self._connect_timeout = float(connect_timeout)
        self._limits = (
            self._mapping.model_max_length,
            self._mapping.provider_max_length,
            self._mapping.finish_reason_max_length,
        )
        self._timing = Timing(
            flush_interval=self._flush_interval,
            message_ttl_ns=int(message_ttl * 1e9),
            backoff=(float(backoff[0]), float(backoff[1])),
            max_lengths=self._limits,
        )
        self._spool_dir = Path(spool_path) if spool_path is not None else default_spool_dir(url)
        # A configured directory is used or fails loudly; only the default falls back.
        self._spool_fallback = None if spool_path is not None else fallback_spool_dir(url)
        self._meter_provider = meter_provider
        self._last_flush_failure: str | None = None
        self._start()
        observe_gauges(meter_provider, self._gauges)  # once: a forked child keeps it
        self_ref = weakref.ref(self)

        def _after_fork() -> None:
            processor = self_ref()
            if processor is not None and not processor._shutdown:
                processor._restart_after_fork()

        os.register_at_fork(after_in_child=_after_fork)

    # --- construction and fork -------------------------------------------------------------

    def _start(self) -> None:
        self._shutdown = False
        self._counters = Counters(self._meter_provider)
        self._buffer = RecordBuffer(self._max_queue, self._batch_size)
        # The store first: every spool file (the journal's too) is bound to its database,
        # or the next process would refuse to replay it.
        self._store = Store(self._url, self._mapping, connect_timeout=self._connect_timeout)
        self._spool = self._new_spool(seal_after=self._flush_interval)
        self._journal = Journal(self._new_spool(seal_after=float("inf")))
        assembler = Assembler(
            pricing=self._pricing,
            counters=self._counters,
            limits=self._limits,
            grace=self._grace,
            trace_ttl=self._trace_ttl,
            # Finished turns are matched this long by children that end after them.
            message_ttl=self._timing.message_ttl_ns / 1e9,
            max_traces=self._max_traces,
            max_spans_per_trace=10_000,
        )
        self._worker = AssemblyWorker(
            assembler=assembler,
            buffer=self._buffer,
            journal=self._journal,
            counters=self._counters,
            spill=self._spill,
            flush_interval=self._flush_interval,
            trace_ttl=self._trace_ttl,
        )
        self._writer = Writer(
            store=self._store,
            buffer=self._buffer,
            spool=self._spool,
            journal=self._journal,
            counters=self._counters,
            spill=self._spill,
            timing=self._timing,
        )
        self._worker.thread.start()
        self._writer.thread.start()

    def _new_spool(self, *, seal_after: float) -> Spool:
        """A spool in the spool directory bound to this database (raises ConfigError when
        the directory is unusable or not private)."""
        store = self._store
        return Spool(
            self._spool_dir,
            seal_after=seal_after,
            fallback=self._spool_fallback,
            url=self._url,
            database=lambda: store.identity,
            on_reject=self._counters.reject,
        )

    def _restart_after_fork(self) -> None:
        # The parent's threads, connections, spool and journal files stay the parent's: new
        # objects replace them, and nothing here takes a lock the parent's threads may have
        # held at fork() (the old spool and journal are dropped without being closed, so
        # their files are neither unlocked nor deleted).
        self._store.engine.dispose(close=False)
        self._start()

    # --- SpanProcessor ---------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do: everything is read from the finished span."""

    def on_end(self, span: ReadableSpan) -> None:
        # Read without a lock, as the SDK's BatchProcessor does: a span ending while
        # shutdown begins is either flushed with the rest or ignored, never half-handled.
        if self._shutdown:
            return
        try:
            inbox = self._worker.inbox
            inbox.append(span)  # all an ordinary call does on the application's thread
            if len(inbox) > HARD_LIMIT:
                self._worker.backpressure()
        except Exception:  # never into the application
            pass

    def force_flush(self, timeout_millis: int | None = 30000) -> bool:
        """Writes everything ended so far; False (and a log line) when something remains.

        Records whose message row is not there yet are tried once more and, if still
        missing, remain waiting (their time-to-live continues): they make the result False,
        as does a database that fails during the flush (at once, without waiting for the
        deadline: the records stay queued and the writer keeps retrying).
        """
        timeout = (30000 if timeout_millis is None else timeout_millis) / 1000.0
        try:
            return self._flush(timeout)
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
        return self._counters.snapshot(self._gauge_values())

    @property
    def spool_dir(self) -> Path:
        return self._spool.directory

    @property
    def store(self) -> Store:
        """The database side (tests use its ``fault`` hook)."""
        return self._store

    def waiting_records(self) -> list[TurnRecord]:
        """The records waiting for their message row (what a failed flush waits for)."""
        return self._buffer.waiting_records()

    def _gauge_values(self) -> Gauges:
        in_memory, pending = self._buffer.sizes()
        return Gauges(
            queue_size=len(self._worker.inbox) + in_memory,
            pending=pending,
            spool_files=self._spool.own_files,
            oldest_age=self._buffer.oldest_age(),
        )

    def _gauges(self) -> Gauges | None:
        """For the observable gauges: nothing once shut down."""
        return None if self._shutdown else self._gauge_values()

    # --- flush and shutdown ----------------------------------------------------------------

    def _flush(self, timeout: float) -> bool:
        if not self._worker.thread.is_alive() or not self._writer.thread.is_alive():
            # After shutdown nothing runs any more: say whether anything was left behind.
            in_memory, _ = self._buffer.sizes()
            return not (self._worker.inbox or in_memory)
        request = FlushRequest()
        self._worker.submit_flush(request)
        if not request.wait(timeout):
            return self._incomplete(f"timed out after {timeout:g} s")
        if request.failure is not None:
            return self._incomplete(request.failure)
        self._last_flush_failure = None
        return True

    @property
    def last_flush_failure(self) -> str | None:
        """Why the last ``force_flush`` returned False (e.g. "database unavailable", "1
        message row(s) not there yet (01J...)", "timed out"); None after a complete one."""
        return self._last_flush_failure

    def _incomplete(self, why: str) -> bool:
        self._last_flush_failure = why
        in_memory, waiting = self._buffer.sizes()
        logger.warning(
            "write-back flush incomplete (%s): %d span(s) queued, %d record(s) to write, "
            "%d waiting for their message row, %d spool file(s)%s",
            why,
            len(self._worker.inbox),
            in_memory - waiting,
            waiting,
            self._spool.own_files,
            ", one more being replayed" if self._writer.replaying else "",
        )
        return False

    def _spill(self, records: list[TurnRecord]) -> int:
        """Moves records out of memory into the spool; returns how many were written.
        Records the spool refuses are counted lost (they stay in the journal, so a later
        start may still replay them)."""
        if not records:
            return 0
        try:
            written = self._spool.append(records)
        except OSError as exc:
            self._counters.add("lost", len(records))
            logger.error(
                "write-back spool %s unusable (%s): %d record(s) lost",
                self.spool_dir,
                exc,
                len(records),
            )
            return 0
        self._counters.add("spooled", written)
        self._journal.settle(records)
        return written

    def _close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._shutdown = True  # on_end ignores new spans from here on
        self._flush(timeout)
        self._worker.stop()
        self._worker.thread.join(max(0.0, deadline - time.monotonic()))
        self._buffer.stop()
        self._writer.thread.join(max(0.1, deadline - time.monotonic()))
        if not self._writer.thread.is_alive():
            self._writer.release_claim()
        # Stuck in the database or not: whatever is in memory is spooled (the batch in
        # flight too: a duplicate is harmless, every write is idempotent).
        with self._buffer.cond:
            remaining = self._buffer.drain()
        if self._worker.inbox:
            logger.error(
                "write-back shutdown: %d span(s) were never read (assembler stuck)",
                len(self._worker.inbox),
            )
        written = self._spill(remaining)
        if written:
            logger.warning(
                "write-back shutdown: %d record(s) not written to the database, spooled "
                "to %s for the next start",
                written,
                self.spool_dir,
            )
        self._journal.close(settled_all=self._journal.unsettled == 0)
        self._spool.close()
        with contextlib.suppress(Exception):
            self._store.dispose()
        lost = self._counters.snapshot().lost
        if lost:
            logger.error("write-back: %d record(s) were lost (see errors above)", lost)
