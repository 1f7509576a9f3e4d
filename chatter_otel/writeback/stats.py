"""The write-back's own counters and gauges: a snapshot for tests and ``check``, and OTel metrics.

Every counter the processor keeps is also an OTel counter (names in
:mod:`chatter_otel.conventions`), so every loss shows on a dashboard, not only in a log.
Counters are updated from the processor's two threads under one lock (a few increments per
pass or batch, never per application span).

Gauges (queue size, records waiting for their message row, spool files, age of the oldest
unwritten record) are observed through one set of instruments per meter provider. The SDK
registers an observable instrument once per name and keeps only the first callback, so each
processor registers itself with that set under its own ``chatter.writeback.processor``
attribute, and only weakly: a processor that was shut down stops reporting and can be freed.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from chatter_otel import conventions as c
from chatter_otel.version import __version__


class Gauges(NamedTuple):
    queue_size: int
    """Spans waiting for the assembler plus records in memory for the writer."""
    pending: int
    """Records in memory waiting for their message row."""
    spool_files: int
    """Spool files of this processor not yet replayed."""
    oldest_age: float
    """Seconds since the span of the oldest record in memory ended (0 when none)."""


NO_GAUGES = Gauges(0, 0, 0, 0.0)


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
    """Records moved from memory to a spool file (beyond ``max_queue``, or at shutdown)."""
    replayed: int = 0
    """Records read back from spool files (and dead processes' journals)."""
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
    db_errors: int = 0
    """Failed database transactions (each is retried)."""
    lost: int = 0
    """Records that could be neither written nor spooled (logged as errors)."""
    schema_waits: int = 0
    """Start-up checks that found the application's tables missing (records are kept)."""
    throttled: int = 0
    """``on_end`` calls that waited because the assembler was far behind (backpressure)."""
    aggregate_drift: int = 0
    """Conversations whose stored aggregates differed from their messages and were repaired."""
    queue_size: int = 0
    """Spans waiting for the assembler plus records waiting in memory for the writer."""
    pending_messages: int = 0
    """Records in memory waiting for their message row."""
    spool_files: int = 0
    """Spool files of this processor not yet replayed."""
    oldest_age: float = 0.0
    """Seconds since the span of the oldest record in memory ended (0 when none)."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class _Counter(NamedTuple):
    field: str
    metric: str
    unit: str
    description: str


_COUNTERS: tuple[_Counter, ...] = (
    _Counter("spans_seen", c.METRIC_WRITEBACK_SPANS, "{span}", "Spans read by the write-back"),
    _Counter("records", c.METRIC_WRITEBACK_RECORDS, "{record}", "Turn records assembled"),
    _Counter("applied", c.METRIC_WRITEBACK_APPLIED, "{record}", "Turn records written"),
    _Counter("retried", c.METRIC_WRITEBACK_RETRIED, "{record}", "Record writes to be tried again"),
    _Counter(
        "orphaned",
        c.METRIC_WRITEBACK_ORPHANED,
        "{record}",
        "Records whose message row never appeared",
    ),
    _Counter("spooled", c.METRIC_WRITEBACK_SPOOLED, "{record}", "Records moved to the spool"),
    _Counter("replayed", c.METRIC_WRITEBACK_REPLAYED, "{record}", "Records read from the spool"),
    _Counter(
        "unowned",
        c.METRIC_WRITEBACK_UNOWNED,
        "{record}",
        "LLM calls no owner span claimed (their usage is not written)",
    ),
    _Counter(
        "rollups_ignored",
        c.METRIC_WRITEBACK_ROLLUPS,
        "{span}",
        "Spans whose usage duplicated or summed other spans' usage",
    ),
    _Counter("late", c.METRIC_WRITEBACK_LATE, "{record}", "LLM calls added after their turn"),
    _Counter(
        "late_conflicts",
        c.METRIC_WRITEBACK_LATE_CONFLICTS,
        "{span}",
        "Late LLM spans already counted through another span",
    ),
    _Counter("duplicates", c.METRIC_WRITEBACK_DUPLICATES, "{span}", "Spans delivered twice"),
    _Counter(
        "traces_evicted",
        c.METRIC_WRITEBACK_TRACES_EVICTED,
        "{trace}",
        "Incomplete traces dropped at the trace limit",
    ),
    _Counter(
        "db_errors",
        c.METRIC_WRITEBACK_DATABASE_ERRORS,
        "{error}",
        "Failed database transactions (each is retried)",
    ),
    _Counter("lost", c.METRIC_WRITEBACK_LOST, "{record}", "Records neither written nor spooled"),
    _Counter(
        "schema_waits",
        c.METRIC_WRITEBACK_SCHEMA_WAITS,
        "{check}",
        "Checks that found the application's tables missing (records are kept meanwhile)",
    ),
    _Counter(
        "throttled",
        c.METRIC_WRITEBACK_THROTTLED,
        "{call}",
        "Span ends that waited for the assembler (backpressure)",
    ),
    _Counter(
        "aggregate_drift",
        c.METRIC_WRITEBACK_AGGREGATE_DRIFT,
        "{conversation}",
        "Conversations whose aggregates differed from their messages and were repaired",
    ),
)


class Counters:
    """Mutable counters behind :class:`WritebackStats`, mirrored into OTel counters."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys((spec.field for spec in _COUNTERS), 0)
        self._rejected: dict[str, int] = {}
        meter = _meter(meter_provider)
        self._instruments = {
            spec.field: meter.create_counter(
                spec.metric, unit=spec.unit, description=spec.description
            )
            for spec in _COUNTERS
        }
        self._rejected_counter = meter.create_counter(
            c.METRIC_WRITEBACK_REJECTED,
            unit="{value}",
            description="Span values or records refused as invalid, by reason",
        )

    def add(self, name: str, amount: int = 1) -> None:
        if amount <= 0:
            return
        with self._lock:
            self._values[name] += amount
        self._instruments[name].add(amount)

    def reject(self, reason: str, amount: int = 1) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + amount
        self._rejected_counter.add(amount, {c.ATTR_REJECT_REASON: reason})

    def drift(self, conversations: int = 1) -> None:
        """Conversations whose stored aggregates were found wrong and repaired."""
        self.add("aggregate_drift", conversations)

    def snapshot(self, gauges: Gauges = NO_GAUGES) -> WritebackStats:
        with self._lock:
            values = dict(self._values)
            rejected = MappingProxyType(dict(self._rejected))
        return WritebackStats(
            **values,
            rejected=rejected,
            queue_size=gauges.queue_size,
            pending_messages=gauges.pending,
            spool_files=gauges.spool_files,
            oldest_age=gauges.oldest_age,
        )


def _meter(meter_provider: MeterProvider | None) -> metrics.Meter:
    provider = meter_provider or metrics.get_meter_provider()
    return provider.get_meter("chatter_otel.writeback", __version__)


GaugeSource = Callable[[], Gauges | None]
"""Returns the processor's gauges, or None once it was shut down."""

_labels = itertools.count(1)


class _GaugeSet:
    """The four observable gauges of one meter provider, reporting every live processor."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._lock = threading.Lock()
        self._sources: list[tuple[str, weakref.WeakMethod[GaugeSource]]] = []
        specs: tuple[tuple[str, str, str, Callable[[Gauges], float]], ...] = (
            (
                c.METRIC_WRITEBACK_QUEUE_SIZE,
                "{item}",
                "Spans and records waiting in memory",
                lambda g: g.queue_size,
            ),
            (
                c.METRIC_WRITEBACK_PENDING,
                "{record}",
                "Records waiting for their message row",
                lambda g: g.pending,
            ),
            (
                c.METRIC_WRITEBACK_SPOOL_FILES,
                "{file}",
                "Spool files waiting to be replayed",
                lambda g: g.spool_files,
            ),
            (
                c.METRIC_WRITEBACK_OLDEST_AGE,
                "s",
                "Seconds since the span of the oldest record not yet written ended",
                lambda g: g.oldest_age,
            ),
        )
        for name, unit, description, pick in specs:
            meter.create_observable_gauge(
                name, callbacks=[self._callback(pick)], unit=unit, description=description
            )

    def add(self, source: GaugeSource) -> None:
        """``source`` must be a bound method: it is held weakly."""
        with self._lock:
            self._sources.append((str(next(_labels)), weakref.WeakMethod(source)))

    def _observe(self) -> list[tuple[str, Gauges]]:
        with self._lock:
            self._sources = [(label, ref) for label, ref in self._sources if ref() is not None]
            sources = list(self._sources)
        out: list[tuple[str, Gauges]] = []
        for label, ref in sources:
            source = ref()
            values = source() if source is not None else None
            if values is not None:
                out.append((label, values))
        return out

    def _callback(
        self, pick: Callable[[Gauges], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(pick(values), {c.ATTR_WRITEBACK_PROCESSOR: label})
                for label, values in self._observe()
            ]

        return observe


_gauge_sets: weakref.WeakKeyDictionary[object, _GaugeSet] = weakref.WeakKeyDictionary()
_gauge_sets_lock = threading.Lock()


def observe_gauges(meter_provider: MeterProvider | None, source: GaugeSource) -> None:
    """Reports ``source`` (a processor's bound method, held weakly) through the gauges of
    ``meter_provider`` (default: the global one)."""
    provider = meter_provider or metrics.get_meter_provider()
    with _gauge_sets_lock:
        gauge_set = _gauge_sets.get(provider)
        if gauge_set is None:
            gauge_set = _gauge_sets[provider] = _GaugeSet(_meter(provider))
    gauge_set.add(source)
