"""The handle ``setup_telemetry`` returns, and the one active handle of the process.

The handle flushes and shuts down what ``setup_telemetry`` started, within a deadline
(an orchestrator's grace period), and instruments a FastAPI app.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from chatter_otel import _runtime
from chatter_otel.config import TelemetryConfig

logger = logging.getLogger("chatter_otel")

SHUTDOWN_TIMEOUT_MS = 20_000

lock = threading.Lock()
"""Held while a handle is set up or cleared."""
_active: Telemetry | None = None


def active() -> Telemetry | None:
    """The handle of the running ``setup_telemetry``, if any."""
    return _active


def set_active(handle: Telemetry | None) -> None:
    """Caller holds :data:`lock`."""
    global _active
    _active = handle


def _bounded(stop: Callable[[], object], deadline: float, what: str) -> None:
    """Runs ``stop`` but waits for it only until ``deadline``; a stuck exporter is left
    behind (its thread is a daemon) and logged, never waited for."""
    thread = threading.Thread(target=stop, name=f"chatter-otel-stop-{what}", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        logger.warning("%s did not stop before the shutdown deadline; abandoned", what)


def installed(module: str) -> bool:
    """Whether an optional integration's module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


@dataclass
class Telemetry:
    """The handle ``setup_telemetry`` returns: flush, shut down, instrument an app."""

    config: TelemetryConfig
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    writeback: Any = None
    prometheus: bool = False
    _owned: list[Any] = field(default_factory=list)
    _processors: list[SpanProcessor] = field(default_factory=list)
    _uninstrument: list[Callable[[], None]] = field(default_factory=list)
    _stopped: bool = False
    _capturing: bool = False
    _apps: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def instrument_app(self, app: Any) -> None:
        """Server spans for a FastAPI app, the ``traceresponse`` header, and ``/metrics``.

        Once per app: ``setup_telemetry(app=app)`` and an explicit call may both reach it."""
        if app in self._apps:
            return
        self._apps.add(app)
        app.add_middleware(TraceResponseMiddleware)
        if self.prometheus:
            app.add_route("/metrics", _prometheus_metrics, include_in_schema=False)
        if self.config.instrument_fastapi and self.tracer_provider is not None:
            if not installed("opentelemetry.instrumentation.fastapi"):
                # The lean install has no FastAPI instrumentation: the app still runs,
                # the operator learns once why its server spans are missing.
                logger.warning(
                    "no server spans: opentelemetry-instrumentation-fastapi is not installed "
                    "(pip install 'chatter-otel[fastapi]', or set "
                    "CHATTER_OTEL_INSTRUMENT_FASTAPI=false)"
                )
                return
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            FastAPIInstrumentor.instrument_app(
                app,
                tracer_provider=self.tracer_provider,
                meter_provider=self.meter_provider,
                excluded_urls="healthz,metrics",
                exclude_spans=["receive", "send"],
            )
            self._uninstrument.append(lambda: FastAPIInstrumentor.uninstrument_app(app))

    def capture_langchain(self) -> None:
        """Spans for every LangChain chat model and tool call, no code in the nodes (what
        ``CHATTER_OTEL_CAPTURE_LANGCHAIN=true`` does); undone by ``shutdown``. Idempotent."""
        if self.tracer_provider is None or self._capturing:
            return
        from chatter_otel import _peers, langchain

        langchain.enable()
        _peers.add_tagger(self.tracer_provider)
        self._capturing = True
        self._uninstrument.append(langchain.disable)

    def instrument_sqlalchemy(self, engine: Any) -> None:
        """Spans for SQL statements, when ``CHATTER_OTEL_INSTRUMENT_SQLALCHEMY`` is on."""
        if not self.config.instrument_sqlalchemy or self.tracer_provider is None:
            return
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        target = getattr(engine, "sync_engine", engine)
        SQLAlchemyInstrumentor().instrument(engine=target, tracer_provider=self.tracer_provider)
        self._uninstrument.append(lambda: SQLAlchemyInstrumentor().uninstrument())

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is queued and write back every pending usage record."""
        ok = True
        for processor in self._processors:
            ok = processor.force_flush(timeout_millis) and ok
        if self.meter_provider is not None:
            ok = bool(self.meter_provider.force_flush(timeout_millis)) and ok
        if self.logger_provider is not None:
            ok = bool(self.logger_provider.force_flush(timeout_millis)) and ok
        return ok

    def shutdown(self, timeout_millis: int = SHUTDOWN_TIMEOUT_MS) -> None:
        """Drain and stop everything this handle started, within ``timeout_millis``.

        The write-back goes first (it holds accounting data; what it cannot write it
        spools). Exporters share what is left: a hanging Collector must not keep the
        process past its orchestrator's grace period (Kubernetes: 30 s). Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout_millis / 1000
        for undo in reversed(self._uninstrument):
            try:
                undo()
            except Exception:
                logger.debug("uninstrument failed", exc_info=True)
        if self.writeback is not None:
            writeback = self.writeback
            # Its own timeout ends before the deadline, leaving it time to spool the rest.
            budget = int(timeout_millis * 0.6)
            _bounded(lambda: writeback.shutdown(budget), deadline, "write-back")
        for processor in self._processors:
            if processor is not self.writeback:
                _bounded(processor.shutdown, deadline, type(processor).__name__)
        for owned in self._owned:
            _bounded(owned.shutdown, deadline, type(owned).__name__)
        _runtime.install(None)
        with lock:
            if _active is self:
                set_active(None)


async def _prometheus_metrics(_request: Any) -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class TraceResponseMiddleware:
    """Adds the W3C ``traceresponse`` header so a client can find its request's trace."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ctx = trace.get_current_span().get_span_context()
                if ctx.is_valid:
                    value = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
                    headers = list(message.get("headers", []))
                    headers.append((b"traceresponse", value.encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)
