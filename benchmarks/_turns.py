"""Span trees shaped like the ones chatter-otel's helpers produce for one chat turn.

The write-back parts feed the processor thousands of turns per second; running LangGraph
for each would measure LangGraph. These trees carry the same names and attributes as
``workflow_span`` > ``model_span`` / ``tool_span`` (see ``chatter_otel.spans``), so the
processor does exactly the work it does in production, and the usage of turn ``i`` is a
known function of ``i`` so the rows can be checked exactly afterwards.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Tracer

from benchmarks._db import Turn
from chatter_otel import conventions as c

SPANS_PER_TURN = 4
PROVIDER = "offline"
MODEL = "offline-echo-1"
IN_PRICE = 0.5e-6
OUT_PRICE = 1.5e-6


def usage(index: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input, output) tokens of the turn's two LLM calls (tool call, then answer)."""
    first = (12 + index % 31, 9)
    second = (first[0] + first[1] + 20, 4 + index % 7)
    return first, second


def total_tokens(index: int) -> int:
    return sum(i + o for i, o in usage(index))


def emit_turn(tracer: Tracer, turn: Turn) -> None:
    """invoke_workflow chat > (chat, execute_tool, chat): four spans, two with usage."""
    conv = turn.conversation_id
    owner = tracer.start_span(
        f"{c.OPERATION_INVOKE_WORKFLOW} chat",
        kind=SpanKind.INTERNAL,
        attributes={
            c.GEN_AI_OPERATION_NAME: c.OPERATION_INVOKE_WORKFLOW,
            c.GEN_AI_WORKFLOW_NAME: "chat",
            c.GEN_AI_CONVERSATION_ID: conv,
            c.CHATTER_CONVERSATION_ID: conv,
            c.CHATTER_MESSAGE_ID: turn.message_id,
            c.CHATTER_USER_ID: turn.user_id,
        },
    )
    owner.add_event(c.EVENT_WORKFLOW_STARTED)
    parent = trace.set_span_in_context(owner)
    calls = usage(turn.index)
    for step, (tokens_in, tokens_out) in enumerate(calls):
        span = tracer.start_span(
            f"{c.OPERATION_CHAT} {MODEL}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                c.GEN_AI_OPERATION_NAME: c.OPERATION_CHAT,
                c.GEN_AI_PROVIDER_NAME: PROVIDER,
                c.GEN_AI_REQUEST_MODEL: MODEL,
                c.GEN_AI_CONVERSATION_ID: conv,
                c.CHATTER_CONVERSATION_ID: conv,
            },
        )
        span.set_attribute(c.GEN_AI_RESPONSE_MODEL, MODEL)
        span.set_attribute(
            c.GEN_AI_RESPONSE_FINISH_REASONS, ["tool_calls" if step == 0 else "stop"]
        )
        span.set_attribute(c.GEN_AI_RESPONSE_ID, f"offline-{turn.index:x}-{step}")
        span.set_attribute(c.GEN_AI_USAGE_INPUT_TOKENS, tokens_in)
        span.set_attribute(c.GEN_AI_USAGE_OUTPUT_TOKENS, tokens_out)
        span.set_attribute(c.GEN_AI_USAGE_COST, tokens_in * IN_PRICE + tokens_out * OUT_PRICE)
        span.end()
        if step == 0:
            tool = tracer.start_span(
                f"{c.OPERATION_EXECUTE_TOOL} calculator",
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes={
                    c.GEN_AI_OPERATION_NAME: c.OPERATION_EXECUTE_TOOL,
                    c.GEN_AI_TOOL_NAME: "calculator",
                    c.GEN_AI_TOOL_CALL_ID: f"call_{turn.index:x}",
                },
            )
            tool.end()
    owner.set_attribute(c.CHATTER_WORKFLOW_OUTCOME, c.OUTCOME_SUCCESS)
    owner.add_event(c.EVENT_WORKFLOW_COMPLETED)
    owner.end()


class Collect(SpanProcessor):
    """Keeps finished spans so a measurement can replay them into a processor later,
    separating the cost of making spans from the cost of consuming them."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def recorded_spans(turns: list[Turn]) -> list[ReadableSpan]:
    """The finished spans of ``turns``, in the order a service would end them."""
    provider = TracerProvider()
    collect = Collect()
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("chatter_otel")
    for turn in turns:
        emit_turn(tracer, turn)
    provider.shutdown()
    return collect.spans
