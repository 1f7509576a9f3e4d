"""Spans for a chat workflow, its model calls and its tool calls.

Each helper is a context manager (sync and async) and a decorator. Names and attributes
follow the GenAI semantic conventions; usage, cost and model reach the span through
``ModelCall.record`` so the write-back processor and any backend read them from one place.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from chatter_otel import _runtime, binding
from chatter_otel import conventions as c
from chatter_otel.usage import Response, aggregate_chunks, from_ai_message

logger = logging.getLogger("chatter_otel")

H = TypeVar("H")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Turn:
    """What the enclosing workflow learns from its model calls, for per-turn metrics."""

    conversation_id: str | None
    cost: Decimal = Decimal(0)
    priced_calls: int = 0
    unpriced_calls: int = 0


_turn: contextvars.ContextVar[_Turn | None] = contextvars.ContextVar("chatter_turn", default=None)


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


def _fail(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, f"{_error_type(exc)}: {exc}"[:500]))
    span.set_attribute(c.ERROR_TYPE, _error_type(exc))
    span.record_exception(exc, escaped=True)


class _Scope(Generic[H]):
    """A span's lifetime as ``with``, ``async with`` or a decorator (fresh span per call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._span: Span | None = None
        self._token: object | None = None
        self._handle: H | None = None

    def _open(self) -> tuple[Span, H]:
        raise NotImplementedError

    def _close(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> H:
        span, handle = self._open()
        self._span, self._handle = span, handle
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return handle

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._span is not None
        try:
            self._close(exc)
        except Exception:  # telemetry must never break the application
            logger.debug("closing span failed", exc_info=True)
        finally:
            self._span.end()
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]

    async def __aenter__(self) -> H:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, exc, tb)

    def __call__(self, func: F) -> F:
        make = functools.partial(type(self), *self._args, **self._kwargs)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with make():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with make():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class workflow_span(_Scope[Span]):
    """``invoke_workflow {name}``: one chat turn, owner of its model calls' usage.

    ``message_id`` is the id of the assistant message the turn will produce; generate it
    before the workflow runs so the span (and so the write-back) can name the row, or leave it
    out and call ``chatter_otel.bind_message(id)`` where the application creates the row.
    """

    def __init__(
        self,
        name: str,
        *,
        conversation_id: str | None = None,
        message_id: str | None = None,
        user_id: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        super().__init__(
            name,
            conversation_id=conversation_id,
            message_id=message_id,
            user_id=user_id,
            attributes=attributes,
        )
        self.name = name
        self.conversation_id, self.message_id, self.user_id = conversation_id, message_id, user_id
        self.attributes = dict(attributes or {})
        self._started = 0.0
        self._unbound = False
        self._turn_token: contextvars.Token[_Turn | None] | None = None

    def _open(self) -> tuple[Span, Span]:
        runtime = _runtime.get()
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: c.OPERATION_INVOKE_WORKFLOW,
            c.GEN_AI_WORKFLOW_NAME: self.name,
            **self.attributes,
        }
        if self.conversation_id:
            attrs[c.GEN_AI_CONVERSATION_ID] = self.conversation_id
            attrs[c.CHATTER_CONVERSATION_ID] = self.conversation_id
        outermost = _turn.get() is None
        if outermost:
            binding.turn_started()
        if self.message_id:
            attrs[c.CHATTER_MESSAGE_ID] = self.message_id
        elif outermost:  # its row is named by bind_message once the app has created it
            attrs[c.CHATTER_MESSAGE_UNBOUND] = self._unbound = True
        if self.user_id:
            attrs[c.CHATTER_USER_ID] = self.user_id
        span = runtime.tracer.start_span(
            f"{c.OPERATION_INVOKE_WORKFLOW} {self.name}", kind=SpanKind.INTERNAL, attributes=attrs
        )
        span.add_event(c.EVENT_WORKFLOW_STARTED)
        self._started = time.perf_counter()
        self._turn_token = _turn.set(_Turn(self.conversation_id))
        return span, span

    def _close(self, exc: BaseException | None) -> None:
        assert self._span is not None
        span, runtime = self._span, _runtime.get()
        turn = _turn.get()
        if self._turn_token is not None:
            _turn.reset(self._turn_token)
        elapsed = time.perf_counter() - self._started
        outcome = c.OUTCOME_ERROR if exc is not None else c.OUTCOME_SUCCESS
        span.set_attribute(c.CHATTER_WORKFLOW_OUTCOME, outcome)
        if self._unbound:
            binding.turn_ended(span.get_span_context())
        if exc is not None:
            span.add_event(c.EVENT_WORKFLOW_FAILED, {c.ERROR_TYPE: _error_type(exc)})
            _fail(span, exc)
        else:
            span.add_event(c.EVENT_WORKFLOW_COMPLETED)
        metric_attrs = {c.GEN_AI_WORKFLOW_NAME: self.name, c.ATTR_WORKFLOW_OUTCOME: outcome}
        runtime.instruments.workflow_duration.record(elapsed, metric_attrs)
        if turn is not None and turn.priced_calls and not turn.unpriced_calls:
            runtime.instruments.turn_cost.record(
                float(turn.cost), {c.GEN_AI_WORKFLOW_NAME: self.name}
            )


@dataclass
class ModelCall:
    """The handle ``model_span`` yields: record the response (or stream) on it."""

    span: Span
    provider: str
    request_model: str
    operation: str
    response: Response | None = None
    _recorded: bool = field(default=False, repr=False)

    def _metric_attrs(self) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: self.operation,
            c.GEN_AI_PROVIDER_NAME: self.provider,
            c.GEN_AI_REQUEST_MODEL: self.request_model,
        }
        if self.response is not None and self.response.model:
            attrs[c.GEN_AI_RESPONSE_MODEL] = self.response.model
        return attrs

    def record_input(self, messages: Sequence[Any]) -> None:
        """Attach the prompt, only when content capture is on."""
        if _runtime.get().capture_content:
            self.span.set_attribute(c.GEN_AI_INPUT_MESSAGES, _messages_json(messages))

    def record(self, message: Any) -> Response:
        """Put what the provider reported on the span and into the metrics, once."""
        response = from_ai_message(message)
        if self._recorded:
            return response
        self._recorded = True
        self.response = response
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
        if runtime.capture_content and message is not None:
            attrs[c.GEN_AI_OUTPUT_MESSAGES] = _messages_json([message])
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
            attrs[c.GEN_AI_USAGE_COST] = float(cost)
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
            c.GEN_AI_REQUEST_MODEL: self.request_model,
        }
        turn = _turn.get()
        if cost is None:
            runtime.instruments.llm_unpriced.add(1, cost_attrs)
            runtime.warn_unpriced_once(self.provider, model)
            if turn is not None:
                turn.unpriced_calls += 1
            return
        runtime.instruments.llm_cost.add(float(cost), cost_attrs)
        if turn is not None:
            turn.cost += cost
            turn.priced_calls += 1


class model_span(_Scope[ModelCall]):
    """``chat {model}`` (CLIENT): one LLM call. Record its response with ``.record()``."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        operation: str = c.OPERATION_CHAT,
        streaming: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        super().__init__(
            provider=provider,
            model=model,
            operation=operation,
            streaming=streaming,
            attributes=attributes,
        )
        self.provider, self.model, self.operation = provider, model, operation
        self.streaming = streaming
        self.attributes = dict(attributes or {})
        self._started = 0.0

    def _open(self) -> tuple[Span, ModelCall]:
        runtime = _runtime.get()
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: self.operation,
            c.GEN_AI_PROVIDER_NAME: self.provider,
            c.GEN_AI_REQUEST_MODEL: self.model,
            **self.attributes,
        }
        if self.streaming:
            attrs[c.CHATTER_STREAMING] = True
        turn = _turn.get()
        if turn is not None and turn.conversation_id:
            attrs[c.GEN_AI_CONVERSATION_ID] = turn.conversation_id
            attrs[c.CHATTER_CONVERSATION_ID] = turn.conversation_id
        span = runtime.tracer.start_span(
            f"{self.operation} {self.model}", kind=SpanKind.CLIENT, attributes=attrs
        )
        self._started = time.perf_counter()
        return span, ModelCall(span, self.provider, self.model, self.operation)

    def _close(self, exc: BaseException | None) -> None:
        assert self._span is not None and self._handle is not None
        call, runtime = self._handle, _runtime.get()
        attrs = call._metric_attrs()
        if exc is not None:
            _fail(self._span, exc)
            attrs[c.ERROR_TYPE] = _error_type(exc)
        if not call._recorded and exc is None:
            # The caller never recorded a response: usage is unknown, not zero.
            self._span.set_attribute(c.CHATTER_USAGE_MISSING, True)
        runtime.instruments.operation_duration.record(time.perf_counter() - self._started, attrs)


class tool_span(_Scope[Span]):
    """``execute_tool {name}``: one tool call made on the model's behalf."""

    def __init__(self, name: str, *, call_id: str | None = None) -> None:
        super().__init__(name, call_id=call_id)
        self.name, self.call_id = name, call_id

    def _open(self) -> tuple[Span, Span]:
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: c.OPERATION_EXECUTE_TOOL,
            c.GEN_AI_TOOL_NAME: self.name,
        }
        if self.call_id:
            attrs[c.GEN_AI_TOOL_CALL_ID] = self.call_id
        span = _runtime.get().tracer.start_span(
            f"{c.OPERATION_EXECUTE_TOOL} {self.name}", kind=SpanKind.INTERNAL, attributes=attrs
        )
        return span, span

    def _close(self, exc: BaseException | None) -> None:
        if exc is not None and self._span is not None:
            _fail(self._span, exc)


def record_ai_message(call: ModelCall, message: Any) -> Response:
    """Record a LangChain ``AIMessage`` (or summed stream chunks) on a model span."""
    return call.record(message)


def _messages_json(messages: Sequence[Any]) -> str:
    out = []
    for m in messages:
        role = getattr(m, "type", None) or (m.get("role") if isinstance(m, dict) else "user")
        content = getattr(m, "content", None) if not isinstance(m, dict) else m.get("content")
        out.append({"role": role, "content": content if isinstance(content, str) else str(content)})
    return json.dumps(out, ensure_ascii=False)
