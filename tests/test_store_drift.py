"""Conversation totals: the write-back owns them, counts drift and repairs it; so does
``chatter-otel reconcile`` for conversations it has not written since."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.writeback.reconcile import reconcile
from tests.test_writeback_support import (
    Tracing,
    aggregates_exact,
    conversation,
    engine_for,
    price,
    seed,
    simple_turn,
)

Factory = Callable[..., Tracing]


def _app_read(url: URL, cid: str) -> dict[str, Any]:
    """What Chatter's ORM loads before its read-modify-write."""
    return conversation(url, cid)


def _app_write(url: URL, cid: str, loaded: dict[str, Any], tokens: int, cost: float) -> None:
    """Chatter's read-modify-write: message_count + 1, tokens + delta, cost + delta, from the
    values it loaded earlier."""
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE conversations SET message_count = :n, total_tokens = :t, "
                "total_cost = :c WHERE id = :id"
            ),
            {
                "n": loaded["message_count"] + 1,
                "t": loaded["total_tokens"] + tokens,
                "c": float(loaded["total_cost"]) + cost,
                "id": cid,
            },
        )
    engine.dispose()


def _drift_metric(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == c.METRIC_WRITEBACK_AGGREGATE_DRIFT:
                    return int(sum(getattr(p, "value", 0) for p in metric.data.data_points))
    return 0


def _exact(url: URL, cid: str, tokens: int, cost: Decimal, count: int) -> bool:
    conv = conversation(url, cid)
    return (conv["total_tokens"], conv["message_count"]) == (tokens, count) and abs(
        Decimal(repr(float(conv["total_cost"]))) - cost
    ) < Decimal("1e-12")


def test_app_increments_interleaved_with_write_back_batches_end_exact(
    pg_url: URL, make_writeback: Factory
) -> None:
    rows = seed(pg_url, conversations=1, messages=3)
    cid = rows.conversations[0]
    first, second, third = rows.messages[cid]
    assert reconcile(pg_url).repaired == 1  # seeded rows left message_count at 0
    reader = InMemoryMetricReader()
    t = make_writeback(pg_url, meter_provider=MeterProvider(metric_readers=[reader]))

    loaded = _app_read(pg_url, cid)  # the app loads the conversation ...
    simple_turn(t.tracer, first, cid, [(10, 5)])
    assert t.provider.force_flush(10_000)  # ... a write-back batch commits meanwhile ...
    assert _exact(pg_url, cid, 15, price(10, 5), 3)
    _app_write(pg_url, cid, loaded, tokens=100, cost=0.5)  # ... and the app saves its sums
    assert conversation(pg_url, cid)["total_tokens"] == 100  # the write-back's 15 overwritten
    assert len(aggregates_exact(pg_url)) == 1
    assert _drift_metric(reader) == 0

    simple_turn(t.tracer, second, cid, [(20, 2)])
    assert t.provider.force_flush(10_000)
    assert _exact(pg_url, cid, 37, price(30, 7), 3)
    assert aggregates_exact(pg_url) == []
    assert _drift_metric(reader) == 1
    assert t.processor.stats.aggregate_drift == 1

    simple_turn(t.tracer, third, cid, [(1, 1)])  # nothing drifted since: not counted
    assert t.provider.force_flush(10_000)
    assert _drift_metric(reader) == 1
    assert _exact(pg_url, cid, 39, price(31, 8), 3)


def test_reconcile_repairs_what_the_app_left_wrong(pg_url: URL, make_writeback: Factory) -> None:
    rows = seed(pg_url, conversations=1, messages=1)
    cid = rows.conversations[0]
    t = make_writeback(pg_url)
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(4, 4)])
    assert t.provider.force_flush(10_000)
    _app_write(pg_url, cid, _app_read(pg_url, cid), tokens=50, cost=1.0)
    report = reconcile(pg_url)
    (drift,) = report.drifted
    assert (drift.conversation_id, drift.stored_tokens, drift.tokens) == (cid, 58, 8)
    assert (drift.stored_count, drift.count) == (2, 1)
    assert report.repaired == 1
    assert _exact(pg_url, cid, 8, price(4, 4), 1)
    assert aggregates_exact(pg_url) == []


def test_reconcile_dry_run_reports_and_changes_nothing(pg_url: URL) -> None:
    rows = seed(pg_url, conversations=3, messages=2)  # message_count left at 0 by the seed
    before = [conversation(pg_url, cid) for cid in rows.conversations]
    report = reconcile(pg_url, dry_run=True)
    assert (report.checked, len(report.drifted), report.repaired) == (3, 3, 0)
    assert {(d.stored_count, d.count) for d in report.drifted} == {(0, 2)}
    assert [conversation(pg_url, cid) for cid in rows.conversations] == before


def test_reconcile_walks_all_conversations_in_batches(pg_url: URL) -> None:
    rows = seed(pg_url, conversations=5, messages=1)
    seen: list[tuple[int, int, int]] = []
    report = reconcile(
        pg_url, batch_size=2, progress=lambda done, total, d: seen.append((done, total, d))
    )
    assert seen == [(2, 5, 2), (4, 5, 4), (5, 5, 5)]
    assert (report.checked, report.repaired) == (5, 5)
    assert aggregates_exact(pg_url) == []
    assert reconcile(pg_url).drifted == []  # nothing left to repair
    assert all(conversation(pg_url, cid)["message_count"] == 1 for cid in rows.conversations)


def test_reconcile_command(pg_url: URL) -> None:
    seed(pg_url, conversations=2, messages=1)
    env = {
        **os.environ,
        "CHATTER_OTEL_WRITEBACK_URL": pg_url.render_as_string(hide_password=False),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatter_otel.cli", "reconcile", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == (
        "2 conversations checked, 2 differed from their messages, 2 would be repaired"
    )
    done = run()
    assert done.stdout.splitlines()[0] == (
        "2 conversations checked, 2 differed from their messages, 2 repaired"
    )
    again = run("--dry-run")
    assert again.stdout.splitlines() == [
        "2 conversations checked, 0 differed from their messages, 0 would be repaired"
    ]
    assert aggregates_exact(pg_url) == []
