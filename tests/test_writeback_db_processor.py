"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: the
span processor itself (metrics and stats, the SDK contract, a custom mapping, a fork).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.writeback import WritebackMapping
from tests._writeback_db import Factory, flush
from tests.test_writeback_support import (
    aggregates_exact,
    build,
    engine_for,
    genai_attrs,
    ledger_name,
    message,
    node,
    owner_attrs,
    seed,
    simple_turn,
)


def test_metrics_and_stats(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    reader = InMemoryMetricReader()
    t = make(meter_provider=MeterProvider(metric_readers=[reader]))
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(1, 1)])
    build(
        t.tracer,
        node("wf", owner_attrs(rows.messages[cid][1], cid), node("chat", genai_attrs(-5, 1))),
    )
    assert flush(t)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points[metric.name] = list(metric.data.data_points)
    assert points[c.METRIC_WRITEBACK_APPLIED][0].value == 2
    (rejected,) = points[c.METRIC_WRITEBACK_REJECTED]
    assert rejected.value == 1
    assert dict(rejected.attributes) == {c.ATTR_REJECT_REASON: "tokens_negative"}
    assert points[c.METRIC_WRITEBACK_QUEUE_SIZE][0].value == 0
    stats = t.processor.stats
    assert (stats.spans_seen, stats.records, stats.applied) == (5, 2, 2)


def test_span_processor_contract(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    t = make()
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(1, 1)])
    t.processor.on_end(None)  # type: ignore[arg-type]  # garbage never raises
    assert flush(t)
    assert t.processor.stats.rejected == {"span_unreadable": 1}
    t.provider.shutdown()
    t.processor.shutdown()  # twice is fine
    t.processor.on_end(t.exported.get_finished_spans()[0])  # after shutdown: ignored
    assert t.processor.force_flush(100) is True  # nothing was left behind
    threads = {th.name for th in threading.enumerate()}
    assert not any(name.startswith("chatter-otel-writeback") for name in threads)


def test_custom_mapping_names_the_ledger(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    t = make(mapping=WritebackMapping(ledger_table="wb_ledger_custom"))
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(2, 2)])
    assert flush(t)
    engine = engine_for(db_url)
    with engine.connect() as conn:
        ledger = ledger_name(db_url, "wb_ledger_custom")
        assert conn.execute(text(f"SELECT COUNT(*) FROM {ledger}")).scalar() == 1
    engine.dispose()


def test_forked_child_writes_with_its_own_threads(db_url: URL, make: Factory) -> None:
    """A pre-forking server (gunicorn --preload) creates the processor before forking."""
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    parent_mid, child_mid = rows.messages[cid]
    t = make()
    simple_turn(t.tracer, parent_mid, cid, [(1, 1)])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            simple_turn(t.tracer, child_mid, cid, [(5, 5)])
            code = 0 if t.provider.force_flush(20_000) else 2
            t.provider.shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flush(t)
    assert message(db_url, parent_mid)["total_tokens"] == 2
    assert message(db_url, child_mid)["total_tokens"] == 10
    assert aggregates_exact(db_url) == []
