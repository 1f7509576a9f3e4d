"""Zero-code capture of plain (completion) LangChain models: ``BaseLLM`` calls get a
``text_completion {model}`` span with the usage completion models report, labelled and
identified exactly as chat model calls are.

``OfflineLLM`` (tests/_offline_llm.py): "Hello there" costs 5 input and 5 output tokens,
"One" 4 and 4; offline-echo-1 is priced at $0.50 / $1.50 per million.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from chatter_otel import conventions as c
from chatter_otel import model_span, workflow_span
from chatter_otel._completion import from_generation
from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from tests._offline_llm import OfflineLLM

COMPLETION = "text_completion offline-echo-1"


def _cost(prompt: int, completion: int) -> Any:
    return pytest.approx(prompt * 0.5e-6 + completion * 1.5e-6, abs=1e-15)


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry(capture_langchain=True) as captured:
        yield captured


def _completions(cap: CapturedTelemetry) -> list[ReadableSpan]:
    return [s for s in cap.spans() if s.name == COMPLETION]


def _usage(span: ReadableSpan) -> tuple[Any, Any]:
    attrs = span.attributes or {}
    return attrs.get(c.GEN_AI_USAGE_INPUT_TOKENS), attrs.get(c.GEN_AI_USAGE_OUTPUT_TOKENS)


def test_invoke_gets_a_text_completion_span_named_by_its_run_id(cap: CapturedTelemetry) -> None:
    run_id = uuid.uuid4()
    assert OfflineLLM().invoke("Hello there", {"run_id": run_id}) == "You said: Hello there"
    (span,) = cap.spans()
    assert span.name == COMPLETION
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        c.GEN_AI_OPERATION_NAME: "text_completion",
        c.GEN_AI_PROVIDER_NAME: "offline",
        c.GEN_AI_REQUEST_MODEL: "offline-echo-1",
        c.CHATTER_CALL_ID: run_id.hex,
        c.GEN_AI_RESPONSE_MODEL: "offline-echo-1",
        c.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        c.GEN_AI_USAGE_INPUT_TOKENS: 5,
        c.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
        c.CHATTER_USAGE_COST: _cost(5, 5),
    }


def test_ainvoke_is_captured_like_invoke(cap: CapturedTelemetry) -> None:
    asyncio.run(OfflineLLM().ainvoke("One"))
    (span,) = _completions(cap)
    assert _usage(span) == (4, 4)


def test_a_stream_takes_its_usage_from_the_last_chunk(cap: CapturedTelemetry) -> None:
    assert "".join(OfflineLLM().stream("Hello there")) == "You said: Hello there"
    (span,) = _completions(cap)
    attrs = span.attributes or {}
    assert _usage(span) == (5, 5)
    assert attrs[c.GEN_AI_REQUEST_STREAM] is True
    assert attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert attrs[c.CHATTER_USAGE_COST] == _cost(5, 5)


def test_a_batch_reported_once_counts_once(cap: CapturedTelemetry) -> None:
    """A completions request answers several prompts with one usage: LangChain gives it to
    the first prompt's run, the others report none (unknown, not 0)."""
    assert OfflineLLM().batch(["One", "Hello there"]) == ["You said: One", "You said: Hello there"]
    first, second = sorted(_completions(cap), key=lambda s: s.start_time or 0)
    assert _usage(first) == (4 + 5, 4 + 5)
    assert _usage(second) == (None, None)
    assert (second.attributes or {})[c.CHATTER_USAGE_MISSING] is True


def test_the_workflow_handle_adds_up_completion_calls(cap: CapturedTelemetry) -> None:
    llm = OfflineLLM()

    async def turn() -> Any:
        async with workflow_span("chat") as run:
            await llm.ainvoke("Hello there")
            assert [chunk async for chunk in llm.astream("One")]
        return run

    run = asyncio.run(turn())
    assert (run.usage.input_tokens, run.usage.output_tokens, run.calls) == (9, 9, 2)
    assert run.cost is not None and float(run.cost) == _cost(9, 9)


async def test_a_hand_made_model_span_adopts_the_completion_call(cap: CapturedTelemetry) -> None:
    llm = OfflineLLM()
    async with model_span(llm) as call:
        await llm.ainvoke("Hello there")
    (span,) = cap.spans()
    assert span.name == COMPLETION  # a plain model's hand-made span is a completion too
    assert _usage(span) == (5, 5)
    assert (span.attributes or {})[c.CHATTER_CALL_ID] == call.call_id
    assert len(call.call_id) == 32


def test_openinference_span_of_the_same_run_gets_the_same_call_id() -> None:
    with capture_telemetry(capture_langchain=True, instrument_langchain=True) as cap:
        OfflineLLM().invoke("Hello there")
        ours = {(s.attributes or {})[c.CHATTER_CALL_ID] for s in _completions(cap)}
        theirs = {
            (s.attributes or {}).get(c.CHATTER_CALL_ID)
            for s in cap.spans()
            if (s.attributes or {}).get(c.OI_SPAN_KIND) == c.OI_SPAN_KIND_LLM
        }
    assert len(ours) == 1
    assert theirs == ours


def test_a_failing_completion_ends_its_span_with_the_error(cap: CapturedTelemetry) -> None:
    class Broken(OfflineLLM):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("provider down")

    with pytest.raises(ConnectionError):
        Broken().invoke("Hello there")
    (span,) = cap.spans()
    assert span.name == COMPLETION
    assert (span.attributes or {})[c.ERROR_TYPE] == "ConnectionError"
    assert _usage(span) == (None, None)


def test_content_stays_hidden_by_default(cap: CapturedTelemetry) -> None:
    OfflineLLM().invoke("Hello there")
    (span,) = cap.spans()
    assert c.GEN_AI_INPUT_MESSAGES not in (span.attributes or {})
    assert c.GEN_AI_OUTPUT_MESSAGES not in (span.attributes or {})


def test_content_capture_records_the_prompt_and_the_completion() -> None:
    with capture_telemetry(capture_langchain=True, capture_content=True) as cap:
        OfflineLLM().invoke("Hello there")
        (span,) = cap.spans()
    attrs = span.attributes or {}
    assert json.loads(str(attrs[c.GEN_AI_INPUT_MESSAGES])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Hello there"}]}
    ]
    assert json.loads(str(attrs[c.GEN_AI_OUTPUT_MESSAGES])) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "You said: Hello there"}],
            "finish_reason": "stop",
        }
    ]


class _Generation:
    def __init__(self, text: str, generation_info: dict[str, Any] | None = None) -> None:
        self.text, self.generation_info = text, generation_info


@pytest.mark.parametrize(
    ("llm_output", "info", "expected"),
    [
        # OpenAI completions: usage for the request, details included.
        (
            {
                "token_usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 4,
                    "total_tokens": 14,
                    "prompt_tokens_details": {"cached_tokens": 6},
                    "completion_tokens_details": {"reasoning_tokens": 1},
                }
            },
            {"finish_reason": "length"},
            ((10, 4, 6, 1), "length"),
        ),
        # Per generation, as streamed answers carry it.
        (None, {"usage": {"input_tokens": 3, "output_tokens": 2}}, ((3, 2, None, None), None)),
        # Ollama's counts in the generation info.
        (
            {},
            {"prompt_eval_count": 7, "eval_count": 9, "done_reason": "stop"},
            ((7, 9, None, None), "stop"),
        ),
        # Another run of a batch: an empty usage is no usage.
        ({"token_usage": {}}, {"finish_reason": "stop"}, ((None, None, None, None), "stop")),
    ],
    ids=["openai", "generation-usage", "ollama", "batch-rest"],
)
def test_completion_usage_is_read_where_integrations_report_it(
    llm_output: Any, info: dict[str, Any], expected: tuple[tuple[Any, ...], str | None]
) -> None:
    from chatter_otel.usage import from_ai_message

    response = from_ai_message(from_generation(_Generation("x", info), llm_output))
    usage = response.usage
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.reasoning_output_tokens,
    ) == expected[0]
    assert response.finish_reason == expected[1]
