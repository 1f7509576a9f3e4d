"""``ModelCall``: what one model call reported (usage, cost, model, timing), put on its
span and into the metrics once, and added to the enclosing turn's totals."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from chatter_otel import _runtime, content
from chatter_otel import conventions as c
from chatter_otel.usage import Response, Usage, aggregate_chunks, from_ai_message

logger = logging.getLogger("chatter_otel")


@dataclass
class _Turn:
    """What the enclosing workflow learns from its model calls, for per-turn metrics."""

    conversation_id: str | None
    cost: Decimal = Decimal(0)
    priced_calls: int = 0
    unpriced_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Calls of one turn can end in several threads at once (LangChain's ``batch``)."""


_turn: contextvars.ContextVar[_Turn | None] = contextvars.ContextVar("chatter_turn", default=None)
_current_call: contextvars.ContextVar[ModelCall | None] = contextvars.ContextVar(
    "chatter_model_call", default=None
)
"""The hand-made ``model_span`` open around the running code: the LangChain capture records
into it instead of opening a second span for the same call."""


MAX_CHUNK_GAPS = 100_000
"""Inter-chunk times kept per streamed call for the time-per-chunk histogram."""


@dataclass
class ModelCall:
    """The handle ``model_span`` yields: record the response (or stream) on it."""

    span: Span
    provider: str
    request_model: str
    operation: str
    response: Response | None = None
    _recorded: bool = field(default=False, repr=False)
    started: float = field(default_factory=time.perf_counter, repr=False)
    """When the request was issued (the handle is made as the span starts)."""
    _first_chunk: float | None = field(default=None, repr=False)
    _last_chunk: float = field(default=0.0, repr=False)
    _chunk_gaps: list[float] = field(default_factory=list, repr=False)
    call_id: str = ""
    """``chatter.call.id`` of the call (see ``conventions.CHATTER_CALL_ID``)."""
    parent_context: Context | None = field(default=None, repr=False)
    """The context the span was started in (a second call inside it starts beside it)."""
    adopted: bool = field(default=False, repr=False)
    """A LangChain run was recorded into this hand-made span by the zero-code capture."""

    def set_call_id(self, call_id: str) -> None:
        """Name the call (the capture renames a hand-made span after the LangChain run)."""
        self.call_id = call_id
        self.span.set_attribute(c.CHATTER_CALL_ID, call_id)

    def _metric_attrs(self) -> dict[str, AttributeValue]:
        # Model names are bounded (issue 13.7): unknown ones become _OTHER here, not on spans.
        runtime = _runtime.get()
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: self.operation,
            c.GEN_AI_PROVIDER_NAME: self.provider,
            c.GEN_AI_REQUEST_MODEL: runtime.model_label(self.provider, self.request_model),
        }
        if self.response is not None and self.response.model:
            attrs[c.GEN_AI_RESPONSE_MODEL] = runtime.model_label(self.provider, self.response.model)
        return attrs

    def record_input(self, messages: Sequence[Any]) -> None:
        """Attach the prompt, only when content capture is on."""
        if _runtime.get().capture_content:
            self.span.set_attribute(c.GEN_AI_INPUT_MESSAGES, content.input_messages_json(messages))

    def on_chunk(self) -> None:
        """Call as each streamed chunk arrives: time to first chunk and time per chunk."""
        now = time.perf_counter()
        if self._first_chunk is None:
            self._first_chunk = now
        elif len(self._chunk_gaps) < MAX_CHUNK_GAPS:
            self._chunk_gaps.append(now - self._last_chunk)
        self._last_chunk = now

    def _record_chunk_timing(self, attrs: Mapping[str, AttributeValue]) -> None:
        """At the end of a streamed call: the span attribute and both chunk histograms."""
        if self._first_chunk is None:
            return
        runtime = _runtime.get()
        first = self._first_chunk - self.started
        self.span.set_attribute(c.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, first)
        runtime.instruments.time_to_first_chunk.record(first, attrs)
        per_chunk = runtime.instruments.time_per_output_chunk
        for gap in self._chunk_gaps:
            per_chunk.record(gap, attrs)

    def record(self, message: Any) -> Response:
        """Put what the provider reported on the span and into the metrics, once."""
        response = from_ai_message(message)
        if self._recorded:
            return response
        self._recorded = True
        self.response = response
        turn = _turn.get()
        if turn is not None:
            with turn.lock:
                turn.calls += 1
                turn.usage = turn.usage + response.usage
        try:
            self._record(message, response)
        except Exception:  # never let telemetry break a chat turn
            logger.debug("recording model response failed", exc_info=True)
        return response

    def record_chunks(self, chunks: Iterable[Any]) -> Response:
        """Record a stream from its chunks; usage is on the last one, if it arrived."""
        return self.record(aggregate_chunks(chunks))

    def _record(self, message: Any, response: Response) -> None:
        # One set_attributes call: each SDK call takes the span's lock and checks its values.
        runtime = _runtime.get()
        usage = response.usage
        attrs: dict[str, AttributeValue] = {}
        if response.model:
            attrs[c.GEN_AI_RESPONSE_MODEL] = response.model
        if response.finish_reason:
            attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] = [response.finish_reason]
        if response.response_id:
            attrs[c.GEN_AI_RESPONSE_ID] = response.response_id
        if self.provider == c.PROVIDER_OPENAI:
            for key, text in (
                (c.OPENAI_RESPONSE_SERVICE_TIER, response.service_tier),
                (c.OPENAI_RESPONSE_SYSTEM_FINGERPRINT, response.system_fingerprint),
                (c.OPENAI_API_TYPE, response.api_type),
            ):
                if text is not None:
                    attrs[key] = text
        if runtime.capture_content and message is not None:
            attrs[c.GEN_AI_OUTPUT_MESSAGES] = content.output_messages_json(
                message, response.finish_reason
            )
        if not usage.reported:
            attrs[c.CHATTER_USAGE_MISSING] = True
            self.span.set_attributes(attrs)
            return
        for key, value in (
            (c.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens),
            (c.GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens),
            (c.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cache_read_input_tokens),
            (c.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_creation_input_tokens),
            (c.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_output_tokens),
        ):
            if value is not None:
                attrs[key] = value
        model = response.model or self.request_model
        cost = runtime.pricing.cost(self.provider, model, usage)
        if cost is None:
            attrs[c.CHATTER_COST_UNPRICED] = True
        else:
            attrs[c.CHATTER_USAGE_COST] = float(cost)
        self.span.set_attributes(attrs)

        metric_attrs = self._metric_attrs()
        for token_type, count in (
            (c.TOKEN_TYPE_INPUT, usage.input_tokens),
            (c.TOKEN_TYPE_OUTPUT, usage.output_tokens),
        ):
            if count is not None:
                runtime.instruments.token_usage.record(
                    count, {**metric_attrs, c.GEN_AI_TOKEN_TYPE: token_type}
                )
        cost_attrs = {
            c.GEN_AI_PROVIDER_NAME: self.provider,
            c.GEN_AI_REQUEST_MODEL: metric_attrs[c.GEN_AI_REQUEST_MODEL],
        }
        turn = _turn.get()
        if cost is None:
            runtime.instruments.llm_unpriced.add(1, cost_attrs)
            runtime.warn_unpriced(self.provider, model)
            if turn is not None:
                turn.unpriced_calls += 1
            return
        runtime.instruments.llm_cost.add(float(cost), cost_attrs)
        if turn is not None:
            turn.cost += cost
            turn.priced_calls += 1
