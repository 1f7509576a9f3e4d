"""The application creates its tables after the write-back started (migrations at boot).

Before: every round logged ERROR "the database refused to set up the ledger" and retried
5 s later. Now the write-back waits quietly (one INFO line naming the table, a counted
re-check with a short backoff), keeps every record as during an outage, and writes each
one exactly once the tables appear, including records a previous process spooled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from sqlalchemy import insert
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.service.models import Conversation, Message, MessageRole, User, new_ulid
from chatter_otel.writeback import tables
from chatter_otel.writeback.dberrors import PermanentError
from chatter_otel.writeback.tables import TableWait, missing_table
from tests.test_writeback_support import (
    Tracing,
    aggregates_exact,
    conversation,
    create_schema,
    engine_for,
    message,
    price,
    simple_turn,
    wait_until,
)

TABLES_LATE_S = 2.0
WAIT_LINE = (
    "write-back: waiting for the application's table messages (its migrations have not run "
    "yet?); records are kept and written once it exists"
)

Plan = dict[str, list[tuple[str, list[tuple[int, int]]]]]
"""Conversation id -> its messages (id, calls), chosen before the tables exist."""


def _plan(conversations: int = 2, messages: int = 3) -> Plan:
    return {
        new_ulid(): [(new_ulid(), [(10 + i, 5), (3, i + 1)]) for i in range(messages)]
        for _ in range(conversations)
    }


def _end_turns(t: Tracing, plan: Plan) -> None:
    for cid, messages in plan.items():
        for mid, calls in messages:
            simple_turn(t.tracer, mid, cid, calls)


def _run_migrations(url: URL, plan: Plan) -> None:
    """What the application does late: create its tables, then its rows."""
    create_schema(url)
    user_id = new_ulid()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(insert(User), [{"id": user_id, "username": user_id, "email": "u@x"}])
        conn.execute(
            insert(Conversation), [{"id": cid, "user_id": user_id, "title": "t"} for cid in plan]
        )
        conn.execute(
            insert(Message),
            [
                {
                    "id": mid,
                    "conversation_id": cid,
                    "role": MessageRole.ASSISTANT,
                    "content": "x",
                    "sequence_number": seq,
                }
                for cid, messages in plan.items()
                for seq, (mid, _) in enumerate(messages)
            ],
        )
    engine.dispose()


def _assert_exact(url: URL, plan: Plan) -> None:
    for cid, messages in plan.items():
        for mid, calls in messages:
            row = message(url, mid)
            tokens = (
                sum(a for a, _ in calls),
                sum(b for _, b in calls),
                sum(a + b for a, b in calls),
            )
            assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == tokens
            assert row["cost"] == pytest.approx(float(sum(price(a, b) for a, b in calls)))
        totals = conversation(url, cid)
        expected = sum(a + b for _, calls in messages for a, b in calls)
        assert (totals["total_tokens"], totals["message_count"]) == (expected, len(messages))
    assert aggregates_exact(url) == []


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _counter(reader: InMemoryMetricReader, name: str) -> int:
    data = reader.get_metrics_data()
    values = [
        p.value
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
        if isinstance(p, NumberDataPoint)
    ]
    return int(sum(values))


def test_records_wait_quietly_for_tables_created_after_start_up(
    db_url: URL,
    make_writeback: Callable[..., Tracing],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatter_otel")
    reader = InMemoryMetricReader()
    t = make_writeback(db_url, meter_provider=MeterProvider(metric_readers=[reader]))
    plan = _plan()
    _end_turns(t, plan)
    assert wait_until(lambda: t.processor.stats.schema_waits >= 3)
    time.sleep(TABLES_LATE_S)
    waited = t.processor.stats
    assert (waited.applied, waited.rejected_total, waited.lost) == (0, 0, 0)
    assert waited.records == 6

    _run_migrations(db_url, plan)
    assert wait_until(lambda: t.provider.force_flush(5_000), timeout=15)

    _assert_exact(db_url, plan)
    stats = t.processor.stats
    assert (stats.applied, stats.rejected_total, stats.lost, stats.orphaned) == (6, 0, 0, 0)
    assert _counter(reader, c.METRIC_WRITEBACK_SCHEMA_WAITS) == stats.schema_waits
    assert _errors(caplog) == []
    infos = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "table" in r.getMessage()
    ]
    assert infos[0] == WAIT_LINE
    assert len(infos) == 2 and infos[1].startswith("write-back: the application's tables exist")


def test_a_flush_while_the_tables_are_missing_says_so(
    pg_url: URL, make_writeback: Callable[..., Tracing], caplog: pytest.LogCaptureFixture
) -> None:
    t = make_writeback(pg_url)
    _end_turns(t, _plan(1, 1))
    assert t.provider.force_flush(5_000) is False
    assert t.processor.last_flush_failure == (
        "waiting for the application's table messages (records are kept)"
    )
    assert _errors(caplog) == []


def test_spooled_records_wait_for_the_tables_after_a_restart(
    pg_url: URL, make_writeback: Callable[..., Tracing], caplog: pytest.LogCaptureFixture
) -> None:
    """The first process stops before the tables exist (its records are spooled); the next
    one starts while they still do not: it replays nothing and rejects nothing until the
    application creates them, then writes every record exactly."""
    caplog.set_level(logging.INFO, logger="chatter_otel")
    plan = _plan()
    first = make_writeback(pg_url, max_queue=1)
    _end_turns(first, plan)
    first.provider.shutdown()
    assert (first.processor.stats.spooled, first.processor.stats.lost) == (6, 0)

    second = make_writeback(pg_url)
    assert wait_until(lambda: second.processor.stats.schema_waits >= 3)
    time.sleep(0.5)
    assert (second.processor.stats.replayed, second.processor.stats.rejected_total) == (0, 0)

    _run_migrations(pg_url, plan)
    assert wait_until(lambda: second.provider.force_flush(5_000), timeout=15)
    _assert_exact(pg_url, plan)
    stats = second.processor.stats
    assert (stats.rejected_total, stats.lost, stats.orphaned) == (0, 0, 0)
    assert stats.replayed >= 6
    assert _errors(caplog) == []


@pytest.mark.parametrize(
    ("error", "table"),
    [
        (
            PermanentError('UndefinedTable: relation "messages" does not exist', sqlstate="42P01"),
            "messages",
        ),
        (PermanentError('schema "app" does not exist', sqlstate="3F000"), "app"),
        (PermanentError("OperationalError: no such table: conversations"), "conversations"),
        (
            PermanentError('column "no_such_column" does not exist', sqlstate="42703"),
            None,
        ),
        (PermanentError("permission denied for table messages", sqlstate="42501"), None),
        (PermanentError("OperationalError: no such column: model_used"), None),
    ],
    ids=["pg-table", "pg-schema", "sqlite-table", "pg-column", "pg-privilege", "sqlite-column"],
)
def test_only_a_missing_table_is_a_wait(error: PermanentError, table: str | None) -> None:
    assert missing_table(error) == table


def test_a_long_wait_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatter_otel.writeback")
    monkeypatch.setattr(tables, "WARN_AFTER", 0.0)
    wait = TableWait((0.1, 5.0))
    delays = [wait.missing("messages", 0.0)]
    for _ in range(5):
        delays.append(wait.missing("messages", delays[-1]))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, tables.RECHECK_MAX]
    levels = [r.levelname for r in caplog.records]
    assert levels == ["INFO", "WARNING", "DEBUG", "DEBUG", "DEBUG", "DEBUG"]
