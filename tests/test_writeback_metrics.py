"""Every counter and gauge the write-back keeps is an OTel metric, with exact values.

Read through :func:`chatter_otel.testing.capture_telemetry`, as an application's own tests
would; the database is the shared PostgreSQL (a private database per test).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from chatter_otel.writeback import WritebackSpanProcessor
from chatter_otel.writeback.stats import Counters
from tests.test_writeback_support import (
    Seeded,
    build,
    genai_attrs,
    node,
    owner_attrs,
    seed,
    simple_turn,
    tracing,
    wait_until,
)


@pytest.fixture
def rows(pg_url: URL) -> Seeded:
    """Chatter's tables with one conversation of two messages, before any processor starts."""
    return seed(pg_url, messages=2)


@pytest.fixture
def captured(pg_url: URL, rows: Seeded, tmp_path: Path) -> Iterator[CapturedTelemetry]:
    with capture_telemetry(
        writeback_url=pg_url.render_as_string(hide_password=False),
        writeback_flush_interval_s=0.05,
        writeback_message_ttl_s=0.0,
        writeback_spool_path=tmp_path / "spool",
    ) as cap:
        yield cap


def _value(cap: CapturedTelemetry, metric: str, attributes: dict[str, Any] | None = None) -> Any:
    return cap.point(metric, attributes or {}).value


def _label(processor: WritebackSpanProcessor, reader: InMemoryMetricReader) -> str:
    """The processor attribute its gauges carry (numbered per process)."""
    (label,) = _gauges(reader, c.METRIC_WRITEBACK_QUEUE_SIZE)
    return label


def test_counters_are_metrics_with_exact_values(rows: Seeded, captured: CapturedTelemetry) -> None:
    cid = rows.conversations[0]
    processor = captured.telemetry.writeback
    assert captured.telemetry.tracer_provider is not None
    tracer = captured.telemetry.tracer_provider.get_tracer("tests")
    simple_turn(tracer, rows.messages[cid][0], cid, [(3, 4)])
    # Negative tokens: the value is rejected, the turn is still written (without usage).
    build(
        tracer,
        node("wf", owner_attrs(rows.messages[cid][1], cid), node("chat", genai_attrs(-5, 1))),
    )
    # A message that does not exist: orphaned at once (time-to-live 0).
    simple_turn(tracer, "01J0000000000000000000000Z", cid, [(1, 1)])
    assert processor.force_flush(20_000) is True
    assert _value(captured, c.METRIC_WRITEBACK_APPLIED) == 2
    assert _value(captured, c.METRIC_WRITEBACK_ORPHANED) == 1
    assert _value(captured, c.METRIC_WRITEBACK_RECORDS) == 3
    assert _value(captured, c.METRIC_WRITEBACK_SPANS) == 8
    reason = {c.ATTR_REJECT_REASON: "tokens_negative"}
    assert _value(captured, c.METRIC_WRITEBACK_REJECTED, reason) == 1
    label = {c.ATTR_WRITEBACK_PROCESSOR: _label(processor, captured.reader)}
    assert _value(captured, c.METRIC_WRITEBACK_QUEUE_SIZE, label) == 0
    assert _value(captured, c.METRIC_WRITEBACK_PENDING, label) == 0
    assert _value(captured, c.METRIC_WRITEBACK_SPOOL_FILES, label) == 0
    assert _value(captured, c.METRIC_WRITEBACK_OLDEST_AGE, label) == 0.0


def test_database_errors_are_counted(rows: Seeded, captured: CapturedTelemetry) -> None:
    cid = rows.conversations[0]
    processor = captured.telemetry.writeback
    failures: list[str] = []

    def fault(step: str) -> None:
        if step == "commit" and len(failures) < 2:
            failures.append(step)
            raise ConnectionError("injected")

    processor.store.fault = fault
    assert captured.telemetry.tracer_provider is not None
    simple_turn(
        captured.telemetry.tracer_provider.get_tracer("tests"), rows.messages[cid][0], cid, [(1, 1)]
    )
    # The writer may meet the failures on its own or during a flush: ask until written.
    assert wait_until(lambda: processor.force_flush(5_000), timeout=30, interval=0.05)
    assert failures == ["commit", "commit"]
    assert _value(captured, c.METRIC_WRITEBACK_DATABASE_ERRORS) == 2
    assert _value(captured, c.METRIC_WRITEBACK_RETRIED) == 2
    assert _value(captured, c.METRIC_WRITEBACK_APPLIED) == 1


def test_aggregate_drift_has_a_counter() -> None:
    reader = InMemoryMetricReader()
    counters = Counters(MeterProvider(metric_readers=[reader]))
    counters.drift(3)
    (point,) = _points(reader, c.METRIC_WRITEBACK_AGGREGATE_DRIFT)
    assert point.value == 3
    assert counters.snapshot().aggregate_drift == 3


def _points(reader: InMemoryMetricReader, metric: str) -> list[Any]:
    data = reader.get_metrics_data()
    return [
        point
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == metric
        for point in m.data.data_points
    ]


def _gauges(reader: InMemoryMetricReader, metric: str) -> dict[str, Any]:
    """Gauge values by processor attribute."""
    return {str(p.attributes[c.ATTR_WRITEBACK_PROCESSOR]): p.value for p in _points(reader, metric)}


def test_gauges_report_each_processor_and_free_a_shut_down_one(
    pg_url: URL, rows: Seeded, tmp_path: Path
) -> None:
    """Two processors on one meter provider: each has its own gauge series; once one is
    shut down its series stops and nothing keeps it alive."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    cid = rows.conversations[0]
    made = []
    for name in ("a", "b"):
        processor = WritebackSpanProcessor(
            pg_url,
            pricing=Pricing(),
            flush_interval=0.05,
            meter_provider=meters,
            spool_path=tmp_path / name,
        )
        made.append(processor)
    a, b = made
    # b holds a record waiting for its message row (time-to-live 300 s): pending 1.
    t = tracing(b)
    simple_turn(t.tracer, "01J0000000000000000000000Z", cid, [(1, 1)])
    assert b.force_flush(20_000) is False
    pending = _gauges(reader, c.METRIC_WRITEBACK_PENDING)
    assert sorted(pending.values()) == [0, 1]
    assert len(pending) == 2
    ages = _gauges(reader, c.METRIC_WRITEBACK_OLDEST_AGE)
    (label_b,) = [label for label, value in pending.items() if value == 1]
    assert 0.0 < ages[label_b] < 60.0  # b's waiting record ended moments ago
    assert [age for label, age in ages.items() if label != label_b] == [0.0]
    a.shutdown()
    assert list(_gauges(reader, c.METRIC_WRITEBACK_PENDING).values()) == [1]
    freed = weakref.ref(a)
    made.clear()
    del a
    gc.collect()
    assert freed() is None
    t.provider.shutdown()
    b.shutdown()
    assert _gauges(reader, c.METRIC_WRITEBACK_PENDING) == {}
    meters.shutdown()
