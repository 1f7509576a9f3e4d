"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: every
call is counted exactly once, through replays and failures between statements.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests._writeback_db import Factory, close, flush, flush_until_written
from tests.test_writeback_support import (
    aggregates_exact,
    conversation,
    engine_for,
    ledger_rows,
    message,
    price,
    seed,
    simple_turn,
)


def test_replaying_the_same_spans_changes_nothing(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=2, messages=3)
    t = make()
    for cid, mids in rows.messages.items():
        for index, mid in enumerate(mids):
            simple_turn(t.tracer, mid, cid, [(10 * (index + 1), index + 1)] * 2)
    assert flush(t)
    spans = t.exported.get_finished_spans()

    def snapshot() -> tuple[Any, ...]:
        return (
            [message(db_url, m) for m in rows.all_messages],
            [conversation(db_url, cid) for cid in rows.conversations],
            sorted((r["trace_id"], r["span_id"], r["status"]) for r in ledger_rows(db_url)),
        )

    before = snapshot()
    assert len(before[2]) == 6
    for s in spans:  # the same processor sees every span again
        t.processor.on_end(s)
    assert flush(t)
    second = make()  # a new processor (e.g. after a restart) replays them all
    for s in spans:
        second.processor.on_end(s)
    assert flush(second)
    assert second.processor.stats.applied == 6
    assert snapshot() == before
    assert aggregates_exact(db_url) == []


def test_aggregates_are_recomputed_from_the_rows(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=1, messages=2, user_messages=2)
    cid = rows.conversations[0]
    engine = engine_for(db_url)
    with engine.begin() as conn:  # what Chatter's delta updates leave behind
        conn.execute(
            text(
                "UPDATE conversations SET total_tokens = 999, total_cost = 5, message_count = 1 "
                "WHERE id = :id"
            ),
            {"id": cid},
        )
        conn.execute(text("UPDATE messages SET total_tokens = 0, cost = 0"))
    engine.dispose()
    t = make()
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(3, 4)])
    assert flush(t)
    conv = conversation(db_url, cid)
    # The other assistant message still has Chatter's bogus 0: it is a row like any other.
    assert (conv["total_tokens"], conv["message_count"]) == (7, 4)
    assert close(conv["total_cost"], price(3, 4))
    assert aggregates_exact(db_url) == []


@pytest.mark.parametrize(
    "stage",
    ["messages", "lock", "ledger", "sums", "messages_update", "conversations_update", "commit"],
)
def test_failure_between_statements_converges(db_url: URL, make: Factory, stage: str) -> None:
    rows = seed(db_url, conversations=2, messages=4)
    t = make()
    failures: list[str] = []

    def fault(step: str) -> None:
        if step == stage and len(failures) < 3:
            failures.append(step)
            raise ConnectionError(f"injected failure before {step}")

    t.processor.store.fault = fault
    expected = 0
    for cid, mids in rows.messages.items():
        for index, mid in enumerate(mids):
            simple_turn(t.tracer, mid, cid, [(index + 1, 1)])
            expected += index + 2
    assert flush_until_written(t)
    if stage == "lock" and not t.processor.store.postgres:
        assert failures == []  # SQLite has no lock statement: BEGIN IMMEDIATE serializes
    else:
        assert failures == [stage] * 3
        assert t.processor.stats.db_errors == 3
    total = sum(conversation(db_url, cid)["total_tokens"] for cid in rows.conversations)
    assert total == expected
    assert aggregates_exact(db_url) == []
    assert all(r["status"] == "applied" for r in ledger_rows(db_url))
