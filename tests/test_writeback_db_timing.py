"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: when
the message row is written, which turns share a transaction, and the message that never
appears.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from sqlalchemy.engine import URL

from chatter_otel.service.models import new_ulid
from tests._writeback_db import Factory, flush
from tests.test_writeback_support import (
    add_message,
    aggregates_exact,
    conversation,
    genai_attrs,
    ledger_rows,
    message,
    owner_attrs,
    seed,
    simple_turn,
    wait_until,
)


def test_row_committed_two_seconds_after_the_span(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    late_mid = new_ulid()
    t = make(message_ttl=30.0)
    simple_turn(t.tracer, late_mid, cid, [(12, 3)])
    assert not t.provider.force_flush(2000)  # the row is not there: reported, not dropped
    time.sleep(2.0)
    assert t.processor.stats.applied == 0
    assert message(db_url, rows.messages[cid][0])["total_tokens"] is None
    add_message(db_url, cid, late_mid, seq=1)
    assert wait_until(lambda: message(db_url, late_mid)["total_tokens"] == 15, timeout=10)
    assert flush(t)
    stats = t.processor.stats
    assert stats.retried >= 2 and stats.orphaned == 0 and stats.applied == 1
    assert conversation(db_url, cid)["message_count"] == 2
    assert aggregates_exact(db_url) == []


def test_turns_ending_within_one_flush_interval_share_one_transaction(
    db_url: URL, make: Factory
) -> None:
    # A transaction costs the same for 1 record or 500: writing each small trickle of
    # records as it arrives would cost the application CPU on every turn.
    rows = seed(db_url, messages=20)
    cid = rows.conversations[0]
    t = make(flush_interval=3.0)
    steps: list[str] = []
    t.processor.store.fault = steps.append
    for mid in rows.messages[cid]:
        simple_turn(t.tracer, mid, cid, [(12, 3)])
        time.sleep(0.02)
    assert wait_until(lambda: t.processor.stats.applied == 20, timeout=10)
    assert steps.count("commit") == 1
    assert aggregates_exact(db_url) == []


def test_flush_interval_counts_from_the_turns_end_not_from_its_arrival(
    db_url: URL, make: Factory
) -> None:
    # A turn whose spans reach the processor late (exported late, replayed) has waited its
    # interval already: it is written at once, not one more interval later.
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make(flush_interval=60.0)
    ended = time.time_ns() - 61 * 10**9
    owner = t.tracer.start_span(
        "invoke_workflow chatter", attributes=owner_attrs(mid, cid), start_time=ended
    )
    call = t.tracer.start_span(
        "chat m", trace.set_span_in_context(owner), attributes=genai_attrs(12, 3), start_time=ended
    )
    call.end(end_time=ended + 1000)
    owner.end(end_time=ended + 2000)
    assert wait_until(lambda: t.processor.stats.applied == 1, timeout=10)
    assert message(db_url, mid)["total_tokens"] == 15


def test_message_that_never_appears_is_orphaned(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    ghost = new_ulid()
    t = make(message_ttl=0.5)
    simple_turn(t.tracer, ghost, cid, [(12, 3)])
    simple_turn(t.tracer, rows.messages[cid][0], cid, [(1, 1)])
    assert wait_until(lambda: t.processor.stats.orphaned == 1, timeout=10)
    assert flush(t)
    ledger = {r["message_id"]: r for r in ledger_rows(db_url)}
    assert ledger[ghost]["status"] == "orphaned"
    assert ledger[ghost]["total_tokens"] == 15
    assert ledger[rows.messages[cid][0]]["status"] == "applied"
    assert conversation(db_url, cid)["total_tokens"] == 2
    # The row shows up after all and the span is replayed: the orphan is promoted.
    add_message(db_url, cid, ghost, seq=1)
    second = make(message_ttl=0.5)
    for s in t.exported.get_finished_spans():
        second.processor.on_end(s)
    assert flush(second)
    assert message(db_url, ghost)["total_tokens"] == 15
    assert {r["status"] for r in ledger_rows(db_url)} == {"applied"}
    assert aggregates_exact(db_url) == []


def test_a_flush_names_the_message_row_it_waits_for(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    ghost = new_ulid()
    t = make()
    simple_turn(t.tracer, ghost, cid, [(2, 2)])
    assert flush(t) is False
    assert t.processor.last_flush_failure == f"1 message row(s) not there yet ({ghost})"
    add_message(db_url, cid, ghost, seq=1)
    assert flush(t) is True
    assert t.processor.last_flush_failure is None
    assert message(db_url, ghost)["total_tokens"] == 4
