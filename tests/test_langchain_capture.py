"""Zero-code LangChain capture: every chat model and tool call gets chatter-otel's span.

Offline tokenizer: words and punctuation are one token each, plus 3 per message; the answer
is "You said: <text>". "Hello there" costs 5 input and 5 output tokens, "Good morning to
you" 7 and 7, "One" 4 and 4. offline-echo-1 is priced at $0.50 / $1.50 per million.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManager
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr

from chatter_otel import _peers, model_span, workflow_span
from chatter_otel import conventions as c
from chatter_otel import langchain as capture
from chatter_otel.config import ConfigError, TelemetryConfig
from chatter_otel.service.llm import OfflineChatModel
from chatter_otel.service.tools import TOOLS
from chatter_otel.testing import CapturedTelemetry, FakeOpenAIServer, capture_telemetry

TOKENS = {"Hello there": (5, 5), "Good morning to you": (7, 7), "One": (4, 4)}
CHAT = "chat offline-echo-1"


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry(capture_langchain=True) as captured:
        yield captured


@pytest.fixture
def cap_oi() -> Iterator[CapturedTelemetry]:
    """The capture with openinference's LangChain instrumentation on as well."""
    with capture_telemetry(capture_langchain=True, instrument_langchain=True) as captured:
        yield captured


def _chats(cap: CapturedTelemetry) -> list[ReadableSpan]:
    return [s for s in cap.spans() if s.name == CHAT]


def _usage(span: ReadableSpan) -> tuple[Any, Any]:
    attrs = span.attributes or {}
    return attrs.get(c.GEN_AI_USAGE_INPUT_TOKENS), attrs.get(c.GEN_AI_USAGE_OUTPUT_TOKENS)


def _openinference_llm(cap: CapturedTelemetry) -> list[ReadableSpan]:
    return [
        s for s in cap.spans() if (s.attributes or {}).get(c.OI_SPAN_KIND) == c.OI_SPAN_KIND_LLM
    ]


def _usage_by_call_id(
    cap: CapturedTelemetry,
) -> tuple[dict[Any, tuple[Any, Any]], dict[Any, tuple[Any, Any]]]:
    """(input, output) tokens by call id: our spans, then openinference's LLM spans."""
    ours = {(s.attributes or {})[c.CHATTER_CALL_ID]: _usage(s) for s in _chats(cap)}
    theirs = {
        (s.attributes or {})[c.CHATTER_CALL_ID]: (
            (s.attributes or {})[c.OI_TOKEN_COUNT_PROMPT],
            (s.attributes or {})[c.OI_TOKEN_COUNT_COMPLETION],
        )
        for s in _openinference_llm(cap)
    }
    return ours, theirs


def test_invoke_gets_a_chat_span_named_by_its_run_id(cap: CapturedTelemetry) -> None:
    run_id = uuid.uuid4()
    OfflineChatModel().invoke("Hello there", {"run_id": run_id})
    (span,) = _chats(cap)
    attrs = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert str(attrs.pop(c.GEN_AI_RESPONSE_ID)).startswith("offline-")
    assert attrs == {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "offline",
        c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
        c.CHATTER_CALL_ID: run_id.hex,
        c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        c.GEN_AI_USAGE_INPUT_TOKENS: 5,
        c.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
        c.CHATTER_USAGE_COST: pytest.approx(5 * 0.5e-6 + 5 * 1.5e-6, abs=1e-15),
    }


def _invoke(llm: OfflineChatModel, texts: list[str]) -> None:
    for text in texts:
        llm.invoke(text)


def _ainvoke(llm: OfflineChatModel, texts: list[str]) -> None:
    async def run() -> None:
        for text in texts:
            await llm.ainvoke(text)

    asyncio.run(run())


def _stream(llm: OfflineChatModel, texts: list[str]) -> None:
    for text in texts:
        assert "".join(str(chunk.content) for chunk in llm.stream(text)) == f"You said: {text}"


def _astream(llm: OfflineChatModel, texts: list[str]) -> None:
    async def run() -> None:
        for text in texts:
            assert [chunk async for chunk in llm.astream(text)]

    asyncio.run(run())


def _batch(llm: OfflineChatModel, texts: list[str]) -> None:
    inputs: list[Any] = list(texts)
    assert len(llm.batch(inputs)) == len(texts)


def _abatch(llm: OfflineChatModel, texts: list[str]) -> None:
    inputs: list[Any] = list(texts)
    assert len(asyncio.run(llm.abatch(inputs))) == len(texts)


def _gather(llm: OfflineChatModel, texts: list[str]) -> None:
    async def run() -> None:
        await asyncio.gather(*(llm.ainvoke(text) for text in texts))

    asyncio.run(run())


STYLES: dict[str, Callable[[OfflineChatModel, list[str]], None]] = {
    "invoke": _invoke,
    "ainvoke": _ainvoke,
    "stream": _stream,
    "astream": _astream,
    "batch": _batch,
    "abatch": _abatch,
    "gather": _gather,
}


@pytest.mark.parametrize("style", list(STYLES))
def test_every_call_style_gets_one_span_per_call_with_its_usage(
    cap: CapturedTelemetry, style: str
) -> None:
    texts = list(TOKENS)
    STYLES[style](OfflineChatModel(), texts)
    spans = _chats(cap)
    assert sorted(_usage(s) for s in spans) == sorted(TOKENS.values())
    ids = [(s.attributes or {})[c.CHATTER_CALL_ID] for s in spans]
    assert len(set(ids)) == 3
    points = cap.point(
        c.METRIC_TOKEN_USAGE,
        {
            c.GEN_AI_OPERATION_NAME: "chat",
            c.GEN_AI_PROVIDER_NAME: "offline",
            c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
            c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
            c.GEN_AI_TOKEN_TYPE: "input",
        },
    )
    assert (points.count, points.sum) == (3, 5 + 7 + 4)


def test_streamed_call_is_marked_streaming(cap: CapturedTelemetry) -> None:
    list(OfflineChatModel().stream("Hello there"))
    OfflineChatModel().invoke("One")
    streamed, plain = _chats(cap)
    assert (streamed.attributes or {})[c.GEN_AI_REQUEST_STREAM] is True
    assert c.GEN_AI_REQUEST_STREAM not in (plain.attributes or {})


def test_call_with_tools_bound_records_the_tool_call_finish(cap: CapturedTelemetry) -> None:
    llm = OfflineChatModel().bind_tools(list(TOOLS.values()))
    reply = llm.invoke("Please calculate 12*7")
    assert reply.tool_calls
    (span,) = _chats(cap)
    assert (span.attributes or {})[c.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert _usage(span) == (8, 11)


def test_failing_call_ends_its_span_with_the_error(cap: CapturedTelemetry) -> None:
    with pytest.raises(RuntimeError, match="#fail"):
        OfflineChatModel().invoke("break #fail")
    (span,) = _chats(cap)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[c.ERROR_TYPE] == "OfflineModelError"
    assert _usage(span) == (None, None)


def test_tool_call_gets_an_execute_tool_span(cap: CapturedTelemetry) -> None:
    output = TOOLS["calculator"].invoke(
        {"name": "calculator", "args": {"expression": "2*3"}, "id": "call_7", "type": "tool_call"}
    )
    assert output.content == "6"
    span = cap.span("execute_tool calculator")
    assert dict(span.attributes or {}) == {
        c.GEN_AI_OPERATION_NAME: "execute_tool",
        c.GEN_AI_TOOL_NAME: "calculator",
        c.GEN_AI_TOOL_CALL_ID: "call_7",
        c.GEN_AI_TOOL_TYPE: "function",
        c.GEN_AI_TOOL_DESCRIPTION: "Evaluate an arithmetic expression such as '12*7' or '(3+4)/2'.",
    }


def test_content_stays_hidden_by_default(cap: CapturedTelemetry) -> None:
    OfflineChatModel().invoke("Hello there")
    (span,) = _chats(cap)
    assert not [k for k in span.attributes or {} if k.startswith("gen_ai.input")]
    assert not [k for k in span.attributes or {} if k.startswith("gen_ai.output")]


async def test_hand_made_model_span_adopts_the_call_inside_it(cap: CapturedTelemetry) -> None:
    llm, run_id = OfflineChatModel(), uuid.uuid4()
    async with model_span(llm) as call:
        reply = await llm.ainvoke("Hello there", {"run_id": run_id})
        call.record(reply)  # already recorded by the capture: not counted again
    (span,) = _chats(cap)
    assert (span.attributes or {})[c.CHATTER_CALL_ID] == run_id.hex
    assert _usage(span) == (5, 5)
    point = cap.point(
        c.METRIC_LLM_COST,
        {c.GEN_AI_PROVIDER_NAME: "offline", c.GEN_AI_REQUEST_MODEL: "offline-echo-1"},
    )
    assert point.value == pytest.approx(5 * 0.5e-6 + 5 * 1.5e-6, abs=1e-15)


async def test_second_call_in_one_hand_made_span_starts_beside_it(cap: CapturedTelemetry) -> None:
    llm = OfflineChatModel()
    async with workflow_span("chat") as run, model_span(llm):
        await asyncio.gather(llm.ainvoke("Hello there"), llm.ainvoke("One"))
    spans = _chats(cap)
    assert sorted(_usage(s) for s in spans) == [(4, 4), (5, 5)]
    workflow = cap.span("invoke_workflow chat").context.span_id
    assert [s.parent.span_id for s in spans if s.parent] == [workflow, workflow]
    assert (run.usage.input_tokens, run.usage.output_tokens, run.calls) == (9, 9, 2)


def test_hand_made_span_without_langchain_keeps_a_uuid_call_id(cap: CapturedTelemetry) -> None:
    with model_span(provider="openai", model="gpt-4o-mini") as call:
        call.record(
            AIMessage(
                content="x",
                usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
            )
        )
    call_id = cap.span("chat gpt-4o-mini").attributes[c.CHATTER_CALL_ID]  # type: ignore[index]
    assert uuid.UUID(hex=str(call_id)).version == 4


@pytest.mark.parametrize("style", ["invoke", "ainvoke", "stream", "astream", "batch", "gather"])
def test_openinference_span_of_the_same_run_gets_the_same_call_id(
    cap_oi: CapturedTelemetry, style: str
) -> None:
    STYLES[style](OfflineChatModel(), list(TOKENS))
    ours, theirs = _usage_by_call_id(cap_oi)
    assert len(ours) == 3
    assert theirs == ours


def test_our_span_contains_openinference_span_of_the_same_call(cap_oi: CapturedTelemetry) -> None:
    asyncio.run(OfflineChatModel().ainvoke("Hello there"))
    (ours,) = _chats(cap_oi)
    (theirs,) = _openinference_llm(cap_oi)
    assert ours.start_time is not None and theirs.start_time is not None
    assert ours.end_time is not None and theirs.end_time is not None
    assert ours.start_time <= theirs.start_time <= theirs.end_time <= ours.end_time


def test_model_span_reads_provider_and_model_from_a_bound_chat_model(
    cap: CapturedTelemetry,
) -> None:
    with model_span(OfflineChatModel().bind_tools(list(TOOLS.values()))):
        pass
    attrs = cap.span(CHAT).attributes or {}
    assert (attrs[c.GEN_AI_PROVIDER_NAME], attrs[c.GEN_AI_REQUEST_MODEL]) == (
        "offline",
        "offline-echo-1",
    )


def test_model_span_reads_endpoint_and_parameters_of_chat_openai(cap: CapturedTelemetry) -> None:
    settings: dict[str, Any] = {"base_url": "http://127.0.0.1:8123/v1", "max_tokens": 50}
    llm = ChatOpenAI(
        model="gpt-4o-mini", api_key=SecretStr("sk-x"), temperature=0.2, top_p=0.9, **settings
    )
    with model_span(llm=llm):
        pass
    attrs = dict(cap.span("chat gpt-4o-mini").attributes or {})
    attrs.pop(c.CHATTER_CALL_ID)
    assert attrs == {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "openai",
        c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        c.SERVER_ADDRESS: "127.0.0.1",
        c.SERVER_PORT: 8123,
        c.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        c.GEN_AI_REQUEST_MAX_TOKENS: 50,
        c.GEN_AI_REQUEST_TOP_P: 0.9,
        c.CHATTER_USAGE_MISSING: True,
    }


def test_model_span_needs_a_model_or_both_strings() -> None:
    with pytest.raises(TypeError, match="provider= and model="):
        model_span(provider="openai")


def test_zero_code_openai_call_carries_endpoint_parameters_and_usage(
    cap: CapturedTelemetry,
) -> None:
    with FakeOpenAIServer() as fake:
        llm = ChatOpenAI(
            model="gpt-4o-mini",
            api_key=SecretStr("sk-x"),
            base_url=fake.base_url,
            temperature=0.5,
            max_retries=0,
        )
        llm.invoke("hello there")
        port = fake.port
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert (attrs[c.GEN_AI_PROVIDER_NAME], attrs[c.SERVER_ADDRESS], attrs[c.SERVER_PORT]) == (
        "openai",
        "127.0.0.1",
        port,
    )
    assert attrs[c.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert _usage(cap.span("chat gpt-4o-mini")) == (5, 3)


def test_workflow_handle_adds_up_its_calls_and_is_still_a_span(cap: CapturedTelemetry) -> None:
    llm = OfflineChatModel()
    with workflow_span("chat") as run:
        run.set_attribute("app.custom", "kept")  # code written when the span was yielded
        llm.invoke("Hello there")
        llm.invoke("Good morning to you")
    assert (run.usage.input_tokens, run.usage.output_tokens, run.usage.total_tokens) == (12, 12, 24)
    assert run.cost == Decimal("0.0000240")  # 12 * 0.5e-6 + 12 * 1.5e-6
    assert cap.span("invoke_workflow chat").attributes["app.custom"] == "kept"  # type: ignore[index]


def test_workflow_handle_cost_is_unknown_when_a_call_is_unpriced(cap: CapturedTelemetry) -> None:
    with workflow_span("chat") as run:
        OfflineChatModel().invoke("Hello there")
        OfflineChatModel(model_name="mystery-model-9").invoke("One")
    assert (run.usage.input_tokens, run.calls, run.cost) == (9, 2, None)


def test_capture_stops_when_telemetry_shuts_down() -> None:
    with capture_telemetry(capture_langchain=True) as cap:
        assert capture.enabled()
    assert not capture.enabled()
    OfflineChatModel().invoke("Hello there")
    assert _chats(cap) == []
    handlers = CallbackManager.configure().handlers  # what every new run starts with
    assert not [h for h in handlers if isinstance(h, capture.ChatterCallbackHandler)]


def test_environment_variable_switches_capture_on_and_is_validated() -> None:
    assert TelemetryConfig.from_env({"CHATTER_OTEL_CAPTURE_LANGCHAIN": "true"}).capture_langchain
    assert not TelemetryConfig.from_env({}).capture_langchain
    with pytest.raises(ConfigError, match="CHATTER_OTEL_CAPTURE_LANGCHAIN"):
        TelemetryConfig.from_env({"CHATTER_OTEL_CAPTURE_LANGCHAIN": "maybe"})


def test_opentelemetry_instrument_entry_point_switches_capture_on() -> None:
    (entry,) = [
        e
        for e in entry_points(group="opentelemetry_instrumentor")
        if e.name == "chatter_otel_langchain"
    ]
    instrumentor = entry.load()()
    provider = TracerProvider()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert capture.enabled()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert not capture.enabled()


def test_importing_chatter_otel_does_not_import_langchain() -> None:
    code = "import sys, chatter_otel; print(sorted(m for m in sys.modules if m.startswith('langchain')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_openinference_in_its_thread_pool_default_gets_the_same_call_id(
    cap_oi: CapturedTelemetry,
) -> None:
    """Under ``opentelemetry-instrument`` openinference's handler is not inline: LangChain
    runs it after ours, in a thread pool; the tagger names its span at start."""
    from openinference.instrumentation.langchain import LangChainInstrumentor

    handler = LangChainInstrumentor()._tracer
    assert handler is not None
    handler.run_inline = False
    _gather(OfflineChatModel(), list(TOKENS))
    ours, theirs = _usage_by_call_id(cap_oi)
    assert len(ours) == 3
    assert theirs == ours


@pytest.mark.parametrize("openinference_first", [True, False], ids=["oi-first", "ours-first"])
def test_opentelemetry_instrument_keeps_openinference_content_hidden(
    monkeypatch: pytest.MonkeyPatch, openinference_first: bool
) -> None:
    """``opentelemetry-instrument`` loads every installed instrumentor, openinference's with
    its own default (content exported), in no fixed order."""
    from openinference.instrumentation.langchain import LangChainInstrumentor

    for name in _peers.OPENINFERENCE_HIDE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CHATTER_OTEL_CAPTURE_CONTENT", raising=False)
    with capture_telemetry() as cap:
        provider = cap.telemetry.tracer_provider
        monkeypatch.setattr("opentelemetry.trace._TRACER_PROVIDER", provider)
        ours, theirs = capture.LangChainCaptureInstrumentor(), LangChainInstrumentor()
        order: list[Any] = [theirs, ours] if openinference_first else [ours, theirs]
        try:
            for instrumentor in order:
                instrumentor.instrument(tracer_provider=provider)
            OfflineChatModel().invoke("secret prompt")
        finally:
            for instrumentor in order:
                instrumentor.uninstrument()
        (llm,) = _openinference_llm(cap)
        attrs = dict(llm.attributes or {})
        assert attrs["input.value"] == attrs["output.value"] == "__REDACTED__"
        assert [k for k, v in attrs.items() if "secret" in str(v)] == []
        assert (llm.attributes or {})[c.OI_TOKEN_COUNT_PROMPT] == 5
