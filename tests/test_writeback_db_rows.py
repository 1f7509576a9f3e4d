"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: what
lands in the database (sums and the last call of a turn, both instrumentations, duplicate
spans, conventions, costs, missing usage, nested owners, late children).
"""

from __future__ import annotations

from decimal import Decimal

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from tests._writeback_db import Factory, close, flush
from tests.test_writeback_support import (
    ECHO,
    OFFLINE,
    aggregates_exact,
    build,
    conversation,
    genai_attrs,
    message,
    node,
    openinference_attrs,
    owner_attrs,
    price,
    seed,
    simple_turn,
    wait_until,
)

Attrs = dict[str, AttributeValue]


def test_turn_with_two_calls_stores_sums_and_the_last_call(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1, extra_metadata={"app": "kept", "nested": {"a": [1, 2]}})
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    chain = {c.OI_SPAN_KIND: "CHAIN"}
    build(
        t.tracer,
        node(
            "invoke_workflow chatter",
            owner_attrs(mid, cid),
            node("node model", chain, node("chat 1", genai_attrs(100, 20, finish="tool_calls"))),
            node("execute_tool search"),
            node(
                "node model",
                chain,
                node("chat 2", genai_attrs(1000, 200, model="big-model", cost=0.25)),
            ),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    owner = next(s for s in t.exported.get_finished_spans() if s.name.startswith("invoke"))
    assert owner.context is not None and owner.start_time and owner.end_time
    assert row["prompt_tokens"] == 1100
    assert row["completion_tokens"] == 220
    assert row["total_tokens"] == 1320
    assert close(row["cost"], price(100, 20) + Decimal("0.25"))
    assert row["model_used"] == "big-model"
    assert row["provider_used"] == OFFLINE
    assert row["finish_reason"] == "stop"
    expected_ms = (owner.end_time - owner.start_time + 500_000) // 1_000_000
    assert row["response_time_ms"] == expected_ms
    assert row["extra_metadata"] == {
        "app": "kept",
        "nested": {"a": [1, 2]},
        "trace_id": f"{owner.context.trace_id:032x}",
        "span_id": f"{owner.context.span_id:016x}",
    }
    conv = conversation(db_url, cid)
    assert conv["total_tokens"] == 1320
    assert close(conv["total_cost"], row["cost"])
    assert conv["message_count"] == 1
    assert conv["last_message_at"] is not None
    assert aggregates_exact(db_url) == []
    stats = t.processor.stats
    assert stats.applied == 1 and stats.rejected_total == 0 and stats.lost == 0


def test_both_instrumentations_at_once_count_each_call_once(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    first, second = rows.messages[cid]
    t = make()
    # Our chat span wrapping openinference's LLM span for the same provider call.
    simple_turn(t.tracer, first, cid, [(100, 20), (300, 40)], nested_openinference=True)
    # And openinference's LLM span wrapping ours (other order of instrumentation).
    build(
        t.tracer,
        node(
            "invoke_workflow",
            owner_attrs(second, cid),
            node("ChatOpenAI", openinference_attrs(50, 5), node("chat", genai_attrs(50, 5))),
        ),
    )
    assert flush(t)
    assert message(db_url, first)["total_tokens"] == 460
    assert message(db_url, first)["prompt_tokens"] == 400
    assert close(message(db_url, first)["cost"], price(400, 60))
    assert message(db_url, second)["total_tokens"] == 55
    assert conversation(db_url, cid)["total_tokens"] == 515
    assert t.processor.stats.rollups_ignored == 3
    assert aggregates_exact(db_url) == []


def test_duplicate_spans_complete_each_other(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    # Ours knows the cost and the finish reason; openinference's (inner, counted) does not.
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(mid, cid),
            node(
                "chat",
                genai_attrs(40, 4, model="gpt-x", provider="openai", cost=0.75, finish="length"),
                node("ChatOpenAI", openinference_attrs(40, 4, model="gpt-x", provider="")),
            ),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert (row["total_tokens"], row["finish_reason"]) == (44, "length")
    assert (row["model_used"], row["provider_used"]) == ("gpt-x", "openai")
    assert close(row["cost"], 0.75)


def test_parent_roll_ups_are_ignored(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    # The owner itself and a LangGraph CHAIN span both carry the sum of their children.
    rollup = {c.GEN_AI_USAGE_INPUT_TOKENS: 30, c.GEN_AI_USAGE_OUTPUT_TOKENS: 3}
    build(
        t.tracer,
        node(
            "invoke_workflow",
            {**owner_attrs(mid, cid), **rollup},
            node(
                "graph",
                {c.OI_TOKEN_COUNT_PROMPT: 30, c.OI_TOKEN_COUNT_COMPLETION: 3},
                node("chat a", genai_attrs(10, 1)),
                node("chat b", genai_attrs(20, 2)),
            ),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (30, 3, 33)
    assert close(row["cost"], price(30, 3))
    assert t.processor.stats.rollups_ignored == 2


def test_legacy_and_openinference_conventions(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    legacy, openinference = rows.messages[cid]
    t = make()
    openllmetry: Attrs = {
        c.LEGACY_GEN_AI_SYSTEM: OFFLINE,
        c.GEN_AI_RESPONSE_MODEL: ECHO,
        c.LEGACY_GEN_AI_USAGE_PROMPT_TOKENS: 70,
        c.LEGACY_GEN_AI_USAGE_COMPLETION_TOKENS: 7,
        c.LEGACY_GEN_AI_USAGE_TOTAL_TOKENS: 77,
    }
    llm: Attrs = {
        **openinference_attrs(5, 9),
        c.OI_LLM_PROVIDER: "",  # empty: falls through to llm.system
        c.OI_LLM_SYSTEM: OFFLINE,
    }
    build(
        t.tracer,
        # No conversation id on this owner: the message row says which one.
        node("workflow", owner_attrs(legacy), node("openai.chat", openllmetry)),
        node(
            "workflow",
            owner_attrs(openinference, cid),
            node("node", {c.OI_SPAN_KIND: "CHAIN"}, node("ChatOpenAI", llm)),
        ),
    )
    assert flush(t)
    a, b = message(db_url, legacy), message(db_url, openinference)
    assert (a["prompt_tokens"], a["completion_tokens"], a["total_tokens"]) == (70, 7, 77)
    assert (a["provider_used"], a["model_used"]) == (OFFLINE, ECHO)
    assert close(a["cost"], price(70, 7))
    assert (b["prompt_tokens"], b["completion_tokens"], b["total_tokens"]) == (5, 9, 14)
    assert b["model_used"] == ECHO
    assert close(b["cost"], price(5, 9))
    assert conversation(db_url, cid)["total_tokens"] == 91


def test_total_only_usage_is_stored_and_left_unpriced(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    llm: Attrs = {c.OI_LLM_MODEL_NAME: ECHO, c.OI_TOKEN_COUNT_TOTAL: 42}
    build(t.tracer, node("workflow", owner_attrs(mid, cid), node("llm", llm)))
    assert flush(t)
    row = message(db_url, mid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (None, None, 42)
    assert row["cost"] is None
    assert row["extra_metadata"]["cost_unpriced"] is True


def test_cost_from_span_priced_and_unpriced(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=4)
    cid = rows.conversations[0]
    from_span, priced, unpriced, mixed = rows.messages[cid]
    t = make()
    unknown = "no-such-model-xyz"
    build(
        t.tracer,
        node("wf", owner_attrs(from_span, cid), node("chat", genai_attrs(1000, 1000, cost=0.125))),
        node("wf", owner_attrs(priced, cid), node("chat", genai_attrs(1000, 1000))),
        node(
            "wf", owner_attrs(unpriced, cid), node("chat", genai_attrs(1000, 1000, model=unknown))
        ),
        node(
            "wf",
            owner_attrs(mixed, cid),
            node("chat", genai_attrs(10, 10)),
            node("chat", genai_attrs(10, 10, model=unknown)),
        ),
    )
    assert flush(t)
    assert close(message(db_url, from_span)["cost"], 0.125)
    assert close(message(db_url, priced)["cost"], price(1000, 1000))
    for mid in (unpriced, mixed):
        row = message(db_url, mid)
        assert row["cost"] is None
        assert row["extra_metadata"]["cost_unpriced"] is True
        assert row["total_tokens"] in (2000, 40)
    assert "cost_unpriced" not in message(db_url, priced)["extra_metadata"]
    conv = conversation(db_url, cid)
    assert close(conv["total_cost"], Decimal("0.125") + price(1000, 1000))
    assert conv["total_tokens"] == 2000 * 3 + 40
    assert aggregates_exact(db_url) == []


def test_missing_usage_stays_null_and_is_marked(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2, extra_metadata={"k": "v"})
    cid = rows.conversations[0]
    missing, later = rows.messages[cid]
    t = make()
    interrupted_stream = genai_attrs(None, None)
    build(t.tracer, node("wf", owner_attrs(missing, cid), node("chat", interrupted_stream)))
    assert flush(t)
    row = message(db_url, missing)
    assert [row[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost")] == [
        None
    ] * 4
    assert row["model_used"] is None  # a call without usage is not a counted call
    assert row["response_time_ms"] is not None
    assert row["extra_metadata"]["usage_missing"] is True
    assert row["extra_metadata"]["k"] == "v"
    # A second owner of the same message (a retry) brings usage: the marker goes away.
    build(t.tracer, node("wf retry", owner_attrs(missing, cid), node("chat", genai_attrs(8, 2))))
    simple_turn(t.tracer, later, cid, [(1, 1)])
    assert flush(t)
    row = message(db_url, missing)
    assert row["total_tokens"] == 10
    assert "usage_missing" not in row["extra_metadata"]
    assert row["extra_metadata"]["k"] == "v"
    assert conversation(db_url, cid)["total_tokens"] == 12
    assert aggregates_exact(db_url) == []


def test_owner_without_llm_calls_and_non_object_metadata(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1, extra_metadata=["not", "an", "object"])
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    build(t.tracer, node("wf", owner_attrs(mid, cid)))
    assert flush(t)
    row = message(db_url, mid)
    assert row["extra_metadata"] == ["not", "an", "object"]  # never destroyed
    assert row["total_tokens"] is None and row["response_time_ms"] is not None


def test_nested_owners_split_usage(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    outer, inner = rows.messages[cid]
    t = make()
    build(
        t.tracer,
        node(
            "turn",
            owner_attrs(outer, cid),
            node("chat", genai_attrs(100, 10)),
            node("sub-agent", owner_attrs(inner, cid), node("chat", genai_attrs(7, 3))),
        ),
    )
    assert flush(t)
    assert message(db_url, outer)["total_tokens"] == 110
    assert message(db_url, inner)["total_tokens"] == 10
    assert conversation(db_url, cid)["total_tokens"] == 120


def test_child_ending_after_its_owner_is_added(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    owner = t.tracer.start_span("wf", attributes=owner_attrs(mid, cid))
    ctx = trace.set_span_in_context(owner)
    with t.tracer.start_as_current_span("chat", context=ctx, attributes=genai_attrs(10, 1)):
        pass
    streaming = t.tracer.start_span("chat stream", context=ctx, attributes=genai_attrs(40, 4))
    owner.end()
    assert wait_until(lambda: message(db_url, mid)["total_tokens"] == 11)
    streaming.end()  # long after the owner was written
    assert wait_until(lambda: message(db_url, mid)["total_tokens"] == 55)
    assert flush(t)
    assert t.processor.stats.late == 1
    assert close(message(db_url, mid)["cost"], price(50, 5))
    assert aggregates_exact(db_url) == []
