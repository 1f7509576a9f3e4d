"""Zero-code capture of LangChain model and tool calls as chatter-otel spans.

Switched on by ``CHATTER_OTEL_CAPTURE_LANGCHAIN=true`` (``setup_telemetry``), by
``telemetry.capture_langchain()``, or by ``opentelemetry-instrument`` through the
``opentelemetry_instrumentor`` entry point. It installs one callback handler for every
LangChain run in the process through LangChain's own ``register_configure_hook``, so every
chat model call (invoke, ainvoke, stream, astream, batch, with tools bound, inside LangGraph
or not) gets the ``chat {model}`` span a hand-written ``model_span`` would give, recorded by
the same ``ModelCall.record``: usage, cost, metrics and the write-back are identical. A plain
(completion, ``BaseLLM``) model's call gets a ``text_completion {model}`` span the same way,
its usage read from the ``LLMResult`` (see ``_completion``).

Each call counts once:

* inside an open hand-made ``model_span`` that has not recorded yet, the call is recorded
  into that span (and names it with the run id) instead of opening a second one;
* every span carries ``chatter.call.id`` = the LangChain run id (32 hex characters), and the
  span another LangChain instrumentation (openinference) opens for the same run gets the same
  id: directly when its handler ran first, else in :class:`CallIdTagger`'s ``on_start``.

The handler never attaches an OpenTelemetry context (a callback cannot promise to detach it):
its spans are children of whatever span is current where the model is called. Importing this
module imports ``langchain_core``; ``import chatter_otel`` does not.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import Span

from chatter_otel import _chat_model, _completion, _peers
from chatter_otel import conventions as c
from chatter_otel._model_call import ModelCall, _current_call
from chatter_otel.spans import model_span, record_tool_result, tool_span

logger = logging.getLogger("chatter_otel")


@dataclass(slots=True)
class _Run:
    call: ModelCall
    scope: model_span | None
    """None when the call was recorded into a hand-made ``model_span`` (it ends that span)."""
    pending: _peers.Pending
    streamed: bool = False


class ChatterCallbackHandler(BaseCallbackHandler):
    """Opens and ends chatter-otel spans from LangChain's model and tool callbacks.

    Synchronous and ``run_inline``: in async code LangChain would otherwise hand every
    callback to a thread pool; each callback here only starts or ends a span.
    """

    run_inline = True
    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self._runs: dict[UUID, _Run] = {}
        self._tools: dict[UUID, tuple[tool_span, Span]] = {}

    # Chains, retrievers and the rest are not dispatched to this handler at all; when
    # disabled, nothing is.
    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    @property
    def ignore_llm(self) -> bool:
        return not self.enabled

    @property
    def ignore_chat_model(self) -> bool:
        return not self.enabled

    @property
    def ignore_agent(self) -> bool:  # LangChain sends tool callbacks under this flag
        return not self.enabled

    # LangGraph sends its graph lifecycle events to every handler.
    def on_interrupt(self, event: Any) -> None:
        pass

    def on_resume(self, event: Any) -> None:
        pass

    # --- chat models --------------------------------------------------------------------
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._start(serialized, messages, run_id, metadata, kwargs, c.OPERATION_CHAT)
        except Exception:  # telemetry must never break the application
            logger.debug("LangChain capture: starting a model span failed", exc_info=True)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A plain (completion) model: LangChain starts one run per prompt."""
        try:
            messages = [[{"role": "user", "content": p} for p in prompts[:1]]]
            self._start(serialized, messages, run_id, metadata, kwargs, c.OPERATION_TEXT_COMPLETION)
        except Exception:  # telemetry must never break the application
            logger.debug("LangChain capture: starting a model span failed", exc_info=True)

    def _start(
        self,
        serialized: Mapping[str, Any] | None,
        messages: Sequence[Sequence[Any]],
        run_id: UUID,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        operation: str,
    ) -> None:
        call_id = run_id.hex
        pending = _peers.Pending(call_id)
        _peers.dispatching.set(pending)
        other = _peers.other_span(run_id)
        if other is not None:
            other.set_attribute(c.CHATTER_CALL_ID, call_id)
            pending.used = True
        current = _current_call.get()
        if current is not None and not current.adopted and not current._recorded:
            current.adopted = True
            current.set_call_id(call_id)
            self._runs[run_id] = _Run(current, None, pending)
            return
        info = _chat_model.from_run(serialized, kwargs.get("invocation_params"), metadata)
        scope = model_span(
            provider=info.provider,
            model=info.model,
            operation=operation,
            attributes=info.attributes(),
            call_id=call_id,
        )
        # Inside a hand-made span that already holds another call: start beside it, so
        # neither looks like a roll-up of the other.
        context = current.parent_context if current is not None else None
        # Same start as the other instrumentation's span for this run when it opened first.
        start_time = getattr(other, "start_time", None) if isinstance(other, SdkSpan) else None
        call = scope.start(context, start_time=start_time)
        if messages:
            call.record_input(messages[0])
        self._runs[run_id] = _Run(call, scope, pending)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        run.call.on_chunk()
        if not run.streamed:
            run.streamed = True
            if run.scope is not None:
                run.call.span.set_attribute(c.GEN_AI_REQUEST_STREAM, True)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        run.pending.used = True
        try:
            message = _message(response)
            if message is not None:
                run.call.record(message)
        except Exception:
            logger.debug("LangChain capture: recording a response failed", exc_info=True)
        if run.scope is None:
            return
        other = _peers.other_span(run_id) if _peers.tagging else None
        if isinstance(other, SdkSpan) and other.end_time is None:
            # The other instrumentation's span for this run ends after ours: ours ends with
            # it, so the two spans of one call nest in time (CallIdTagger.on_end).
            _peers.defer(run.call.call_id, run.scope)
            return
        run.scope.finish(None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        run.pending.used = True
        try:
            # A stream cut short still reports what arrived; usage, if the provider sent it.
            partial = kwargs.get("response")
            message = _message(partial) if isinstance(partial, LLMResult) else None
            if message is not None and getattr(message, "usage_metadata", None):
                run.call.record(message)
        except Exception:
            logger.debug("LangChain capture: recording a partial response failed", exc_info=True)
        if run.scope is not None:
            run.scope.finish(error)

    # --- tools --------------------------------------------------------------------------
    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            serialized = serialized or {}
            name = kwargs.get("name") or serialized.get("name") or "tool"
            call_id = kwargs.get("tool_call_id")
            description = serialized.get("description")
            scope = tool_span(
                str(name),
                call_id=call_id if isinstance(call_id, str) else None,
                description=description if isinstance(description, str) and description else None,
                arguments=inputs if inputs is not None else input_str,
            )
            span, _ = scope._open()
            scope._span = span
            self._tools[run_id] = (scope, span)
        except Exception:
            logger.debug("LangChain capture: starting a tool span failed", exc_info=True)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        entry = self._tools.pop(run_id, None)
        if entry is None:
            return
        scope, span = entry
        # LangChain < 1 passes no tool call id at the start; the ToolMessage carries it.
        call_id = getattr(output, "tool_call_id", None)
        if isinstance(call_id, str) and call_id and scope.call_id is None:
            span.set_attribute(c.GEN_AI_TOOL_CALL_ID, call_id)
        record_tool_result(span, getattr(output, "content", output))
        span.end()

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        entry = self._tools.pop(run_id, None)
        if entry is None:
            return
        scope, span = entry
        try:
            scope._close(error)
        finally:
            span.end()


def _message(response: LLMResult) -> Any:
    """The one message a model run produced (a stream's chunks already summed); a plain
    model's text generation read as one."""
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                return generation.message
            return _completion.from_generation(generation, response.llm_output)
    return None


_lock = threading.Lock()
_handler: ChatterCallbackHandler | None = None


class _Switch:
    """What ``register_configure_hook`` is given in place of a ``ContextVar``.

    LangChain only calls ``.get()`` on it when it configures a run's callbacks: the handler
    while the capture is on, else None, so a disabled capture adds nothing to any run. A real
    ContextVar would not do: a value set in one thread or task is not seen in the others,
    and its default cannot be changed back once set.
    """

    def get(self) -> ChatterCallbackHandler | None:
        handler = _handler
        return handler if handler is not None and handler.enabled else None


_switch = _Switch()


def enable() -> ChatterCallbackHandler:
    """Capture every LangChain chat model and tool call from now on (idempotent); the
    handler is registered with LangChain's ``register_configure_hook`` once per process."""
    global _handler
    with _lock:
        if _handler is None:
            from langchain_core.tracers.context import register_configure_hook

            _handler = ChatterCallbackHandler()
            # Duck-typed: LangChain only calls .get() (see _Switch).
            register_configure_hook(cast("contextvars.ContextVar[Any]", _switch), inheritable=True)
        _handler.enabled = True
        return _handler


def disable() -> None:
    """Stop capturing: LangChain no longer adds the handler to new runs."""
    with _lock:
        if _handler is not None:
            _handler.enabled = False


def enabled() -> bool:
    return _handler is not None and _handler.enabled


class LangChainCaptureInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The ``opentelemetry-instrument`` entry point: switches the capture on, and keeps
    content out of openinference's spans unless content capture is asked for."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("langchain-core >= 0.3.75",)

    def _instrument(self, **kwargs: Any) -> None:
        enable()
        _peers.add_tagger(kwargs.get("tracer_provider") or trace.get_tracer_provider())
        _peers.hide_openinference_content()

    def _uninstrument(self, **kwargs: Any) -> None:
        disable()
