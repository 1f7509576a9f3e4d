"""Spans for a chat workflow, its model calls and its tool calls.

Each helper is a context manager (sync and async) and a decorator. Names and attributes
follow the GenAI semantic conventions; usage, cost and model reach the span through
``ModelCall.record`` so the write-back processor and any backend read them from one place.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import uuid
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from chatter_otel import _runtime, binding, content
from chatter_otel import conventions as c
from chatter_otel._model_call import MAX_CHUNK_GAPS as MAX_CHUNK_GAPS  # re-exported
from chatter_otel._model_call import ModelCall as ModelCall  # re-exported
from chatter_otel._model_call import _current_call, _Turn, _turn
from chatter_otel._scope import _error_type, _fail, _Scope
from chatter_otel._workflow_run import WorkflowRun as WorkflowRun  # re-exported
from chatter_otel.usage import Response

__all__ = [
    "ModelCall",
    "WorkflowRun",
    "model_span",
    "record_ai_message",
    "record_tool_result",
    "tool_span",
    "workflow_span",
]


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


class model_span(_Scope[ModelCall]):
    """``chat {model}`` (CLIENT): one LLM call. Record its response with ``.record()``.

    Pass the LangChain model (``model_span(llm)``) or ``provider`` and ``model`` strings;
    explicit strings win over what is read from the model. A plain (completion) LangChain
    model makes it a ``text_completion {model}`` span unless ``operation`` says otherwise.
    With the LangChain capture on, a LangChain call made inside records into this span by
    itself.
    """

    def __init__(
        self,
        llm: Any = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        operation: str | None = None,
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
            operation = operation or info.operation
            extra = info.attributes()
        if not provider or not model:
            raise TypeError("model_span needs a chat model, or both provider= and model=")
        self.provider, self.model = provider, model
        self.operation = operation or c.OPERATION_CHAT
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
        self._end(exc, end_time)

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
