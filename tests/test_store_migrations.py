"""The ledger is invisible to the application's migrations: Alembic autogenerate, knowing
only the application's tables, proposes no change on a database the write-back wrote to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, text
from sqlalchemy.engine import URL

from chatter_otel.service.models import Base
from chatter_otel.writeback import WritebackMapping
from chatter_otel.writeback.store import Store, ledger_table
from tests.test_writeback_support import (
    Tracing,
    engine_for,
    ledger_rows,
    message,
    seed,
    simple_turn,
)

Factory = Callable[..., Tracing]


def _autogenerate_diff(url: URL) -> list[Any]:
    """What ``alembic revision --autogenerate`` would propose for Chatter's own models."""
    engine = engine_for(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return list(diff)


def test_the_app_metadata_holds_only_chatters_tables() -> None:
    assert sorted(Base.metadata.tables) == ["conversations", "messages", "users"]


def test_autogenerate_proposes_nothing_after_the_write_back_wrote(
    pg_url: URL, make_writeback: Factory
) -> None:
    rows = seed(pg_url, conversations=1, messages=1)
    t = make_writeback(pg_url)
    simple_turn(t.tracer, rows.all_messages[0], rows.conversations[0], [(3, 4)])
    assert t.provider.force_flush(10_000)
    assert message(pg_url, rows.all_messages[0])["total_tokens"] == 7
    assert _autogenerate_diff(pg_url) == []


def test_a_ledger_left_in_public_by_an_earlier_version_is_moved_with_its_rows(
    pg_url: URL, make_writeback: Factory
) -> None:
    rows = seed(pg_url, conversations=1, messages=2)
    first, second = rows.all_messages
    old = ledger_table(WritebackMapping())  # where earlier versions created it
    engine = engine_for(pg_url)
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(old),
            [
                {
                    "trace_id": "a" * 32,
                    "span_id": "b" * 16,
                    "kind": "turn",
                    "status": "applied",
                    "message_id": first,
                    "conversation_id": rows.conversations[0],
                    "total_tokens": 5,
                    "cost_unpriced": False,
                    "usage_missing": False,
                    "calls": 1,
                    "span_end_ns": 1,
                }
            ],
        )
    engine.dispose()
    # What Chatter's autogenerate proposed before: dropping the ledger and its index.
    before = sorted((change[0], change[1].name) for change in _autogenerate_diff(pg_url))
    assert before == [
        ("remove_index", "chatter_otel_writeback_ledger_message_ix"),
        ("remove_table", "chatter_otel_writeback_ledger"),
    ]

    t = make_writeback(pg_url)
    simple_turn(t.tracer, second, rows.conversations[0], [(1, 1)])
    assert t.provider.force_flush(10_000)
    assert sorted(r["message_id"] for r in ledger_rows(pg_url)) == sorted([first, second])
    engine = engine_for(pg_url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT to_regclass('public.chatter_otel_writeback_ledger')"))
        index = conn.execute(
            text("SELECT schemaname FROM pg_indexes WHERE indexname = :n"),
            {"n": "chatter_otel_writeback_ledger_message_ix"},
        )
        assert (left.scalar(), index.scalar()) == (None, "chatter_otel")
    engine.dispose()
    assert _autogenerate_diff(pg_url) == []


def test_sqlite_keeps_the_ledger_beside_the_tables(
    sqlite_url: URL, make_writeback: Factory
) -> None:
    rows = seed(sqlite_url, conversations=1, messages=1)
    t = make_writeback(sqlite_url)
    simple_turn(t.tracer, rows.all_messages[0], rows.conversations[0], [(2, 2)])
    assert t.provider.force_flush(10_000)
    assert [r["total_tokens"] for r in ledger_rows(sqlite_url)] == [4]
    store = Store(sqlite_url, WritebackMapping())
    assert store.ledger_schema is None
    store.dispose()
