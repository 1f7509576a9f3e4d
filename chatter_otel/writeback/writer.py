"""The writer thread: records from the buffer into the database, in batches.

Each turn of the loop decides under the buffer's lock (:meth:`Writer._decide`) and then
does its I/O with the lock released (:meth:`Writer._round`):

* a batch is written when ``batch_size`` records are ready or the oldest one's span ended
  ``flush_interval`` seconds ago (a transaction costs ~3 ms whatever its size: small
  batches would cost CPU on every turn); one transaction per batch (see :mod:`.store`);
* a batch the database refuses (:class:`~.store.PermanentError`) is bisected down to the
  record, which is rejected with its reason; every other record keeps flowing;
* while the database is unreachable (:class:`~.store.TransientError`) the batch goes back
  to the front and the writer backs off (capped exponential, jittered); a flush or shutdown
  interrupts the pause;
* while the application's tables do not exist yet (its migrations run after start-up) the
  writer waits quietly: one INFO line naming the table, a re-check with a short capped
  backoff, records kept exactly as during an outage (see :mod:`.tables`);
* records whose message row is not committed yet wait and are retried every
  ``flush_interval`` until ``message_ttl`` has passed (then logged and counted as orphaned);
* spool files (its own, and those of processes that died) are replayed while memory has
  room;
* pending flush requests are completed after a round that tried everything before them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatter_otel.writeback.buffer import FlushRequest, RecordBuffer
from chatter_otel.writeback.journal import Journal
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool import Claim, Spool
from chatter_otel.writeback.stats import Counters
from chatter_otel.writeback.store import STATUS_REJECTED, PermanentError, Store, TransientError
from chatter_otel.writeback.tables import TablesMissing, TableWait, missing_table

logger = logging.getLogger("chatter_otel.writeback")


class _LedgerRefused(Exception):
    """The database refuses to create or check the ledger: a configuration error, not an
    outage (retrying soon cannot help) and not a record's fault (bisecting cannot help)."""


_suppress: Callable[[], contextlib.AbstractContextManager[None]] | None
try:  # imported here, never in a thread: an import lock held at fork() would hang the child
    from opentelemetry.instrumentation.utils import suppress_instrumentation as _suppress
except ImportError:  # pragma: no cover - a dependency of every instrumentation package
    _suppress = None


def _suppressed() -> contextlib.AbstractContextManager[None]:
    """The writer's own SQL must not produce spans (the SQLAlchemy instrumentation)."""
    return _suppress() if _suppress is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Timing:
    flush_interval: float
    message_ttl_ns: int
    backoff: tuple[float, float]
    max_lengths: tuple[int, int, int]


Spill = Callable[[list[TurnRecord]], int]
"""Spools records (returns how many were written; failures are counted as lost)."""


class Writer:
    """Owns the :class:`Store` and the spool claims; the only thread that writes SQL."""

    def __init__(
        self,
        *,
        store: Store,
        buffer: RecordBuffer,
        spool: Spool,
        journal: Journal,
        counters: Counters,
        spill: Spill,
        timing: Timing,
    ) -> None:
        self._store = store
        self._buffer = buffer
        self._spool = spool
        self._journal = journal
        self._counters = counters
        self._spill = spill
        self._t = timing
        self._claim: Claim | None = None
        self._pause_until = 0.0
        """While the database fails: no round before this (monotonic), but a flush or stop."""
        self._delay = 0.0
        self._failing_since: float | None = None
        self._tables = TableWait(timing.backoff)
        self._last_round = time.monotonic()
        self.thread = threading.Thread(
            target=self._loop, name="chatter-otel-writeback-writer", daemon=True
        )

    # --- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        with _suppressed():
            while True:
                flushes = self._decide()
                if flushes is None:
                    return
                self._attempt(flushes)

    def _decide(self) -> list[FlushRequest] | None:
        """Waits until there is something to do; the flush requests this round answers, or
        None to stop."""
        buf = self._buffer
        with buf.cond:
            while True:
                if buf.stopping:
                    return None
                if buf.flushes:
                    flushes, buf.flushes = buf.flushes, []
                    return flushes
                now = time.monotonic()
                wake = self._wake_at(now)
                if wake <= now:
                    return []
                buf.cond.wait(wake - now)

    def _wake_at(self, now: float) -> float:
        """When the next round is due (caller holds the lock). A full batch starts one at
        once; otherwise the oldest ready record's span ending ``flush_interval`` ago (the
        interval counts from the turn's end, not from assembly), the first waiting record's
        retry, or ``flush_interval`` after the last round (to look for spool files)."""
        buf, interval = self._buffer, self._t.flush_interval
        if now < self._pause_until:
            return self._pause_until
        if len(buf.ready) >= buf.batch_size:
            return now
        wake = self._last_round + interval
        if buf.ready:
            age = (time.time_ns() - buf.ready[0].end_ns) / 1e9
            wake = min(wake, now + max(0.0, interval - age))
        if buf.waiting:
            wake = min(wake, buf.waiting[0][0])
        return wake

    def _attempt(self, flushes: list[FlushRequest]) -> None:
        flushing = bool(flushes)
        try:
            self._round(flushing)
        except TransientError as exc:
            self._counters.add("db_errors")
            self._backoff(exc)
            for request in flushes:
                # Say so now rather than hold the caller (and the processors after this
                # one) until its deadline; the records stay queued.
                request.complete(f"database unavailable ({exc})")
            return
        except TablesMissing as exc:
            self._counters.add("schema_waits")
            self._delay = self._tables.missing(exc.table, self._delay)
            self._pause(self._delay)
            for request in flushes:
                request.complete(
                    f"waiting for the application's table {exc.table} (records are kept)"
                )
            return
        except _LedgerRefused as exc:
            logger.error(
                "write-back: the database refused to set up the ledger (%s): a configuration "
                "error (the database user's privileges?); trying again in %.0f s",
                exc,
                self._t.backoff[1],
            )
            self._pause(self._t.backoff[1])
            for request in flushes:
                request.complete(f"ledger refused by the database ({exc})")
            return
        except Exception as exc:
            logger.exception("write-back writer error (continuing)")
            self._pause(self._t.backoff[1])
            for request in flushes:
                request.complete(f"writer error ({type(exc).__name__}: {exc})")
            return
        if self._failing_since is not None:
            logger.warning(
                "write-back: database reachable again after %.1f s",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        self._delay = 0.0
        if flushes:
            failure = self._remaining()
            for request in flushes:
                request.complete(failure)

    def _backoff(self, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.warning(
                "write-back: database unavailable (%s); retrying with backoff, records are "
                "kept in the journal and spooled beyond max_queue",
                exc,
            )
        else:
            logger.debug("write-back: database still unavailable: %s", exc)
        first, longest = self._t.backoff
        self._delay = min(longest, max(first, self._delay * 2))
        self._pause(self._delay * random.uniform(0.8, 1.0))

    def _pause(self, seconds: float) -> None:
        with self._buffer.cond:
            self._pause_until = time.monotonic() + seconds

    def _remaining(self) -> str | None:
        """Why a flush that just ran is incomplete (naming what it waits for), or None."""
        with self._buffer.cond:
            ready = len(self._buffer.ready)
            waiting = sorted({record.message_id for _, record in self._buffer.waiting})
        files = self._spool.own_files
        why = []
        if waiting:
            shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
            why.append(f"{len(waiting)} message row(s) not there yet ({shown})")
        if ready:
            why.append(f"{ready} record(s) still to write")
        if files:
            why.append(f"{files} spool file(s) still to replay")
        return "; ".join(why) or None

    # --- one round -------------------------------------------------------------------------

    def _round(self, flushing: bool) -> None:
        started = time.monotonic()
        self._last_round = started
        if not self._store.schema_ready:
            try:
                self._store.ensure_schema()
            except PermanentError as exc:  # refused, not unreachable: bisecting cannot help
                table = missing_table(exc)
                if table is not None:
                    raise TablesMissing(table) from exc
                raise _LedgerRefused(str(exc)) from exc
            with self._buffer.cond:
                kept = len(self._buffer.ready) + len(self._buffer.waiting)
            self._tables.found(kept)
        with self._buffer.cond:
            # A flush tries every waiting record once, whether or not it is due.
            forced = len(self._buffer.waiting) if flushing else 0
        while True:
            with self._buffer.cond:
                batch, forced = self._buffer.next_batch(time.monotonic(), forced)
            if not batch:
                break
            self._write_batch(batch)
        self._replay(started, flushing)

    def _write_batch(self, batch: list[TurnRecord]) -> None:
        try:
            self._apply(batch, from_spool=False)
        except TransientError:
            with self._buffer.cond:
                self._buffer.retry_first(batch)
            self._counters.add("retried", len(batch))
            raise
        finally:
            with self._buffer.cond:
                self._buffer.inflight = []

    def _apply(self, batch: list[TurnRecord], *, from_spool: bool) -> None:
        try:
            result = self._store.apply(batch, time.time_ns(), self._t.message_ttl_ns)
        except PermanentError as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                self._apply(batch[:middle], from_spool=from_spool)
                self._apply(batch[middle:], from_spool=from_spool)
                return
            self._reject(batch[0], exc)
            if not from_spool:
                self._journal.settle(batch)
            return
        self._counters.add("applied", len(result.applied))
        for reason, amount in result.rejections.items():  # each already logged by the store
            self._counters.reject(reason, amount)
        self._counters.drift(result.drifted)
        if result.orphaned:
            self._counters.add("orphaned", len(result.orphaned))
            logger.warning(
                "write-back: %d record(s) orphaned: no message row within %.0f s of the span "
                "(messages %s); kept in the ledger as orphaned",
                len(result.orphaned),
                self._t.message_ttl_ns / 1e9,
                ", ".join(sorted({r.message_id for r in result.orphaned})[:5]),
            )
        if not from_spool:
            self._journal.settle([*result.applied, *result.orphaned, *result.rejected])
        if result.waiting:
            self._counters.add("retried", len(result.waiting))
            if from_spool:
                # Back into a live spool file before the replayed one is deleted.
                self._spill(result.waiting)
            else:
                self._hold(result.waiting)

    def _reject(self, record: TurnRecord, exc: PermanentError) -> None:
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

    def _hold(self, records: list[TurnRecord]) -> None:
        """Keeps records whose message row is not there yet: in memory (appended again to
        the journal, so the older journal file can go) or, without room, spooled."""
        self._journal.write(records)
        with self._buffer.cond:
            overflow = self._buffer.hold(records, time.monotonic() + self._t.flush_interval)
        if overflow:
            self._spill(overflow)

    def _replay(self, started: float, flushing: bool) -> None:
        """Spool files back into the database while memory has room (up to one flush
        interval per round, everything during a flush)."""
        deadline = started + self._t.flush_interval
        while flushing or time.monotonic() < deadline:
            with self._buffer.cond:
                if self._buffer.stopping:
                    return
                used = len(self._buffer.ready) + len(self._buffer.waiting)
            if used >= max(1, self._buffer.max_queue // 2):
                return
            claim = self._claim
            if claim is None:
                claim = self._spool.claim(time.monotonic(), created_before=started, seal=flushing)
                if claim is None:
                    return
                self._claim = claim
            records, offset = claim.read(
                self._buffer.batch_size, self._t.max_lengths, self._counters.reject
            )
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

    @property
    def replaying(self) -> bool:
        """Whether a spool file is being replayed: a claimed file is no longer counted among
        the spool's own files, yet a flush still waits for it. Read without a lock: a
        snapshot for log lines only."""
        return self._claim is not None

    def release_claim(self) -> None:
        """At shutdown, once this thread is gone: the file being replayed stays on disk."""
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.release()
