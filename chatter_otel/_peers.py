"""How the LangChain capture and other LangChain instrumentations agree on a call's identity.

openinference (and OpenLLMetry) open a span of their own for each LangChain run. Such a span
gets the run's ``chatter.call.id``: directly, when its handler ran before ours
(:func:`other_span`), or in :class:`CallIdTagger`'s ``on_start`` when it runs after ours
(the start being dispatched is in a context variable its callback inherits). When ours ends
first, our span waits for theirs (:func:`defer`), so the two spans of one call nest in time.
openinference's content is hidden here too, whichever of the two was instrumented first.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import Span

from chatter_otel import conventions as c

if TYPE_CHECKING:
    from chatter_otel.spans import model_span

OTHER_SCOPES: Final = (
    "openinference.instrumentation.langchain",
    "opentelemetry.instrumentation.langchain",
)
"""Instrumentations that open a span per LangChain run, tagged with the run's call id."""


@dataclass(slots=True)
class Pending:
    """The run whose start is being dispatched, for a handler that runs after ours."""

    call_id: str
    used: bool = False


dispatching: contextvars.ContextVar[Pending | None] = contextvars.ContextVar(
    "chatter_langchain_dispatching", default=None
)


_TRUE: Final = ("true", "1", "yes", "on")
_lock = threading.Lock()
_deferred: dict[str, model_span] = {}
"""Our spans waiting for the other instrumentation's span of the same call to end."""
tagging = False
"""A CallIdTagger is installed (it ends deferred spans)."""


def defer(call_id: str, scope: model_span) -> None:
    """End ``scope`` when the other instrumentation's span of the call ends."""
    with _lock:
        _deferred[call_id] = scope


def other_span(run_id: UUID) -> Span | None:
    """openinference's span for this run, when its handler has already opened it."""
    module = sys.modules.get("openinference.instrumentation.langchain")
    if module is None:
        return None
    instrumentor = module.LangChainInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        return None
    span: Span | None = instrumentor.get_span(run_id)
    return span


class CallIdTagger(SpanProcessor):
    """Gives the span another LangChain instrumentation starts for a run the run's
    ``chatter.call.id``, when that instrumentation's handler runs after ours."""

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        pending = dispatching.get()
        if pending is None or pending.used:
            return
        scope = getattr(span, "instrumentation_scope", None)
        if scope is not None and scope.name in OTHER_SCOPES:
            pending.used = True
            span.set_attribute(c.CHATTER_CALL_ID, pending.call_id)

    def on_end(self, span: ReadableSpan) -> None:
        if not _deferred:
            return
        scope = span.instrumentation_scope
        if scope is None or scope.name not in OTHER_SCOPES:
            return
        call_id = (span.attributes or {}).get(c.CHATTER_CALL_ID)
        with _lock:
            ours = _deferred.pop(call_id, None) if isinstance(call_id, str) else None
        if ours is not None:
            ours.finish(None, end_time=span.end_time)


def add_tagger(tracer_provider: Any) -> None:
    """Install :class:`CallIdTagger` on an SDK tracer provider (once per provider)."""
    global tagging
    add = getattr(tracer_provider, "add_span_processor", None)
    if add is None or getattr(tracer_provider, "_chatter_call_id_tagger", False):
        return
    add(CallIdTagger())
    tracer_provider._chatter_call_id_tagger = True
    tagging = True


OPENINFERENCE_HIDE: Final = (
    "OPENINFERENCE_HIDE_INPUTS",
    "OPENINFERENCE_HIDE_OUTPUTS",
    "OPENINFERENCE_HIDE_INPUT_MESSAGES",
    "OPENINFERENCE_HIDE_OUTPUT_MESSAGES",
    "OPENINFERENCE_HIDE_INPUT_TEXT",
    "OPENINFERENCE_HIDE_OUTPUT_TEXT",
    "OPENINFERENCE_HIDE_PROMPTS",
    "OPENINFERENCE_HIDE_CHOICES",
    "OPENINFERENCE_HIDE_LLM_INVOCATION_PARAMETERS",
)


def hide_openinference_content() -> None:
    """Prompts and completions stay out of openinference's spans unless
    ``CHATTER_OTEL_CAPTURE_CONTENT`` is true, whichever instrumentor
    ``opentelemetry-instrument`` loads first: its variables are defaulted for an
    openinference instrumented later, and one instrumented already is instrumented again.
    """
    if os.environ.get("CHATTER_OTEL_CAPTURE_CONTENT", "").strip().lower() in _TRUE:
        return
    for name in OPENINFERENCE_HIDE:
        os.environ.setdefault(name, "true")
    module = sys.modules.get("openinference.instrumentation.langchain")
    if module is None:
        return
    instrumentor = module.LangChainInstrumentor()
    tracer = getattr(getattr(instrumentor, "_tracer", None), "_tracer", None)
    config = getattr(tracer, "_self_config", None)
    if instrumentor.is_instrumented_by_opentelemetry and not getattr(config, "hide_inputs", True):
        instrumentor.uninstrument()
        instrumentor.instrument()  # its TraceConfig reads the variables again
