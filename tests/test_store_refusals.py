"""What the database refuses stays with the record it concerns: every other record flows.

Real PostgreSQL (a private database per test); the refusals are made by the database itself
(a trigger, a column too narrow, a value PostgreSQL cannot convert, a total beyond its
column), never by a stand-in.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.writeback.mapping import WritebackMapping
from tests._pg_cluster import via
from tests._tcp_proxy import TcpProxy
from tests.test_writeback_support import (
    Tracing,
    aggregates_exact,
    build,
    conversation,
    engine_for,
    genai_attrs,
    ledger_rows,
    message,
    node,
    owner_attrs,
    seed,
    simple_turn,
    wait_until,
)

Factory = Callable[..., Tracing]
HEALTHY_CONVERSATIONS, HEALTHY_MESSAGES = 5, 8


def _execute(url: URL, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _poison_trigger(url: URL, conversation_id: str) -> None:
    """A trigger that refuses every update of one conversation's messages (P0001)."""
    _execute(
        url,
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.conversation_id = '{conversation_id}' THEN "
        "RAISE EXCEPTION 'conversation is frozen'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER poison BEFORE UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION poison()",
    )


def _turns(t: Tracing, healthy: Any, poison: Any) -> dict[str, int]:
    """One turn per message, the poison one in the middle; returns the expected totals."""
    expected: dict[str, int] = {}
    mids = [(cid, mid) for cid, ms in healthy.messages.items() for mid in ms]
    for index, (cid, mid) in enumerate(mids):
        if index == len(mids) // 2:
            simple_turn(t.tracer, poison.all_messages[0], poison.conversations[0], [(50, 5)])
        simple_turn(t.tracer, mid, cid, [(index + 1, 2)])
        expected[mid] = index + 3
    return expected


def _refusal_lines(caplog: pytest.LogCaptureFixture, message_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and message_id in r.getMessage()
    ]


def test_a_trigger_refusing_one_conversation_stops_only_its_record(
    pg_url: URL, make_writeback: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = seed(pg_url, conversations=HEALTHY_CONVERSATIONS, messages=HEALTHY_MESSAGES)
    poison = seed(pg_url, conversations=1, messages=1)
    poisoned = poison.all_messages[0]
    _poison_trigger(pg_url, poison.conversations[0])
    t = make_writeback(pg_url, flush_interval=0.2)
    started = time.monotonic()
    expected = _turns(t, healthy, poison)
    assert wait_until(lambda: t.processor.stats.applied == 40, timeout=10, interval=0.05)
    took = time.monotonic() - started
    assert t.provider.force_flush(10_000)
    assert took < 5 * 0.2 + 2.0, f"40 healthy messages took {took:.2f} s"
    assert {mid: message(pg_url, mid)["total_tokens"] for mid in expected} == expected
    assert message(pg_url, poisoned)["total_tokens"] is None
    stats = t.processor.stats
    assert stats.rejected == {"database_refused": 1}
    assert stats.db_errors == 0
    assert {r["message_id"]: r["status"] for r in ledger_rows(pg_url)}[poisoned] == "rejected"
    (line,) = _refusal_lines(caplog, poisoned)
    assert "conversation is frozen" in line
    assert aggregates_exact(pg_url, touched_only=True) == []


def test_a_restart_replays_the_spool_past_the_poison_record(
    pg_url: URL, make_writeback: Factory, tmp_path: Path
) -> None:
    healthy = seed(pg_url, conversations=HEALTHY_CONVERSATIONS, messages=HEALTHY_MESSAGES)
    poison = seed(pg_url, conversations=1, messages=1)
    _poison_trigger(pg_url, poison.conversations[0])
    with TcpProxy(pg_url.port or 5432) as proxy:
        url = via(pg_url, proxy.port)
        proxy.down()
        down = make_writeback(url, connect_timeout=1)
        expected = _turns(down, healthy, poison)
        down.provider.shutdown()  # the database is unreachable: everything is spooled
        assert down.processor.stats.spooled == 41
        proxy.up()
        up = make_writeback(url)
        assert wait_until(lambda: up.processor.stats.applied == 40, timeout=10)
        assert up.provider.force_flush(10_000)
    assert {mid: message(pg_url, mid)["total_tokens"] for mid in expected} == expected
    assert up.processor.stats.rejected == {"database_refused": 1}
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_a_column_narrower_than_the_mapping_refuses_only_long_values(
    pg_url: URL, make_writeback: Factory
) -> None:
    rows = seed(pg_url, conversations=1, messages=3)
    cid = rows.conversations[0]
    short, long_model, other = rows.messages[cid]
    # The deployment's column is varchar(12); the mapping says 100 (Chatter's).
    _execute(pg_url, "ALTER TABLE messages ALTER COLUMN model_used TYPE varchar(12)")
    t = make_writeback(pg_url)
    build(
        t.tracer,
        node("wf", owner_attrs(short, cid), node("chat", genai_attrs(1, 2, model="gpt-4o"))),
        node("wf", owner_attrs(long_model, cid), node("chat", genai_attrs(3, 4, model="m" * 40))),
        node("wf", owner_attrs(other, cid), node("chat", genai_attrs(5, 6, model="gpt-4o"))),
    )
    assert t.provider.force_flush(10_000)
    assert [message(pg_url, m)["total_tokens"] for m in (short, long_model, other)] == [3, None, 11]
    assert t.processor.stats.rejected == {"database_refused": 1}
    assert conversation(pg_url, cid)["total_tokens"] == 14
    assert aggregates_exact(pg_url) == []


def test_usage_is_written_when_the_metadata_cannot_be_merged(
    pg_url: URL, make_writeback: Factory
) -> None:
    # json (not jsonb) keeps "\u0000"; PostgreSQL refuses to convert it to jsonb.
    rows = seed(pg_url, conversations=1, messages=1, extra_metadata={"note": "a\x00b"})
    plain = seed(pg_url, conversations=1, messages=1, extra_metadata={"k": "v"})
    cid, mid = rows.conversations[0], rows.all_messages[0]
    t = make_writeback(pg_url)
    simple_turn(t.tracer, mid, cid, [(10, 5)])
    simple_turn(t.tracer, plain.all_messages[0], plain.conversations[0], [(1, 1)])
    assert t.provider.force_flush(10_000)
    row = message(pg_url, mid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (10, 5, 15)
    assert (row["model_used"], row["provider_used"], row["finish_reason"]) == (
        "offline-echo-1",
        "offline",
        "stop",
    )
    assert row["cost"] is not None and row["response_time_ms"] is not None
    assert row["extra_metadata"] == {"note": "a\x00b"}  # left exactly as the app wrote it
    merged = message(pg_url, plain.all_messages[0])["extra_metadata"]
    assert merged["k"] == "v" and len(merged["trace_id"]) == 32
    assert t.processor.stats.rejected == {"metadata_unmergeable": 1}
    assert t.processor.stats.applied == 2
    assert conversation(pg_url, cid)["total_tokens"] == 15
    assert aggregates_exact(pg_url) == []


def test_a_total_beyond_its_column_is_counted_and_its_messages_still_get_usage(
    pg_url: URL, make_writeback: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    rows = seed(pg_url, conversations=2, messages=2)
    full, healthy = rows.conversations
    history, latest = rows.messages[full]
    near = 2**31 - 100
    _execute(
        pg_url,
        f"UPDATE messages SET total_tokens = {near} WHERE id = '{history}'",
        f"UPDATE conversations SET total_tokens = {near}, message_count = 2 WHERE id = '{full}'",
    )
    t = make_writeback(pg_url)
    simple_turn(t.tracer, latest, full, [(100, 50)])
    for mid in rows.messages[healthy]:
        simple_turn(t.tracer, mid, healthy, [(7, 3)])
    assert t.provider.force_flush(10_000)
    assert message(pg_url, latest)["total_tokens"] == 150
    assert conversation(pg_url, full)["total_tokens"] == near  # as it was, never wrapped
    assert conversation(pg_url, healthy)["total_tokens"] == 20
    stats = t.processor.stats
    assert stats.applied == 3
    assert stats.rejected == {"aggregate_out_of_range": 1}
    (line,) = [r.getMessage() for r in caplog.records if full in r.getMessage()]
    assert "do not fit" in line
    # The next record of that conversation is not refused either.
    simple_turn(t.tracer, latest, full, [(1, 1)])
    assert t.provider.force_flush(10_000)
    assert message(pg_url, latest)["total_tokens"] == 152
    assert t.processor.stats.rejected == {"aggregate_out_of_range": 2}


def test_a_span_naming_a_message_of_another_conversation_is_rejected(
    pg_url: URL, make_writeback: Factory
) -> None:
    victim = seed(pg_url, conversations=1, messages=1)
    attacker = seed(pg_url, conversations=1, messages=1)
    victim_mid = victim.all_messages[0]
    t = make_writeback(pg_url)
    # The span says "my conversation" but names the victim's message.
    simple_turn(t.tracer, victim_mid, attacker.conversations[0], [(10**6, 10**6)])
    simple_turn(t.tracer, attacker.all_messages[0], attacker.conversations[0], [(2, 2)])
    assert t.provider.force_flush(10_000)
    assert message(pg_url, victim_mid)["total_tokens"] is None
    assert conversation(pg_url, victim.conversations[0])["total_tokens"] == 0
    assert message(pg_url, attacker.all_messages[0])["total_tokens"] == 4
    assert t.processor.stats.rejected == {"conversation_mismatch": 1}
    assert {r["message_id"]: r["status"] for r in ledger_rows(pg_url)} == {
        victim_mid: "rejected",
        attacker.all_messages[0]: "applied",
    }


def test_a_span_naming_a_message_of_another_user_is_rejected(
    pg_url: URL, make_writeback: Factory
) -> None:
    victim = seed(pg_url, conversations=1, messages=1)
    attacker = seed(pg_url, conversations=1, messages=1)
    victim_mid, victim_cid = victim.all_messages[0], victim.conversations[0]
    t = make_writeback(pg_url)

    def turn(mid: str, cid: str, user: str, tokens: int) -> None:
        attrs = {**owner_attrs(mid, cid), c.CHATTER_USER_ID: user}
        build(t.tracer, node("wf", attrs, node("chat", genai_attrs(tokens, tokens))))

    # The right conversation id for the message, but the span is the attacker's turn.
    turn(victim_mid, victim_cid, attacker.user_id, 10**6)
    turn(attacker.all_messages[0], attacker.conversations[0], attacker.user_id, 3)
    assert t.provider.force_flush(10_000)
    assert message(pg_url, victim_mid)["total_tokens"] is None
    assert message(pg_url, attacker.all_messages[0])["total_tokens"] == 6
    assert t.processor.stats.rejected == {"user_mismatch": 1}
    turn(victim_mid, victim_cid, victim.user_id, 2)  # the victim's own turn is applied
    assert t.provider.force_flush(10_000)
    assert message(pg_url, victim_mid)["total_tokens"] == 4
    assert aggregates_exact(pg_url) == []


def test_row_level_security_refusing_one_conversation_stops_only_its_record(
    pg_url: URL, pg_server_url: URL, make_writeback: Factory
) -> None:
    healthy = seed(pg_url, conversations=2, messages=3)
    poison = seed(pg_url, conversations=1, messages=1)
    role = f"chatter_otel_t_{uuid.uuid4().hex[:8]}"
    _execute(
        pg_url,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
        f'GRANT CREATE ON DATABASE "{pg_url.database}" TO {role}',
        "ALTER TABLE messages ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY readable ON messages FOR SELECT USING (true)",
        "CREATE POLICY frozen ON messages FOR UPDATE USING (true) "
        f"WITH CHECK (conversation_id <> '{poison.conversations[0]}')",
    )
    try:
        t = make_writeback(pg_url.set(username=role))
        expected = _turns(t, healthy, poison)
        assert t.provider.force_flush(10_000)
        assert {mid: message(pg_url, mid)["total_tokens"] for mid in expected} == expected
        assert message(pg_url, poison.all_messages[0])["total_tokens"] is None
        assert t.processor.stats.rejected == {"database_refused": 1}
        t.provider.shutdown()
    finally:
        _execute(pg_url, f"REASSIGN OWNED BY {role} TO postgres", f"DROP OWNED BY {role}")
        _execute(pg_server_url, f"DROP ROLE {role}")


def test_a_ledger_the_database_refuses_to_set_up_is_a_configuration_error_not_a_rejection(
    pg_url: URL, make_writeback: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A mapped column the table lacks: nothing is bisected or rejected, the records wait
    for the configuration to be fixed, and the log says what the database refused."""
    data = seed(pg_url, conversations=1, messages=1)
    t = make_writeback(pg_url, mapping=WritebackMapping(message_model="no_such_column"))
    simple_turn(t.tracer, data.all_messages[0], data.conversations[0], [(3, 4)])
    with caplog.at_level(logging.ERROR, logger="chatter_otel.writeback"):
        assert not t.provider.force_flush(5_000)
    lines = [r for r in caplog.records if "refused to set up the ledger" in r.getMessage()]
    assert len(lines) == 1
    assert "no_such_column" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one line, no traceback
    assert t.processor.stats.rejected == {}
    assert t.processor.stats.applied == 0
    assert t.processor.stats.lost == 0
    assert message(pg_url, data.all_messages[0])["total_tokens"] is None


def test_a_rejected_record_leaves_the_journal_so_no_later_process_replays_it(
    pg_url: URL, make_writeback: Factory, tmp_path: Path
) -> None:
    victim = seed(pg_url, conversations=1, messages=1)
    attacker = seed(pg_url, conversations=1, messages=1)
    t = make_writeback(pg_url)
    simple_turn(t.tracer, victim.all_messages[0], attacker.conversations[0], [(5, 5)])
    assert t.provider.force_flush(10_000)
    assert t.processor.stats.rejected == {"conversation_mismatch": 1}
    t.provider.shutdown()
    assert list((tmp_path / "spool").glob("*.jsonl")) == []
    later = make_writeback(pg_url)
    assert later.provider.force_flush(10_000)
    assert later.processor.stats.replayed == 0
    assert later.processor.stats.rejected == {}
