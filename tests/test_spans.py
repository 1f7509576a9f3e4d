"""Spans and metrics of a chat turn, with exact values for known offline conversations.

Offline tokenizer: words and punctuation are one token each, plus 3 per message. The
shipped price file prices offline-echo-1 at $0.50 per million input and $1.50 per million
output tokens.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from chatter_otel import conventions as c
from chatter_otel import model_span, tool_span, workflow_span
from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from tests.service_client import Api, running_service


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry(instrument_langchain=False) as captured:
        yield captured


@pytest.fixture
async def api(tmp_path: Any, cap: CapturedTelemetry) -> AsyncIterator[Api]:
    async with running_service(f"sqlite:///{tmp_path}/chat.db", cap.telemetry) as api:
        yield api


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    return [
        s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


async def test_plain_turn_spans_nest_server_workflow_model(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation()
    await api.say(cid, "Hello there")
    spans = cap.spans()
    server = cap.span("POST /api/v1/conversations/{conversation_id}/messages")
    workflow = cap.span("invoke_workflow chat")
    model = cap.span("chat offline-echo-1")
    assert workflow.parent is not None and workflow.parent.span_id == server.context.span_id
    assert _children(spans, workflow) == ["chat offline-echo-1"]
    assert workflow.kind is SpanKind.INTERNAL
    assert model.kind is SpanKind.CLIENT


async def test_workflow_span_carries_ids_to_search_by(api: Api, cap: CapturedTelemetry) -> None:
    user = await api.user("dora")
    cid = await api.conversation(user)
    message = (await api.say(cid, "Hello there")).json()
    attrs = dict(cap.span("invoke_workflow chat").attributes or {})
    assert attrs == {
        c.GEN_AI_OPERATION_NAME: "invoke_workflow",
        c.GEN_AI_WORKFLOW_NAME: "chat",
        c.GEN_AI_CONVERSATION_ID: cid,
        c.CHATTER_CONVERSATION_ID: cid,
        c.CHATTER_MESSAGE_ID: message["id"],
        c.CHATTER_USER_ID: user,
        c.CHATTER_WORKFLOW_OUTCOME: "success",
    }
    events = [e.name for e in cap.span("invoke_workflow chat").events]
    assert events == [c.EVENT_WORKFLOW_STARTED, c.EVENT_WORKFLOW_COMPLETED]


async def test_model_span_carries_usage_cost_and_provider(api: Api, cap: CapturedTelemetry) -> None:
    cid = await api.conversation()
    await api.say(cid, "Hello there")
    attrs = dict(cap.span("chat offline-echo-1").attributes or {})
    response_id = attrs.pop(c.GEN_AI_RESPONSE_ID)
    assert str(response_id).startswith("offline-")
    call_id = attrs.pop(c.CHATTER_CALL_ID)  # the LangChain run id: captured with no code
    assert re.fullmatch(r"[0-9a-f]{32}", str(call_id))
    assert attrs == {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "offline",
        c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        c.GEN_AI_CONVERSATION_ID: cid,
        c.CHATTER_CONVERSATION_ID: cid,
        c.GEN_AI_USAGE_INPUT_TOKENS: 5,  # "Hello there" = 2, + 3 per message
        c.GEN_AI_USAGE_OUTPUT_TOKENS: 5,  # "You said: Hello there"
        c.CHATTER_USAGE_COST: pytest.approx(5 * 0.5e-6 + 5 * 1.5e-6, abs=1e-15),
    }


async def test_streamed_turn_records_usage_from_the_last_chunk(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation()
    await api.stream(cid, "Hello there")
    attrs = dict(cap.span("chat offline-echo-1").attributes or {})
    assert attrs[c.GEN_AI_REQUEST_STREAM] is True
    assert attrs[c.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert attrs[c.GEN_AI_USAGE_OUTPUT_TOKENS] == 5
    assert attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert cap.span("invoke_workflow chat").attributes[c.GEN_AI_REQUEST_STREAM] is True  # type: ignore[index]


async def test_streamed_call_reports_time_to_first_chunk_and_per_chunk(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation()
    await api.stream(cid, "Hello there")  # "You said: Hello there": 4 word chunks + 1 final
    attrs = dict(cap.span("chat offline-echo-1").attributes or {})
    first = attrs[c.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert isinstance(first, float) and first > 0
    labels = {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "offline",
        c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
    }
    assert cap.point(c.METRIC_TIME_TO_FIRST_CHUNK, labels).count == 1
    assert cap.point(c.METRIC_TIME_PER_OUTPUT_CHUNK, labels).count == 4


async def test_plain_call_reports_no_chunk_timing(api: Api, cap: CapturedTelemetry) -> None:
    cid = await api.conversation()
    await api.say(cid, "Hello there")
    attrs = dict(cap.span("chat offline-echo-1").attributes or {})
    assert c.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK not in attrs
    assert cap.points(c.METRIC_TIME_TO_FIRST_CHUNK) == []
    assert cap.points(c.METRIC_TIME_PER_OUTPUT_CHUNK) == []


async def test_tool_turn_has_two_model_calls_and_a_tool_span(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation()
    await api.say(cid, "Please calculate 12*7")
    spans = cap.spans()
    workflow = cap.span("invoke_workflow chat")
    assert _children(spans, workflow) == [
        "chat offline-echo-1",
        "execute_tool calculator",
        "chat offline-echo-1",
    ]
    first, second = [s for s in spans if s.name == "chat offline-echo-1"]
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes[c.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    # "Please calculate 12*7" = 5 tokens + 3; the call {'expression': '12*7'} = 11 tokens
    assert (
        first.attributes[c.GEN_AI_USAGE_INPUT_TOKENS],
        first.attributes[c.GEN_AI_USAGE_OUTPUT_TOKENS],
    ) == (8, 11)
    # + the AI message (0 text tokens + 3) and the tool result "84" (1 + 3); "The result is 84." = 5
    assert (
        second.attributes[c.GEN_AI_USAGE_INPUT_TOKENS],
        second.attributes[c.GEN_AI_USAGE_OUTPUT_TOKENS],
    ) == (15, 5)
    tool = cap.span("execute_tool calculator")
    assert dict(tool.attributes or {}) == {
        c.GEN_AI_OPERATION_NAME: "execute_tool",
        c.GEN_AI_TOOL_NAME: "calculator",
        c.GEN_AI_TOOL_CALL_ID: "call_" + hashlib.sha1(b"12*7").hexdigest()[:12],
        c.GEN_AI_TOOL_TYPE: "function",
        c.GEN_AI_TOOL_DESCRIPTION: "Evaluate an arithmetic expression such as '12*7' or '(3+4)/2'.",
    }
    turn_cost = cap.point(c.METRIC_TURN_COST, {c.GEN_AI_WORKFLOW_NAME: "chat"})
    assert turn_cost.count == 1
    assert turn_cost.sum == pytest.approx((8 + 15) * 0.5e-6 + (11 + 5) * 1.5e-6, abs=1e-15)


async def test_failed_turn_marks_workflow_and_model_spans_as_errors(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation()
    await api.say(cid, "break #fail")
    workflow, model = cap.span("invoke_workflow chat"), cap.span("chat offline-echo-1")
    for span in (workflow, model):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "offline provider failure requested by #fail"
        assert span.attributes[c.ERROR_TYPE] == "OfflineModelError"  # type: ignore[index]
    # The exception is recorded once, where it was raised, without exception.escaped.
    [exception] = [e for e in model.events if e.name == "exception"]
    assert sorted(exception.attributes or {}) == [
        c.EXCEPTION_MESSAGE,
        c.EXCEPTION_STACKTRACE,
        c.EXCEPTION_TYPE,
    ]
    assert [e.name for e in workflow.events] == [
        c.EVENT_WORKFLOW_STARTED,
        c.EVENT_WORKFLOW_FAILED,
    ]
    assert workflow.attributes[c.CHATTER_WORKFLOW_OUTCOME] == "error"  # type: ignore[index]
    point = cap.point(
        c.METRIC_WORKFLOW_DURATION,
        {
            c.GEN_AI_WORKFLOW_NAME: "chat",
            c.CHATTER_WORKFLOW_OUTCOME: "error",
            c.ERROR_TYPE: "OfflineModelError",
        },
    )
    assert point.count == 1
    duration = cap.point(
        c.METRIC_OPERATION_DURATION,
        {
            c.GEN_AI_OPERATION_NAME: "chat",
            c.GEN_AI_PROVIDER_NAME: "offline",
            c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
            c.ERROR_TYPE: "OfflineModelError",
        },
    )
    assert duration.count == 1


async def test_unknown_model_is_unpriced_never_zero(
    api: Api, cap: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    cid = await api.conversation(llm_model="offline-unpriced-1")
    await api.say(cid, "one")
    await api.say(cid, "two")
    spans = [s for s in cap.spans() if s.name == "chat offline-unpriced-1"]
    assert len(spans) == 2
    for span in spans:
        assert c.CHATTER_USAGE_COST not in (span.attributes or {})
        assert span.attributes[c.CHATTER_COST_UNPRICED] is True  # type: ignore[index]
    # Unknown models are one metric label value; the spans above keep the real name.
    labels = {c.GEN_AI_PROVIDER_NAME: "offline", c.GEN_AI_REQUEST_MODEL: "_OTHER"}
    assert cap.point(c.METRIC_LLM_UNPRICED, labels).value == 2
    assert [p for p in cap.points(c.METRIC_LLM_COST) if dict(p.attributes) == labels] == []
    warnings = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(warnings) == 1
    assert cap.points(c.METRIC_TURN_COST) == []


def test_missing_usage_sets_the_flag_and_no_usage_attributes(cap: CapturedTelemetry) -> None:
    with workflow_span("chat"), model_span(provider="openai", model="gpt-4o-mini") as call:
        call.record(AIMessage(content="partial", response_metadata={"model_name": "gpt-4o-mini"}))
    attrs = dict(cap.span("chat gpt-4o-mini").attributes or {})
    assert attrs[c.CHATTER_USAGE_MISSING] is True
    assert not [k for k in attrs if k.startswith("gen_ai.usage.")]
    assert cap.points(c.METRIC_TOKEN_USAGE) == []


def test_unrecorded_model_call_counts_as_missing_usage(cap: CapturedTelemetry) -> None:
    with model_span(provider="openai", model="gpt-4o-mini"):
        pass
    assert cap.span("chat gpt-4o-mini").attributes[c.CHATTER_USAGE_MISSING] is True  # type: ignore[index]


def test_cache_and_reasoning_tokens_are_subsets_on_the_span(cap: CapturedTelemetry) -> None:
    message = AIMessage(
        content="x",
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 200,
            "total_tokens": 1200,
            "input_token_details": {"cache_read": 600, "cache_creation": 100},
            "output_token_details": {"reasoning": 150},
        },
        response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
    )
    with model_span(provider="openai", model="gpt-4o-mini") as call:
        call.record(message)
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert attrs[c.GEN_AI_USAGE_INPUT_TOKENS] == 1000
    assert attrs[c.GEN_AI_USAGE_OUTPUT_TOKENS] == 200
    assert attrs[c.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 600
    assert attrs[c.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 100
    assert attrs[c.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 150


def test_token_metric_has_convention_attributes_and_buckets(cap: CapturedTelemetry) -> None:
    with model_span(provider="offline", model="offline-echo-1") as call:
        call.record(
            AIMessage(
                content="hi",
                usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
                response_metadata={"model_name": "offline-echo-1"},
            )
        )
    base = {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "offline",
        c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
    }
    input_point = cap.point(c.METRIC_TOKEN_USAGE, {**base, c.GEN_AI_TOKEN_TYPE: "input"})
    output_point = cap.point(c.METRIC_TOKEN_USAGE, {**base, c.GEN_AI_TOKEN_TYPE: "output"})
    assert (input_point.sum, output_point.sum) == (7, 3)
    assert tuple(input_point.explicit_bounds) == c.METRIC_TOKEN_USAGE_BUCKETS
    duration = cap.points(c.METRIC_OPERATION_DURATION)[0]
    assert tuple(duration.explicit_bounds) == c.METRIC_OPERATION_DURATION_BUCKETS
    cost = cap.point(
        c.METRIC_LLM_COST,
        {c.GEN_AI_PROVIDER_NAME: "offline", c.GEN_AI_REQUEST_MODEL: "offline-echo-1"},
    )
    assert cost.value == pytest.approx(7 * 0.5e-6 + 3 * 1.5e-6, abs=1e-15)


def test_metrics_carry_no_conversation_or_user_ids(cap: CapturedTelemetry) -> None:
    with (
        workflow_span(
            "chat",
            conversation_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
            user_id="01ARZ3NDEKTSV4RRFFQ69G5FAW",
        ),
        model_span(provider="offline", model="offline-echo-1") as call,
    ):
        call.record(
            AIMessage(
                content="x",
                usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
            )
        )
    data = cap.reader.get_metrics_data()
    assert data is not None
    keys = {
        k
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
        for k in p.attributes or {}
    }
    assert keys == {
        c.GEN_AI_OPERATION_NAME,
        c.GEN_AI_PROVIDER_NAME,
        c.GEN_AI_REQUEST_MODEL,
        c.GEN_AI_TOKEN_TYPE,
        c.GEN_AI_WORKFLOW_NAME,
        c.CHATTER_WORKFLOW_OUTCOME,
    }


def test_helpers_work_as_decorators_sync_and_async(cap: CapturedTelemetry) -> None:
    @tool_span("lookup")
    def lookup() -> int:
        return 1

    @workflow_span("batch")
    async def batch() -> int:
        return lookup() + 1

    import asyncio

    assert asyncio.run(batch()) == 2
    assert asyncio.run(batch()) == 2
    names = [s.name for s in cap.spans()]
    assert names == ["execute_tool lookup", "invoke_workflow batch"] * 2


async def test_every_response_carries_traceresponse(api: Api, cap: CapturedTelemetry) -> None:
    r = await api.client.get("/api/v1/conversations")
    server = cap.span("GET /api/v1/conversations")
    ctx = server.context
    assert (
        r.headers["traceresponse"]
        == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    )
    assert int(r.headers["traceresponse"][-2:], 16) & 0x01 == 0x01  # sampled


async def test_forged_traceparent_is_ignored_not_an_error(api: Api, cap: CapturedTelemetry) -> None:
    r = await api.client.get("/api/v1/conversations", headers={"traceparent": "00-zzzz-forged-01"})
    assert r.status_code == 200
    assert cap.span("GET /api/v1/conversations").parent is None
