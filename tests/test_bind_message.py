"""Ownership without a pre-generated id: the app names its row with ``bind_message`` (12.4)."""

from __future__ import annotations

import contextvars
import logging
from decimal import Decimal

import pytest
from langchain_core.messages import HumanMessage
from opentelemetry.trace import Span
from sqlalchemy import insert
from sqlalchemy.engine import URL

import chatter_otel
from chatter_otel import conventions as c
from chatter_otel.service.llm import OfflineChatModel
from chatter_otel.service.models import Message, MessageRole, new_ulid
from chatter_otel.testing import capture_telemetry
from tests.test_writeback_support import conversation, engine_for, message, price, seed


def create_message_the_apps_way(url: URL, conversation_id: str) -> str:
    """Chatter's create-and-save helper: it mints the ULID itself, after the workflow."""
    message_id = new_ulid()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Message),
            [
                {
                    "id": message_id,
                    "conversation_id": conversation_id,
                    "role": MessageRole.ASSISTANT,
                    "content": "You said: hello there",
                    "sequence_number": 0,
                }
            ],
        )
    engine.dispose()
    return message_id


async def test_a_message_created_after_the_turn_gets_its_usage(pg_url: URL) -> None:
    cid = seed(pg_url, conversations=1, messages=0).conversations[0]
    model = OfflineChatModel()
    url = pg_url.render_as_string(hide_password=False)
    with capture_telemetry(writeback_url=url, writeback_flush_interval_s=0.1) as cap:
        async with (
            chatter_otel.workflow_span("chat", conversation_id=cid),
            chatter_otel.model_span(provider="offline", model=model.model_name) as call,
        ):
            call.record(await model.ainvoke([HumanMessage("hello there")]))
        message_id = create_message_the_apps_way(pg_url, cid)
        assert chatter_otel.bind_message(message_id)  # the one line
        assert cap.telemetry.force_flush(10_000)
    # "hello there": 2 tokens + 3 per message in, "You said: hello there": 5 tokens out
    row = message(pg_url, message_id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (5, 5, 10)
    assert Decimal(repr(row["cost"])) == price(5, 5) == Decimal("0.00001")
    assert (row["model_used"], row["provider_used"], row["finish_reason"]) == (
        "offline-echo-1",
        "offline",
        "stop",
    )
    totals = conversation(pg_url, cid)
    assert (totals["total_tokens"], totals["message_count"]) == (10, 1)
    assert Decimal(repr(totals["total_cost"])) == Decimal("0.00001")


def test_only_an_outermost_turn_without_message_id_waits_for_a_bind() -> None:
    with capture_telemetry() as cap:
        with (
            chatter_otel.workflow_span("outer", message_id=new_ulid()),
            chatter_otel.workflow_span("inner"),
        ):
            pass
        with chatter_otel.workflow_span("alone"):
            pass
    marks = {s.name: (s.attributes or {}).get(c.CHATTER_MESSAGE_UNBOUND) for s in cap.spans()}
    assert marks == {
        "invoke_workflow inner": None,
        "invoke_workflow outer": None,
        "invoke_workflow alone": True,
    }


def test_bind_message_binds_the_last_turn_once(caplog: pytest.LogCaptureFixture) -> None:
    mid = new_ulid()
    with capture_telemetry() as cap, caplog.at_level(logging.WARNING, logger="chatter_otel"):
        turn = contextvars.Context().run(_bind_in_a_fresh_context, mid)
        binds = [s for s in cap.spans() if s.name == "bind_message"]
    (bound,) = binds
    assert bound.parent is not None
    assert bound.parent.span_id == turn.get_span_context().span_id
    assert dict(bound.attributes or {}) == {c.CHATTER_MESSAGE_BIND: True, c.CHATTER_MESSAGE_ID: mid}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3


def _bind_in_a_fresh_context(mid: str) -> Span:
    assert not chatter_otel.bind_message(mid)  # no turn yet
    with chatter_otel.workflow_span("chat") as turn:
        pass
    assert not chatter_otel.bind_message("not-a-ulid")
    assert chatter_otel.bind_message(mid)
    assert not chatter_otel.bind_message(new_ulid())  # already bound
    return turn


def test_a_new_turn_forgets_an_earlier_unbound_one() -> None:
    def body() -> bool:
        with chatter_otel.workflow_span("not bound by its request"):
            pass
        with chatter_otel.workflow_span("the next request's turn", message_id=new_ulid()):
            pass
        return chatter_otel.bind_message(new_ulid())

    with capture_telemetry():
        assert contextvars.Context().run(body) is False
