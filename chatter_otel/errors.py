"""How a failed operation is recorded: span status, ``error.type``, the exception once.

Follows "Recording errors" and the exception conventions (v1.41.1):

- status ``ERROR`` with the exception's message as description (not the type again);
- ``error.type`` = the exception's class name, on the span and on the duration metric;
- the exception itself recorded ONCE, on the innermost chatter-otel span it escaped from
  (a chat call's failure that fails its workflow too is not recorded twice), without the
  deprecated ``exception.escaped`` (the SDK's ``record_exception`` always adds it);
- where: ``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN`` as the conventions define it. Unset: an
  ``exception`` span event (the existing behaviour). ``logs``: a log record instead, in the
  span's context, severity WARN; a chat call's is the GenAI event
  ``gen_ai.client.operation.exception``, others the generic ``exception``. ``logs/dup``: both.
  Log records need an OpenTelemetry API whose ``Logger.emit`` takes keywords (1.39 and
  later); on an older one the opt-in is ignored with one warning and span events stay.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import traceback
from typing import Final

from opentelemetry import trace
from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.trace import Span, Status, StatusCode

from chatter_otel import conventions as c

SIGNAL_OPT_IN: Final = "OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN"
_LOGS: Final = "logs"
_LOGS_DUP: Final = "logs/dup"
_RECORDED: Final = "_chatter_otel_recorded"
"""Marks an exception already recorded: enclosing spans set their status only."""
_DESCRIPTION_LIMIT: Final = 500
EMITS_LOG_RECORDS: Final = "exception" in inspect.signature(Logger.emit).parameters
"""Whether this OpenTelemetry API emits a log record from keywords (with the exception)."""
_warned_old_api: list[bool] = []
_log = logging.getLogger("chatter_otel")


def _signal_mode() -> str:
    mode = os.environ.get(SIGNAL_OPT_IN, "").strip()
    if mode in (_LOGS, _LOGS_DUP) and not EMITS_LOG_RECORDS:
        if not _warned_old_api:
            _warned_old_api.append(True)
            _log.warning(
                "%s=%s needs opentelemetry-api >= 1.39 (Logger.emit with keywords); "
                "exceptions stay span events",
                SIGNAL_OPT_IN,
                mode,
            )
        return ""
    return mode


def error_type(exc: BaseException) -> str:
    """Low-cardinality error identifier: the exception's class name."""
    return type(exc).__qualname__


def exception_type(exc: BaseException) -> str:
    """``exception.type``: the fully-qualified class name (as the SDK's log records have it)."""
    module, name = type(exc).__module__, type(exc).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name


def fail(span: Span, exc: BaseException, logger: Logger, *, genai_client: bool = False) -> None:
    """Mark ``span`` failed by ``exc`` and record the exception if no inner span did."""
    message = str(exc)
    span.set_status(Status(StatusCode.ERROR, message[:_DESCRIPTION_LIMIT] or None))
    span.set_attribute(c.ERROR_TYPE, error_type(exc))
    if getattr(exc, _RECORDED, False):
        return
    # An exception type that refuses attributes may be recorded twice: harmless.
    with contextlib.suppress(AttributeError):
        setattr(exc, _RECORDED, True)
    mode = _signal_mode()
    if mode != _LOGS:
        span.add_event(
            "exception",
            {
                c.EXCEPTION_TYPE: exception_type(exc),
                c.EXCEPTION_MESSAGE: message,
                c.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exc)),
            },
        )
    if mode in (_LOGS, _LOGS_DUP):
        logger.emit(
            context=trace.set_span_in_context(span),
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            event_name=c.EVENT_GEN_AI_CLIENT_OPERATION_EXCEPTION if genai_client else "exception",
            exception=exc,
        )
