"""The write-back's own counters: a snapshot for tests and ``check``, and OTel metrics.

Counters are updated from the processor's two threads under one lock (a few increments per
batch, never per application span).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from chatter_otel import conventions as c
from chatter_otel.version import __version__


@dataclass(frozen=True)
class WritebackStats:
    """A consistent snapshot of the processor's counters."""

    spans_seen: int = 0
    """Spans handed to ``on_end`` (sampled or not)."""
    records: int = 0
    """Turn records assembled from owner spans (and late LLM spans)."""
    applied: int = 0
    """Records written to the database (a replay of an applied record counts again)."""
    retried: int = 0
    """Record write attempts that will be tried again (database error or message not yet there)."""
    orphaned: int = 0
    """Records whose message never appeared within the time-to-live (kept in the ledger)."""
    rejected: Mapping[str, int] = field(default_factory=dict)
    """Values or records refused, by reason."""
    spooled: int = 0
    """Records written to the local spool file."""
    replayed: int = 0
    """Records read back from spool files."""
    unowned: int = 0
    """LLM calls no owner span claimed before their trace expired (not written anywhere)."""
    rollups_ignored: int = 0
    """Spans whose usage duplicated (nested or as a sibling) or summed other spans' usage."""
    late: int = 0
    """LLM spans that ended after their owner was written and were added afterwards."""
    late_conflicts: int = 0
    """Late LLM spans below an already counted usage span (ignored: it was counted through it)."""
    duplicates: int = 0
    """Spans delivered twice (same trace and span id)."""
    traces_evicted: int = 0
    """Trace states dropped for exceeding the trace limit while still incomplete."""
    conversation_mismatches: int = 0
    """Owner spans whose conversation id differs from the message row's (the row wins)."""
    db_errors: int = 0
    """Failed database transactions (each is retried)."""
    aggregate_drift: int = 0
    """Conversations whose stored totals differed from their messages, repaired on write."""
    lost: int = 0
    """Records that could be neither written nor spooled (logged as errors)."""
    throttled: int = 0
    """``on_end`` calls that waited because the assembler was far behind (backpressure)."""
    queue_size: int = 0
    """Spans waiting for the assembler plus records waiting in memory for the writer."""
    pending_messages: int = 0
    """Records in memory waiting for their message row."""
    spool_files: int = 0
    """Spool files of this processor not yet replayed."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


_FIELDS = (
    "spans_seen",
    "records",
    "applied",
    "retried",
    "orphaned",
    "spooled",
    "replayed",
    "unowned",
    "rollups_ignored",
    "late",
    "late_conflicts",
    "duplicates",
    "traces_evicted",
    "conversation_mismatches",
    "db_errors",
    "aggregate_drift",
    "lost",
    "throttled",
)


class Counters:
    """Mutable counters behind :class:`WritebackStats`, mirrored into OTel instruments."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(_FIELDS, 0)
        self._rejected: dict[str, int] = {}
        self._gauges: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("chatter_otel.writeback", __version__)
        self._applied = meter.create_counter(
            c.METRIC_WRITEBACK_APPLIED, unit="{record}", description="Turn records written"
        )
        self._retried = meter.create_counter(
            c.METRIC_WRITEBACK_RETRIED,
            unit="{record}",
            description="Record writes to be tried again",
        )
        self._orphaned = meter.create_counter(
            c.METRIC_WRITEBACK_ORPHANED,
            unit="{record}",
            description="Records whose message row never appeared",
        )
        self._rejected_counter = meter.create_counter(
            c.METRIC_WRITEBACK_REJECTED,
            unit="{value}",
            description="Span values or records refused as invalid",
        )
        self._spooled = meter.create_counter(
            c.METRIC_WRITEBACK_SPOOLED,
            unit="{record}",
            description="Records written to the local spool",
        )
        self._drift = meter.create_counter(
            c.METRIC_WRITEBACK_AGGREGATE_DRIFT,
            unit="{conversation}",
            description="Conversations whose stored totals differed from their messages",
        )
        meter.create_observable_gauge(
            c.METRIC_WRITEBACK_QUEUE_SIZE,
            callbacks=[self._observe_queue],
            unit="{item}",
            description="Spans and records waiting in memory",
        )

    def bind_gauges(self, gauges: Callable[[], tuple[int, int, int]]) -> None:
        """``gauges()`` returns (queue size, pending messages, spool files)."""
        self._gauges = gauges

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._gauges()[0])]

    def add(self, name: str, amount: int = 1) -> None:
        if amount <= 0:
            return
        with self._lock:
            self._values[name] += amount
        if name == "applied":
            self._applied.add(amount)
        elif name == "retried":
            self._retried.add(amount)
        elif name == "orphaned":
            self._orphaned.add(amount)
        elif name == "spooled":
            self._spooled.add(amount)
        elif name == "aggregate_drift":
            self._drift.add(amount)

    def reject(self, reason: str, amount: int = 1) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + amount
        self._rejected_counter.add(amount, {c.ATTR_REJECT_REASON: reason})

    def snapshot(self) -> WritebackStats:
        queue, pending, files = self._gauges()
        with self._lock:
            values = dict(self._values)
            rejected = MappingProxyType(dict(self._rejected))
        return WritebackStats(
            **values,
            rejected=rejected,
            queue_size=queue,
            pending_messages=pending,
            spool_files=files,
        )
