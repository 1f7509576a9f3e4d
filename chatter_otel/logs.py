"""Log correlation: every record emitted inside a span carries its trace and span ids.

Stdlib records get ``otelTraceID``/``otelSpanID`` from opentelemetry-instrumentation-logging;
the structlog processor and the formatters here expose them as ``trace_id``/``span_id``,
the names people paste into Jaeger's search box.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

_INVALID = "0" * 32


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: adds ``trace_id`` and ``span_id`` of the current span."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def _record_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """For stdlib records rendered by structlog: take the ids the record factory injected."""
    record = event_dict.get("_record")
    if record is not None:
        trace_id = getattr(record, "otelTraceID", None)
        if trace_id and trace_id != "0" and trace_id != _INVALID:
            event_dict.setdefault("trace_id", trace_id)
            event_dict.setdefault("span_id", record.otelSpanID)
    return add_trace_context(logger, method_name, event_dict)


def configure_logging(fmt: str = "console", level: str = "INFO") -> logging.Handler:
    """Route stdlib and structlog through one handler, rendering JSON or console lines."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _record_ids,
    ]
    # Plain tracebacks: the rich renderer with locals takes seconds per error, on the loop.
    renderers: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    structlog.configure(
        processors=[
            *shared[:4],
            add_trace_context,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("chatter_otel")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "chatter_otel":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
