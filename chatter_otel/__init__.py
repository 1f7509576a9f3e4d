"""chatter-otel: OpenTelemetry tracing, metrics and usage write-back for Chatter.

One call wires it up::

    telemetry = chatter_otel.setup_telemetry()
    telemetry.instrument_app(app)

and the span helpers mark a chat turn, its model calls and its tool calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatter_otel._workflow_run import WorkflowRun
from chatter_otel.binding import bind_message
from chatter_otel.config import ConfigError, TelemetryConfig
from chatter_otel.logs import add_trace_context, configure_logging
from chatter_otel.spans import (
    ModelCall,
    model_span,
    record_ai_message,
    record_tool_result,
    tool_span,
    workflow_span,
)
from chatter_otel.telemetry import Telemetry, setup_telemetry
from chatter_otel.usage import Usage
from chatter_otel.version import __version__

if TYPE_CHECKING:
    from chatter_otel.pricing import Pricing
    from chatter_otel.writeback import WritebackSpanProcessor

__all__ = [
    "ConfigError",
    "ModelCall",
    "Pricing",
    "Telemetry",
    "TelemetryConfig",
    "Usage",
    "WorkflowRun",
    "WritebackSpanProcessor",
    "__version__",
    "add_trace_context",
    "bind_message",
    "configure_logging",
    "model_span",
    "record_ai_message",
    "record_tool_result",
    "setup_telemetry",
    "tool_span",
    "workflow_span",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the write-back pulls in database drivers.
    if name == "WritebackSpanProcessor":
        from chatter_otel.writeback import WritebackSpanProcessor

        return WritebackSpanProcessor
    if name == "Pricing":
        from chatter_otel.pricing import Pricing

        return Pricing
    raise AttributeError(name)
