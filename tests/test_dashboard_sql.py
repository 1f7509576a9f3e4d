"""Every SQL query of the Grafana dashboards runs, read-only, against real written-back rows.

The database holds what the usage write-back leaves behind: users, conversations with their
token/cost aggregates, user messages without usage, assistant messages with tokens, cost,
model and provider filled in, one assistant message whose model has no price (cost NULL) and
one assistant message the write-back has not reached (total_tokens NULL). The queries run as
the read-only role that otel/postgres/init/10-grafana-readonly.sh creates for Grafana, the
way the compose stack runs it: the script runs on the empty database, then the application
creates its tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from chatter_otel.service.models import Base, Conversation, Message, MessageRole, User
from tests import _dashboards as dash

INIT_SCRIPT = dash.REPO / "otel" / "postgres" / "init" / "10-grafana-readonly.sh"
NOW = datetime.now(UTC)
RANGE_FROM = NOW - timedelta(days=30)
RANGE_TO = NOW + timedelta(hours=1)

ALICE, BOB = "01JALICE000000000000000000", "01JBOB00000000000000000000"
TRIP, REFACTOR, MYSTERY = (
    "01JCONVTRIP000000000000000",
    "01JCONVREFACTOR00000000000",
    "01JCONVMYSTERY000000000000",
)
MISSING_MESSAGE = "01JMSGMISSINGUSAGE00000000"
QUERIES = dash.sql_queries(RANGE_FROM, RANGE_TO)


@dataclass(frozen=True)
class Reader:
    """The Grafana role's connection to the seeded database."""

    engine: Engine

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql))]

    def query(self, title: str) -> list[dict[str, Any]]:
        [q] = [q for q in QUERIES if q.title == title]
        return self.rows(q.sql)


def _assistant(
    mid: str,
    conv: str,
    seq: int,
    *,
    prompt: int | None,
    completion: int | None,
    cost: float | None,
    model: str | None,
    provider: str | None,
    days_ago: int = 0,
) -> Message:
    return Message(
        id=mid,
        conversation_id=conv,
        role=MessageRole.ASSISTANT,
        content="(answer)",
        sequence_number=seq,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=None if prompt is None or completion is None else prompt + completion,
        cost=cost,
        model_used=model,
        provider_used=provider,
        finish_reason=None if prompt is None else "stop",
        created_at=NOW - timedelta(days=days_ago),
    )


def _user_message(mid: str, conv: str, seq: int, days_ago: int = 0) -> Message:
    return Message(
        id=mid,
        conversation_id=conv,
        role=MessageRole.USER,
        content="(question)",
        sequence_number=seq,
        created_at=NOW - timedelta(days=days_ago),
    )


def seed(url: URL) -> None:
    """Rows as the write-back leaves them (tokens, cost, model, aggregates)."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add_all(
            [
                User(id=ALICE, username="alice", email="alice@example.com"),
                User(id=BOB, username="bob", email="bob@example.com"),
            ]
        )
        session.flush()
        session.add_all(
            [
                Conversation(
                    id=TRIP,
                    user_id=ALICE,
                    title="Trip planning",
                    message_count=4,
                    total_tokens=1500,
                    total_cost=0.003,
                ),
                Conversation(
                    id=REFACTOR,
                    user_id=BOB,
                    title="Refactor",
                    message_count=2,
                    total_tokens=5000,
                    total_cost=0.015,
                ),
                Conversation(
                    id=MYSTERY,
                    user_id=ALICE,
                    title="Unpriced model",
                    message_count=4,
                    total_tokens=300,
                    total_cost=0.0,
                ),
            ]
        )
        session.flush()
        session.add_all(
            [
                _user_message("01JMSGTRIP0U00000000000000", TRIP, 0, days_ago=2),
                _assistant(
                    "01JMSGTRIP1A00000000000000",
                    TRIP,
                    1,
                    prompt=800,
                    completion=200,
                    cost=0.0021,
                    model="gpt-4o-mini",
                    provider="openai",
                    days_ago=2,
                ),
                _user_message("01JMSGTRIP2U00000000000000", TRIP, 2),
                _assistant(
                    "01JMSGTRIP3A00000000000000",
                    TRIP,
                    3,
                    prompt=400,
                    completion=100,
                    cost=0.0009,
                    model="gpt-4o-mini",
                    provider="openai",
                ),
                _user_message("01JMSGREF0U000000000000000", REFACTOR, 0),
                _assistant(
                    "01JMSGREF1A000000000000000",
                    REFACTOR,
                    1,
                    prompt=3000,
                    completion=2000,
                    cost=0.015,
                    model="claude-sonnet-4-5",
                    provider="anthropic",
                ),
                _user_message("01JMSGMYS0U000000000000000", MYSTERY, 0),
                _assistant(
                    "01JMSGMYS1A000000000000000",
                    MYSTERY,
                    1,
                    prompt=250,
                    completion=50,
                    cost=None,
                    model="mystery-1",
                    provider="acme",
                ),
                _user_message("01JMSGMYS2U000000000000000", MYSTERY, 2),
                _assistant(
                    MISSING_MESSAGE,
                    MYSTERY,
                    3,
                    prompt=None,
                    completion=None,
                    cost=None,
                    model=None,
                    provider=None,
                ),
            ]
        )
    engine.dispose()


def _psql_available() -> None:
    if shutil.which("psql"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("psql (postgresql-client) is required to run the Grafana role init script")
    pytest.skip("psql not installed")


@pytest.fixture
def reader(pg_url: URL, pg_server_url: URL) -> Iterator[Reader]:
    """Seeded private database read through a fresh read-only role made by the init script."""
    _psql_available()
    role, password = f"grafana_ro_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    env = {
        **os.environ,
        "PGHOST": pg_url.host or "127.0.0.1",
        "PGPORT": str(pg_url.port or 5432),
        "PGPASSWORD": pg_url.password or "",
        "POSTGRES_USER": pg_url.username or "postgres",
        "POSTGRES_DB": str(pg_url.database),
        "GRAFANA_PG_USER": role,
        "GRAFANA_PG_PASSWORD": password,
    }
    subprocess.run(["bash", str(INIT_SCRIPT)], env=env, check=True, capture_output=True, timeout=60)
    try:
        seed(pg_url)  # after the script, as in the stack: default privileges must apply
        engine = create_engine(pg_url.set(username=role, password=password))
        try:
            yield Reader(engine)
        finally:
            engine.dispose()
    finally:
        owner = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with owner.connect() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
        owner.dispose()
        server = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        server.dispose()


def test_the_dashboards_have_these_sql_panels() -> None:
    assert [(q.title, q.format) for q in QUERIES] == [
        ("Cost (USD)", "table"),
        ("Tokens", "table"),
        ("Assistant messages missing usage", "table"),
        ("Assistant messages without cost", "table"),
        ("Most expensive conversations", "table"),
        ("Most expensive users", "table"),
        ("Spend by provider and model", "table"),
        ("Tokens per day", "time_series"),
        ("Cost per day (USD)", "time_series"),
        ("Assistant messages still missing usage", "table"),
        ("Cost per day by user (top 10 users, USD)", "time_series"),
        ("Most expensive users per day", "table"),
        ("Most expensive users per month", "table"),
    ]


def test_grafana_macros_become_plain_sql() -> None:
    frm = datetime(2026, 1, 1, tzinfo=UTC)
    to = datetime(2026, 1, 2, tzinfo=UTC)
    assert dash.substitute_sql(
        "SELECT $__timeGroupAlias(m.created_at, '1d', 0), $__time(x) WHERE "
        "$__timeFilter(COALESCE(a, b)) AND $__unixEpochFilter(e)",
        frm,
        to,
    ) == (
        'SELECT to_timestamp(floor(extract(epoch from m.created_at) / 86400) * 86400) AS "time"'
        ', x AS "time" WHERE COALESCE(a, b) BETWEEN '
        "'2026-01-01T00:00:00+00:00'::timestamptz AND '2026-01-02T00:00:00+00:00'::timestamptz"
        " AND e >= 1767225600 AND e <= 1767312000"
    )
    with pytest.raises(ValueError, match=r"unsupported Grafana macro \$__schema"):
        dash.substitute_sql("SELECT $__schema()", frm, to)
    with pytest.raises(ValueError, match="unsubstituted"):
        dash.substitute_sql("SELECT * FROM t WHERE x = '$model'", frm, to)


@pytest.mark.parametrize("query", QUERIES, ids=[q.title for q in QUERIES])
def test_every_dashboard_query_returns_rows_as_the_read_only_role(
    reader: Reader, query: dash.SqlQuery
) -> None:
    rows = reader.rows(query.sql)
    assert rows, f"{query.where} returned no rows"
    if query.format == "time_series":
        assert all(isinstance(r["time"], datetime) for r in rows)


def test_the_grafana_role_cannot_write(reader: Reader) -> None:
    with pytest.raises(DBAPIError, match=r"read-only transaction|permission denied"):
        reader.rows("UPDATE messages SET cost = 0 RETURNING id")


def test_totals_count_priced_cost_and_known_tokens(reader: Reader) -> None:
    [cost] = reader.query("Cost (USD)")
    [tokens] = reader.query("Tokens")
    assert cost["cost_usd"] == pytest.approx(0.0021 + 0.0009 + 0.015)
    assert tokens["tokens"] == 1000 + 500 + 5000 + 300


def test_missing_usage_and_missing_prices_are_counted_apart(reader: Reader) -> None:
    assert reader.query("Assistant messages missing usage") == [{"missing_usage": 1}]
    assert reader.query("Assistant messages without cost") == [{"unpriced": 1}]
    [missing] = reader.query("Assistant messages still missing usage")
    assert (missing["message_id"], missing["conversation_id"]) == (MISSING_MESSAGE, MYSTERY)
    assert missing["sequence_number"] == 3


def test_most_expensive_conversations_come_first(reader: Reader) -> None:
    rows = reader.query("Most expensive conversations")
    assert [
        (r["conversation_id"], r["user"], r["assistant_messages"], r["tokens"]) for r in rows
    ] == [(REFACTOR, "bob", 1, 5000), (TRIP, "alice", 2, 1500), (MYSTERY, "alice", 2, 300)]
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.015, 0.003, 0.0])
    assert rows[0]["conversation_total_cost_usd"] == pytest.approx(0.015)


def test_most_expensive_users_come_first(reader: Reader) -> None:
    rows = reader.query("Most expensive users")
    assert [(r["user"], r["conversations"], r["tokens"]) for r in rows] == [
        ("bob", 1, 5000),
        ("alice", 2, 1800),
    ]


def test_spend_by_provider_and_model(reader: Reader) -> None:
    rows = reader.query("Spend by provider and model")
    by_model = {(r["provider"], r["model"]): r for r in rows}
    assert sorted(by_model) == [
        ("acme", "mystery-1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4o-mini"),
        ("unknown", "unknown"),
    ]
    assert by_model[("openai", "gpt-4o-mini")]["prompt_tokens"] == 1200
    assert by_model[("acme", "mystery-1")]["unpriced"] == 1
    assert by_model[("unknown", "unknown")]["assistant_messages"] == 1


def test_tokens_and_cost_per_day(reader: Reader) -> None:
    tokens = reader.query("Tokens per day")
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in tokens] == [
        (800, 200),
        (400 + 3000 + 250, 100 + 2000 + 50),
    ]
    assert tokens[1]["time"] - tokens[0]["time"] == timedelta(days=2)
    cost = reader.query("Cost per day (USD)")
    assert [r["cost_usd"] for r in cost] == pytest.approx([0.0021, 0.0009 + 0.015])


# --- cost per user: who are our expensive users -------------------------------------------------

TODAY = NOW.strftime("%Y-%m-%d")
TWO_DAYS_AGO = (NOW - timedelta(days=2)).strftime("%Y-%m-%d")


def test_expensive_users_are_ranked_within_each_day(reader: Reader) -> None:
    rows = reader.query("Most expensive users per day")
    assert [
        (r["day"], r["user"], r["assistant_messages"], r["tokens"], r["unpriced"], r["rank_in_day"])
        for r in rows
    ] == [
        (TODAY, "bob", 1, 5000, 0, 1),
        # Today alice has a priced answer, an unpriced one and one still missing usage.
        (TODAY, "alice", 3, 800, 1, 2),
        (TWO_DAYS_AGO, "alice", 1, 1000, 0, 1),
    ]
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.015, 0.0009, 0.0021])
    assert {r["user_id"] for r in rows} == {ALICE, BOB}


def test_expensive_users_are_ranked_within_each_month(reader: Reader) -> None:
    rows = reader.query("Most expensive users per month")
    this_month = NOW.strftime("%Y-%m")
    got = [(r["month"], r["user"], r["tokens"], r["rank_in_month"]) for r in rows]
    if TWO_DAYS_AGO[:7] == this_month:
        assert got == [(this_month, "bob", 5000, 1), (this_month, "alice", 1800, 2)]
        assert [r["cost_usd"] for r in rows] == pytest.approx([0.015, 0.003])
    else:  # the run is in the first two days of a month: alice's older answer is last month's
        assert got == [
            (this_month, "bob", 5000, 1),
            (this_month, "alice", 800, 2),
            (TWO_DAYS_AGO[:7], "alice", 1000, 1),
        ]
        assert [r["cost_usd"] for r in rows] == pytest.approx([0.015, 0.0009, 0.0021])


def test_cost_per_day_is_split_by_user(reader: Reader) -> None:
    rows = reader.query("Cost per day by user (top 10 users, USD)")
    assert [(r["time"].astimezone(UTC).strftime("%Y-%m-%d"), r["metric"]) for r in rows] == [
        (TWO_DAYS_AGO, "alice"),
        (TODAY, "alice"),
        (TODAY, "bob"),
    ]
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.0021, 0.0009, 0.015])
