"""Spans for a chat workflow, its model calls and its tool calls.

Each helper is a context manager (sync and async) and a decorator. Names and attributes
follow the GenAI semantic conventions; usage, cost and model reach the span through
``ModelCall.record`` so the write-back processor and any backend read them from one place.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from chatter_otel import _runtime, binding, content, errors
from chatter_otel import conventions as c
from chatter_otel._workflow_run import WorkflowRun as WorkflowRun  # re-exported
from chatter_otel.usage import Response, Usage, aggregate_chunks, from_ai_message

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


_error_type = errors.error_type
MAX_CHUNK_GAPS = 100_000
"""Inter-chunk times kept per streamed call for the time-per-chunk histogram."""


def _fail(span: Span, exc: BaseException, *, genai_client: bool = False) -> None:
    errors.fail(span, exc, _runtime.get().event_logger, genai_client=genai_client)


_SCOPE_MARK: contextvars.ContextVar[int] = contextvars.ContextVar("chatter_otel_scope", default=0)
"""Set on entering a scope; resetting it tells whether the exit runs in the same context."""


class _Scope(Generic[H]):
    """A span's lifetime as ``with``, ``async with`` or a decorator (fresh span per call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._span: Span | None = None
        self._token: object | None = None
        self._mark: contextvars.Token[int] | None = None
        self._handle: H | None = None

    def _open(self) -> tuple[Span, H]:
        raise NotImplementedError

    def _close(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> H:
        span, handle = self._open()
        self._span, self._handle = span, handle
        self._token = otel_context.attach(trace.set_span_in_context(span))
        self._mark = _SCOPE_MARK.set(id(self))
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
            if self._token is not None and self._in_own_context():
                otel_context.detach(self._token)  # type: ignore[arg-type]

    def _in_own_context(self) -> bool:
        """False when the scope is closed from another context than the one it was entered
        in: an async generator streaming a turn, finalised by the event loop after the
        client disconnected. The span has ended all the same; detaching there would only
        make OpenTelemetry log "Failed to detach context" at ERROR."""
        if self._mark is None:
            return True
        try:
            _SCOPE_MARK.reset(self._mark)
        except ValueError:  # the token was created in another contextvars.Context
            return False
        return True

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


class workflow_span(_Scope[WorkflowRun]):
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

    def _open(self) -> tuple[Span, WorkflowRun]:
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
        turn = _Turn(self.conversation_id)
        self._turn_token = _turn.set(turn)
        return span, WorkflowRun(span, turn)

    def _close(self, exc: BaseException | None) -> None:
        assert self._span is not None
        span, runtime = self._span, _runtime.get()
        turn = self._handle._turn if self._handle is not None else None
        if self._turn_token is not None:
            # ValueError: closed from another context (a generator closed elsewhere).
            with contextlib.suppress(ValueError):
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
        metric_attrs: dict[str, AttributeValue] = {
            c.GEN_AI_WORKFLOW_NAME: self.name,
            c.ATTR_WORKFLOW_OUTCOME: outcome,
        }
        if exc is not None:
            metric_attrs[c.ERROR_TYPE] = _error_type(exc)
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


class model_span(_Scope[ModelCall]):
    """``chat {model}`` (CLIENT): one LLM call. Record its response with ``.record()``.

    Pass the LangChain chat model (``model_span(llm)``) or ``provider`` and ``model``
    strings; explicit strings win over what is read from the model. With the LangChain
    capture on, a LangChain call made inside records into this span by itself.
    """

    def __init__(
        self,
        llm: Any = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        operation: str = c.OPERATION_CHAT,
        streaming: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        call_id: str | None = None,
    ) -> None:
        super().__init__(
            llm,
            provider=provider,
            model=model,
            operation=operation,
            streaming=streaming,
            attributes=attributes,
            call_id=call_id,
        )
        extra: dict[str, AttributeValue] = {}
        if llm is not None:
            from chatter_otel._chat_model import from_chat_model

            info = from_chat_model(llm)
            provider, model = provider or info.provider, model or info.model
            extra = info.attributes()
        if not provider or not model:
            raise TypeError("model_span needs a chat model, or both provider= and model=")
        self.provider, self.model, self.operation = provider, model, operation
        self.streaming = streaming
        self.attributes = {**extra, **(attributes or {})}
        self.call_id = call_id
        self._started = 0.0
        self._call_token: contextvars.Token[ModelCall | None] | None = None

    def _open(self) -> tuple[Span, ModelCall]:
        span, call = self._start(None)
        self._call_token = _current_call.set(call)
        return span, call

    def _start(
        self, context: Context | None, start_time: int | None = None
    ) -> tuple[Span, ModelCall]:
        runtime = _runtime.get()
        call_id = self.call_id or uuid.uuid4().hex
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: self.operation,
            c.GEN_AI_PROVIDER_NAME: self.provider,
            c.GEN_AI_REQUEST_MODEL: self.model,
            **self.attributes,
            c.CHATTER_CALL_ID: call_id,
        }
        if self.streaming:
            attrs[c.GEN_AI_REQUEST_STREAM] = True
        turn = _turn.get()
        if turn is not None and turn.conversation_id:
            attrs[c.GEN_AI_CONVERSATION_ID] = turn.conversation_id
            attrs[c.CHATTER_CONVERSATION_ID] = turn.conversation_id
        span = runtime.tracer.start_span(
            f"{self.operation} {self.model}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=start_time,
        )
        self._started = time.perf_counter()
        parent = context if context is not None else otel_context.get_current()
        return span, ModelCall(
            span, self.provider, self.model, self.operation, call_id=call_id, parent_context=parent
        )

    def start(self, context: Context | None = None, *, start_time: int | None = None) -> ModelCall:
        """Start the span without making it current (for callbacks, which cannot attach a
        context safely); end it with :meth:`finish`."""
        self._span, self._handle = self._start(context, start_time)
        return self._handle

    def finish(self, exc: BaseException | None = None, *, end_time: int | None = None) -> None:
        """End a span opened by :meth:`start`, as leaving the ``with`` block would."""
        assert self._span is not None
        try:
            self._close(exc)
        except Exception:  # telemetry must never break the application
            logger.debug("closing span failed", exc_info=True)
        finally:
            self._span.end(end_time)

    def _close(self, exc: BaseException | None) -> None:
        assert self._span is not None and self._handle is not None
        if self._call_token is not None:
            # ValueError: closed from another context (a generator closed elsewhere).
            with contextlib.suppress(ValueError):
                _current_call.reset(self._call_token)
            self._call_token = None
        call, runtime = self._handle, _runtime.get()
        attrs = call._metric_attrs()
        if exc is not None:
            _fail(self._span, exc, genai_client=True)
            attrs[c.ERROR_TYPE] = _error_type(exc)
        if not call._recorded and exc is None:
            # The caller never recorded a response: usage is unknown, not zero.
            self._span.set_attribute(c.CHATTER_USAGE_MISSING, True)
        runtime.instruments.operation_duration.record(time.perf_counter() - self._started, attrs)
        call._record_chunk_timing(call._metric_attrs())


class tool_span(_Scope[Span]):
    """``execute_tool {name}``: one tool call made on the model's behalf.

    ``arguments`` (and the result, through :func:`record_tool_result`) are content: they
    reach the span only when content capture is on.
    """

    def __init__(
        self,
        name: str,
        *,
        call_id: str | None = None,
        description: str | None = None,
        tool_type: str = c.TOOL_TYPE_FUNCTION,
        arguments: Any = None,
    ) -> None:
        super().__init__(
            name,
            call_id=call_id,
            description=description,
            tool_type=tool_type,
            arguments=arguments,
        )
        self.name, self.call_id = name, call_id
        self.description, self.tool_type, self.arguments = description, tool_type, arguments

    def _open(self) -> tuple[Span, Span]:
        attrs: dict[str, AttributeValue] = {
            c.GEN_AI_OPERATION_NAME: c.OPERATION_EXECUTE_TOOL,
            c.GEN_AI_TOOL_NAME: self.name,
            c.GEN_AI_TOOL_TYPE: self.tool_type,
        }
        if self.call_id:
            attrs[c.GEN_AI_TOOL_CALL_ID] = self.call_id
        if self.description:
            attrs[c.GEN_AI_TOOL_DESCRIPTION] = self.description
        if self.arguments is not None and _runtime.get().capture_content:
            attrs[c.GEN_AI_TOOL_CALL_ARGUMENTS] = content.json_value(self.arguments)
        span = _runtime.get().tracer.start_span(
            f"{c.OPERATION_EXECUTE_TOOL} {self.name}", kind=SpanKind.INTERNAL, attributes=attrs
        )
        return span, span

    def _close(self, exc: BaseException | None) -> None:
        if exc is not None and self._span is not None:
            _fail(self._span, exc)


def record_tool_result(span: Span, result: Any) -> None:
    """Put a tool's result on its ``execute_tool`` span, only when content capture is on."""
    if _runtime.get().capture_content:
        span.set_attribute(c.GEN_AI_TOOL_CALL_RESULT, content.json_value(result))


def record_ai_message(call: ModelCall, message: Any) -> Response:
    """Record a LangChain ``AIMessage`` (or summed stream chunks) on a model span."""
    return call.record(message)
