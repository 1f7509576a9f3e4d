"""Write-back behaviour end to end: real SDK spans in, Chatter rows out, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import sampling as sdk_sampling
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.util.types import AttributeValue
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import AlwaysRecordSampler, WritebackMapping, WritebackSpanProcessor
from tests._pg_cluster import via
from tests._tcp_proxy import TcpProxy
from tests.test_writeback_support import (
    ECHO,
    OFFLINE,
    Tracing,
    add_message,
    aggregates_exact,
    build,
    conversation,
    engine_for,
    genai_attrs,
    ledger_name,
    ledger_rows,
    message,
    node,
    openinference_attrs,
    owner_attrs,
    price,
    seed,
    simple_turn,
    tracing,
    wait_until,
)

PRICING = Pricing()

Factory = Callable[..., Tracing]
Attrs = dict[str, AttributeValue]


@pytest.fixture
def make(db_url: URL, tmp_path: Path) -> Iterator[Factory]:
    """Builds processors on ``db_url`` with fast timings; shuts them all down afterwards."""
    made: list[Tracing] = []

    def factory(url: URL | str | None = None, **kwargs: Any) -> Tracing:
        options: dict[str, Any] = {
            "pricing": PRICING,
            "flush_interval": 0.05,
            "late_span_grace": 0.05,
            "spool_path": tmp_path / "spool",
            "backoff": (0.02, 0.2),
        }
        options.update(kwargs)
        sampler = options.pop("sampler", None)
        processor = WritebackSpanProcessor(url if url is not None else db_url, **options)
        t = tracing(processor, sampler)
        made.append(t)
        return t

    yield factory
    for t in made:
        t.provider.shutdown()


def flush(t: Tracing, timeout_ms: int = 20_000) -> bool:
    return t.provider.force_flush(timeout_ms)


def flush_until_written(t: Tracing, timeout: float = 30.0) -> bool:
    """A flush says False at once when the database fails during it: ask again (bounded)."""
    return wait_until(lambda: t.provider.force_flush(5_000), timeout=timeout, interval=0.05)


def money(value: Any) -> Decimal:
    return Decimal(repr(float(value)))


def close(a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15)


# --- what lands in the database -----------------------------------------------------------


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


def test_hostile_strings_are_bound_or_refused(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=3)
    cid = rows.conversations[0]
    injected, control, long_name = rows.messages[cid]
    t = make()
    sql = "x'); DROP TABLE messages; --"
    quoted = "p\"'\\"
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(injected, cid),
            node("chat", genai_attrs(1, 1, model=sql, provider=quoted)),
        ),
        node(
            "wf",
            owner_attrs(control, cid),
            node("chat", genai_attrs(1, 1, model="bad\x00name", provider="\ud800")),
        ),
        node(
            "wf",
            owner_attrs(long_name, cid),
            node("chat", genai_attrs(1, 1, model="m" * 5000, finish="f" * 51)),
        ),
    )
    assert flush(t)
    assert message(db_url, injected)["model_used"] == sql
    assert message(db_url, injected)["provider_used"] == "p\"'\\"
    row = message(db_url, control)
    assert (row["model_used"], row["provider_used"], row["total_tokens"]) == (None, None, 2)
    row = message(db_url, long_name)
    assert row["model_used"] == "m" * 100 and row["finish_reason"] == "f" * 50
    assert t.processor.stats.rejected["text_invalid"] == 2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "tokens_negative"),
        (float("nan"), "tokens_not_finite"),
        (float("inf"), "tokens_not_finite"),
        ("12", "tokens_not_integer"),
        (True, "tokens_not_integer"),
        (1.5, "tokens_not_integer"),
        (10**9 + 1, "tokens_too_large"),
        (2**63 - 1, "tokens_too_large"),
    ],
)
def test_bad_token_counts_are_rejected(db_url: URL, make: Factory, value: Any, reason: str) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(mid, cid),
            # The rejected span still hides the roll-up role: its inner call counts once.
            node("chat bad", genai_attrs(value, 5), node("inner", openinference_attrs(3, 3))),
            node("chat good", genai_attrs(7, 1)),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert row["total_tokens"] == 14  # the inner call (6) and the good call (8)
    assert t.processor.stats.rejected == {reason: 1}
    assert aggregates_exact(db_url) == []


def test_bad_costs_and_ids_are_rejected(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    mid, other = rows.messages[cid]
    t = make()
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(mid, "not-a-ulid"),
            node("chat", genai_attrs(10, 10, cost=-1.0)),
            node("chat", genai_attrs(10, 10, cost=float("nan"))),
        ),
    )
    for bad_id in ("not-a-ulid", other.lower() + "x", "8" + other[1:], "' OR 1=1 --", 42):
        build(t.tracer, node("wf", owner_attrs(bad_id, cid), node("chat", genai_attrs(9, 9))))
    # An owner with a bad id still owns its subtree: its usage is not given to an outer owner.
    build(
        t.tracer,
        node(
            "outer",
            owner_attrs(other, cid),
            node("inner", owner_attrs("bad"), node("chat", genai_attrs(1000, 1000))),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert row["total_tokens"] == 40
    assert close(row["cost"], price(20, 20))  # priced instead of the refused span values
    assert message(db_url, other)["total_tokens"] is None
    rejected = t.processor.stats.rejected
    assert rejected == {"conversation_id_invalid": 1, "cost_invalid": 2, "message_id_invalid": 6}
    assert aggregates_exact(db_url) == []


# --- exactly once ---------------------------------------------------------------------------


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


# --- sampling -------------------------------------------------------------------------------


def test_one_percent_sampling_keeps_every_total_exact(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=4, messages=50)
    t = make(sampler=AlwaysRecordSampler(ParentBased(TraceIdRatioBased(0.01))))
    expected: dict[str, int] = {}
    for cid, mids in rows.messages.items():
        expected[cid] = 0
        for index, mid in enumerate(mids):
            calls = [(index + 1, 2), (5, index % 7)]
            simple_turn(t.tracer, mid, cid, calls, nested_openinference=index % 2 == 0)
            expected[cid] += sum(a + b for a, b in calls)
    assert flush(t)
    exported = t.exported.get_finished_spans()
    assert len({s.context.trace_id for s in exported if s.context}) < 20  # ~2 of 200 turns
    assert all(s.context is not None and s.context.trace_flags.sampled for s in exported)
    assert t.processor.stats.spans_seen == 200 * 5 + 100 * 2
    for cid in rows.conversations:
        assert conversation(db_url, cid)["total_tokens"] == expected[cid]
        assert conversation(db_url, cid)["message_count"] == 50
    for mid in rows.all_messages:
        assert message(db_url, mid)["total_tokens"] is not None
    assert aggregates_exact(db_url) == []


def test_sdk_always_record_sampler_drops_start_attributes() -> None:
    """Why the write-back ships its own AlwaysRecordSampler (see its module docstring).

    If this fails, the SDK keeps the attributes of RECORD_ONLY spans now and
    setup_telemetry could use the SDK's sampler again.
    """
    from opentelemetry.sdk.trace import TracerProvider

    if not hasattr(sdk_sampling, "AlwaysRecordSampler"):
        pytest.skip(
            "this opentelemetry-sdk release has no AlwaysRecordSampler (the lowest does not)"
        )
    attrs = {c.CHATTER_MESSAGE_ID: new_ulid()}
    sdk = TracerProvider(sampler=sdk_sampling.AlwaysRecordSampler(sdk_sampling.ALWAYS_OFF))
    ours = TracerProvider(sampler=AlwaysRecordSampler(sdk_sampling.ALWAYS_OFF))
    lost = sdk.get_tracer("t").start_span("s", attributes=attrs)
    kept = ours.get_tracer("t").start_span("s", attributes=attrs)
    assert lost.is_recording() and kept.is_recording()
    assert not lost.get_span_context().trace_flags.sampled
    assert not kept.get_span_context().trace_flags.sampled
    assert dict(lost.attributes or {}) == {}  # type: ignore[attr-defined]
    assert dict(kept.attributes or {}) == attrs  # type: ignore[attr-defined]
    sampled = ours.get_tracer("t").start_span("s", attributes=attrs)  # root says sample
    assert (
        AlwaysRecordSampler(sdk_sampling.ALWAYS_ON)
        .should_sample(None, 1, "s", attributes=attrs)
        .decision
        is sdk_sampling.Decision.RECORD_AND_SAMPLE
    )
    for s in (lost, kept, sampled):
        s.end()


# --- timing of the message row --------------------------------------------------------------


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


# --- database unavailable, spool ------------------------------------------------------------


@contextlib.contextmanager
def _outage(db_url: URL, tmp_path: Path) -> Iterator[tuple[str, Callable[[], URL]]]:
    """A URL whose database is unreachable until ``restore()``, which returns the URL to
    read it through afterwards. The same URL before and after, as for a real outage:
    spooled records are bound to the database their URL names."""
    if db_url.get_backend_name() == "sqlite":
        moved = tmp_path / "moved" / "chatter.db"  # its directory does not exist yet

        def restore_file() -> URL:
            moved.parent.mkdir()
            shutil.move(str(db_url.database), moved)
            return make_url(f"sqlite:///{moved}")

        yield f"sqlite:///{moved}", restore_file
        return
    with TcpProxy(db_url.port or 5432) as proxy:
        proxy.down()

        def restore_proxy() -> URL:
            proxy.up()
            return db_url

        yield via(db_url, proxy.port).render_as_string(hide_password=False), restore_proxy


def test_spool_survives_a_restart(db_url: URL, make: Factory, tmp_path: Path) -> None:
    rows = seed(db_url, conversations=3, messages=20)
    with _outage(db_url, tmp_path) as (url, restore):
        down = make(url, max_queue=10, connect_timeout=1)
        expected = 0
        for cid, mids in rows.messages.items():
            for index, mid in enumerate(mids):
                simple_turn(down.tracer, mid, cid, [(index, 1), (1, 1)])
                expected += index + 3
        assert wait_until(
            lambda: down.processor.stats.db_errors > 0 and down.processor.stats.spooled
        )
        assert down.processor.stats.queue_size <= 10 + 500
        down.provider.shutdown()  # database still down: everything ends up in the spool
        stats = down.processor.stats
        assert stats.spooled == 60 and stats.lost == 0 and stats.applied == 0
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) >= 1

        db_url = restore()
        up = make(url)  # same spool directory, database reachable: replays on start
        assert wait_until(lambda: up.processor.stats.applied == 60, timeout=20)
        assert flush(up)
    assert list((tmp_path / "spool").glob("*.jsonl")) == []
    assert sum(conversation(db_url, cid)["total_tokens"] for cid in rows.conversations) == expected
    assert aggregates_exact(db_url) == []


def test_corrupt_spool_lines_are_skipped_and_counted(
    db_url: URL, make: Factory, tmp_path: Path
) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    with _outage(db_url, tmp_path) as (url, restore):
        down = make(url, connect_timeout=1)
        simple_turn(down.tracer, rows.messages[cid][0], cid, [(4, 4)])
        down.provider.shutdown()
        (spooled,) = (tmp_path / "spool").glob("*.jsonl")
        header, good = spooled.read_text().split("\n", 1)
        spooled.write_text(
            header
            + '\n{"v": 1, "trace_id": "nope"}\nnot json\n'
            + good
            + good.replace('"calls":1', '"calls":-1')
        )
        db_url = restore()
        up = make(url)
        assert wait_until(lambda: up.processor.stats.applied == 1)
        assert flush(up)
    assert message(db_url, rows.messages[cid][0])["total_tokens"] == 8
    assert up.processor.stats.rejected == {"spool_line_invalid": 3}


def test_record_the_database_cannot_hold_is_isolated(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=1, messages=4)
    cid = rows.conversations[0]
    a, b, two_owners, one_owner = rows.messages[cid]
    t = make()
    # Each record fits, but the message's two records together exceed its integer column:
    # the database (or the store's check) refuses the batch, bisection isolates the record.
    for _ in range(2):
        calls = [node("chat", genai_attrs(10**9, 0)) for _ in range(2)]
        build(t.tracer, node("wf", owner_attrs(two_owners, cid), *calls))
    # One record whose own sum exceeds the column: refused before it reaches the database.
    calls = [node("chat", genai_attrs(10**9, 0)) for _ in range(3)]
    build(t.tracer, node("wf", owner_attrs(one_owner, cid), *calls))
    simple_turn(t.tracer, a, cid, [(1, 2)])
    simple_turn(t.tracer, b, cid, [(3, 4)])
    assert flush(t)
    assert message(db_url, two_owners)["total_tokens"] == 2 * 10**9
    assert message(db_url, one_owner)["total_tokens"] is None
    assert conversation(db_url, cid)["total_tokens"] == 2 * 10**9 + 10
    assert t.processor.stats.rejected == {"database_refused": 1, "tokens_too_large": 1}
    statuses = sorted(r["status"] for r in ledger_rows(db_url))
    assert statuses == ["applied"] * 4 + ["rejected"]
    assert aggregates_exact(db_url) == []


# --- the processor itself -------------------------------------------------------------------


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
