"""Hand-made spans and a bare assembler for the test_assembler_* modules.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.stats import Counters

LIMITS = (100, 50, 50)
PRICING = Pricing()
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
S = 1_000_000_000  # one second in ns
RESOURCE = Resource.get_empty()


def make_span(
    span_id: int,
    parent: int | None,
    attrs: dict[str, Any] | None = None,
    *,
    start: int = 1 * S,
    end: int = 2 * S,
    trace_id: int = TRACE,
) -> ReadableSpan:
    return ReadableSpan(
        name=f"s{span_id}",
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=SpanContext(trace_id, parent, is_remote=False) if parent is not None else None,
        attributes=attrs or {},
        start_time=start,
        end_time=end,
        resource=RESOURCE,
    )


def assembler(**kwargs: Any) -> tuple[Assembler, Counters]:
    counters = Counters(None)
    options: dict[str, Any] = {
        "pricing": PRICING,
        "counters": counters,
        "limits": LIMITS,
        "grace": 0.0,
        "trace_ttl": 10.0,
        "message_ttl": 300.0,
        "call_ttl": 3600.0,
        "max_traces": 100,
        "max_spans_per_trace": 1000,
    }
    options.update(kwargs)
    return Assembler(**options), counters


def usage(
    inp: int,
    out: int,
    call_id: str | None = None,
    *,
    cost: float | None = None,
    finish: str | None = None,
) -> dict[str, Any]:
    """Our ``chat`` span's usage (GenAI convention)."""
    attrs: dict[str, Any] = {c.GEN_AI_USAGE_INPUT_TOKENS: inp, c.GEN_AI_USAGE_OUTPUT_TOKENS: out}
    if call_id is not None:
        attrs[c.CHATTER_CALL_ID] = call_id
    if cost is not None:
        attrs[c.GEN_AI_USAGE_COST] = cost
    if finish is not None:
        attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] = (finish,)
    return attrs


def oi_usage(inp: int, out: int, call_id: str | None = None) -> dict[str, Any]:
    """openinference's LLM span usage (tagged with the call id when our capture is on)."""
    attrs: dict[str, Any] = {
        c.OI_SPAN_KIND: c.OI_SPAN_KIND_LLM,
        c.OI_TOKEN_COUNT_PROMPT: inp,
        c.OI_TOKEN_COUNT_COMPLETION: out,
    }
    if call_id is not None:
        attrs[c.CHATTER_CALL_ID] = call_id
    return attrs


def owner(mid: str) -> dict[str, Any]:
    return {c.CHATTER_MESSAGE_ID: mid}


def tokens(record: TurnRecord) -> tuple[int | None, int | None, int | None]:
    return (record.prompt_tokens, record.completion_tokens, record.total_tokens)
