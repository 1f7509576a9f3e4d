"""``setup_telemetry``: one call that wires tracing, metrics, logs and the write-back.

If an SDK TracerProvider or MeterProvider is already installed (``opentelemetry-instrument``
or the host application), chatter-otel adds its processors and instruments to it instead
of replacing it: two providers would split one trace in two.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogExporter
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from sqlalchemy.engine import URL

from chatter_otel import _runtime, dburl
from chatter_otel.config import ConfigError, TelemetryConfig, dburl_safe
from chatter_otel.logs import configure_logging
from chatter_otel.writeback.sampling import AlwaysRecordSampler

logger = logging.getLogger("chatter_otel")

SHUTDOWN_TIMEOUT_MS = 20_000


def _bounded(stop: Callable[[], object], deadline: float, what: str) -> None:
    """Runs ``stop`` but waits for it only until ``deadline``; a stuck exporter is left
    behind (its thread is a daemon) and logged, never waited for."""
    thread = threading.Thread(target=stop, name=f"chatter-otel-stop-{what}", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        logger.warning("%s did not stop before the shutdown deadline; abandoned", what)


_lock = threading.Lock()
_active: Telemetry | None = None


def _installed(module: str) -> bool:
    """Whether an optional integration's module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _require(enabled: bool, variable: str, module: str, extra: str) -> None:
    """A switched-on integration whose package is missing stops start-up with one line."""
    if enabled and not _installed(module):
        raise ConfigError(variable, "true", f"false, or install 'chatter-otel[{extra}]'")


def _sampler(config: TelemetryConfig) -> Sampler:
    ratio = config.sampler_arg if config.sampler_arg is not None else 1.0
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }[config.sampler]
    return root


def _span_exporters(config: TelemetryConfig) -> list[Any]:
    exporters: list[Any] = []
    for name in config.traces_exporters:
        if name == "otlp":
            if config.traces_protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
    return exporters


def _metric_readers(config: TelemetryConfig) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in config.metrics_exporters:
        if name == "otlp":
            if config.metrics_protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
                    OTLPMetricExporter,
                )
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
    return readers


def _log_exporters(config: TelemetryConfig) -> list[Any]:
    exporters: list[Any] = []
    for name in config.logs_exporters:
        if name == "otlp":
            if config.logs_protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            else:
                from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
                    OTLPLogExporter,
                )
            exporters.append(OTLPLogExporter())
        elif name == "console":
            exporters.append(ConsoleLogExporter())
    return exporters


def exemplar_filter(config: TelemetryConfig) -> ExemplarFilter:
    """The SDK filter for ``config.effective_exemplar_filter``.

    Offering a measurement to the exemplar reservoir costs about a fifth of each record;
    on the Prometheus exposition (which drops exemplars) that is paid for nothing.
    """
    filters: dict[str, Callable[[], ExemplarFilter]] = {
        "trace_based": TraceBasedExemplarFilter,
        "always_on": AlwaysOnExemplarFilter,
        "always_off": AlwaysOffExemplarFilter,
    }
    return filters[config.effective_exemplar_filter]()


def _resource(config: TelemetryConfig) -> Resource:
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: config.service_name}))
    return resource


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

    def instrument_app(self, app: Any) -> None:
        """Server spans for a FastAPI app, the ``traceresponse`` header, and ``/metrics``."""
        app.add_middleware(TraceResponseMiddleware)
        if self.prometheus:
            app.add_route("/metrics", _prometheus_metrics, include_in_schema=False)
        if self.config.instrument_fastapi and self.tracer_provider is not None:
            if not _installed("opentelemetry.instrumentation.fastapi"):
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
        global _active
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
        with _lock:
            if _active is self:
                _active = None


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


def setup_telemetry(
    config: TelemetryConfig | None = None,
    *,
    writeback_url: str | URL | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    set_global: bool = True,
    configure_logs: bool = True,
    pricing: Any = None,
    **overrides: Any,
) -> Telemetry:
    """Configure tracing, metrics, logs and the write-back from the environment.

    ``writeback_url`` is the database the write-back fills, as the app already holds it
    (a string or a SQLAlchemy ``URL``; ``postgresql+asyncpg://`` is fine): apps that read
    their settings from a ``.env`` file pass ``settings.database_url`` here, since the
    environment variables would not be set. Keyword ``overrides`` replace fields of
    ``TelemetryConfig`` (arguments beat the environment). Idempotent: a second call
    returns the active handle. Raises ``ConfigError`` with one line naming the bad value.
    """
    global _active
    with _lock:
        if _active is not None:
            return _active
        config = config or TelemetryConfig.from_env(**overrides)
        if writeback_url is not None:
            config = replace(config, writeback_url=_checked_url(writeback_url))
        handle = _build(
            config, tracer_provider, meter_provider, set_global, configure_logs, pricing
        )
        _active = handle
        return handle


def _checked_url(url: str | URL) -> str:
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    try:
        dburl.parse(url)
    except dburl.DatabaseURLError:
        raise ConfigError("writeback_url", dburl_safe(str(url)), dburl.ACCEPTED) from None
    return url


def _build(
    config: TelemetryConfig,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    set_global: bool,
    configure_logs: bool,
    pricing: Any,
) -> Telemetry:
    from chatter_otel.pricing import Pricing, PricingError

    if pricing is None:
        try:
            pricing = Pricing(config.prices_file)
        except PricingError as exc:
            raise ConfigError(
                "CHATTER_OTEL_PRICES_FILE", str(config.prices_file), f"a valid price file ({exc})"
            ) from None
    _require(
        config.instrument_langchain,
        "CHATTER_OTEL_INSTRUMENT_LANGCHAIN",
        "openinference.instrumentation.langchain",
        "openinference",
    )
    _require(
        config.capture_langchain, "CHATTER_OTEL_CAPTURE_LANGCHAIN", "langchain_core", "langchain"
    )
    _require(
        config.instrument_sqlalchemy,
        "CHATTER_OTEL_INSTRUMENT_SQLALCHEMY",
        "opentelemetry.instrumentation.sqlalchemy",
        "sqlalchemy-instrumentation",
    )
    if configure_logs:
        configure_logging(config.log_format, config.log_level)
    if config.instrument_fastapi:
        from chatter_otel.http_semconv import prefer_stable_http

        prefer_stable_http()  # before any instrumentation reads the opt-in (once per process)
    handle = Telemetry(config=config)
    # Exactly one line says whether usage reaches the database, so a write-back left off
    # by a missing URL (a .env the library never reads) is seen at start-up.
    logger.info("%s", config.writeback_status())
    if config.sdk_disabled:
        logger.warning("OTEL_SDK_DISABLED=true: no spans, no metrics, no usage write-back")
        _runtime.install(
            _runtime.Runtime.create(pricing=pricing, known_models=frozenset(config.known_models))
        )
        return handle
    resource = _resource(config)

    existing_mp = metrics.get_meter_provider()
    if meter_provider is None and isinstance(existing_mp, MeterProvider):
        meter_provider = existing_mp
    if meter_provider is None:
        readers = _metric_readers(config)
        handle.prometheus = any(type(r).__name__ == "PrometheusMetricReader" for r in readers)
        meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, exemplar_filter=exemplar_filter(config)
        )
        handle._owned.append(meter_provider)
        if set_global:
            metrics.set_meter_provider(meter_provider)
    handle.meter_provider = meter_provider

    existing_tp = trace.get_tracer_provider()
    if tracer_provider is None and isinstance(existing_tp, TracerProvider):
        tracer_provider = existing_tp
        if config.writeback_enabled and config.writeback_url:
            logger.warning(
                "reusing an installed TracerProvider: its sampler decides what the write-back "
                "sees; wrap it in chatter_otel.writeback.AlwaysRecordSampler to count every turn"
            )
    if tracer_provider is None:
        sampler = _sampler(config)
        if config.writeback_enabled and config.writeback_url:
            # The write-back must see every turn; only the sample is exported.
            sampler = AlwaysRecordSampler(sampler)
        tracer_provider = TracerProvider(resource=resource, sampler=sampler)
        handle._owned.append(tracer_provider)
        if set_global:
            trace.set_tracer_provider(tracer_provider)
    handle.tracer_provider = tracer_provider

    if config.writeback_enabled and config.writeback_url:
        from chatter_otel.writeback import WritebackSpanProcessor

        handle.writeback = WritebackSpanProcessor(
            config.writeback_url,
            pricing=pricing,
            flush_interval=config.writeback_flush_interval_s,
            message_ttl=config.writeback_message_ttl_s,
            max_queue=config.writeback_max_queue,
            spool_path=config.writeback_spool_path,
            meter_provider=meter_provider,
        )
        tracer_provider.add_span_processor(handle.writeback)
        handle._processors.append(handle.writeback)
    for exporter in _span_exporters(config):
        processor = BatchSpanProcessor(exporter)
        tracer_provider.add_span_processor(processor)
        handle._processors.append(processor)

    log_exporters = _log_exporters(config)
    if log_exporters:
        logger_provider = LoggerProvider(resource=resource)
        for exporter in log_exporters:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        log_handler = _logging_handler(logger_provider)
        logging.getLogger().addHandler(log_handler)
        handle.logger_provider = logger_provider
        handle._owned.append(logger_provider)
        handle._uninstrument.append(lambda: logging.getLogger().removeHandler(log_handler))

    if config.log_correlation:
        from opentelemetry.instrumentation.logging import LoggingInstrumentor

        instrumentor = LoggingInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=tracer_provider,
                inject_trace_context=True,
                # Before 0.64b0 the ids are always injected, and this alone keeps it from
                # calling logging.basicConfig when OTEL_PYTHON_LOG_CORRELATION is set.
                set_logging_format=False,
                enable_log_auto_instrumentation=False,
            )
            handle._uninstrument.append(instrumentor.uninstrument)

    if config.instrument_langchain:
        _instrument_langchain(handle, tracer_provider, config)
    if config.capture_langchain:
        handle.capture_langchain()

    _runtime.install(
        _runtime.Runtime.create(
            tracer_provider,
            meter_provider,
            pricing=pricing,
            capture_content=config.capture_content,
            known_models=frozenset(config.known_models),
            logger_provider=handle.logger_provider,
        )
    )
    return handle


def _logging_handler(logger_provider: LoggerProvider) -> logging.Handler:
    """The OTel logs bridge: in opentelemetry-instrumentation-logging since 0.64b0, in the
    SDK (now deprecated there) before."""
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
    except ImportError:  # opentelemetry-instrumentation-logging < 0.64b0
        from opentelemetry.sdk._logs import LoggingHandler  # type: ignore[assignment]
    return LoggingHandler(logger_provider=logger_provider)


def _instrument_langchain(
    handle: Telemetry, tracer_provider: TracerProvider, config: TelemetryConfig
) -> None:
    from openinference.instrumentation import TraceConfig
    from openinference.instrumentation.langchain import LangChainInstrumentor

    hide = None if config.capture_content else True
    trace_config = TraceConfig(
        hide_inputs=hide,
        hide_outputs=hide,
        hide_input_messages=hide,
        hide_output_messages=hide,
        hide_input_text=hide,
        hide_output_text=hide,
        hide_prompts=hide,
        hide_choices=hide,
        hide_llm_invocation_parameters=hide,
    )
    instrumentor = LangChainInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=tracer_provider, config=trace_config)
    # openinference's handler is synchronous but leaves ``run_inline`` False, so in async
    # code LangChain sends each of its callbacks (start and end of every graph node, chain,
    # LLM and tool run) through ``loop.run_in_executor`` and the turn waits for a thread-pool
    # round trip each time. LangChain's own tracer runs inline; openinference's handler only
    # starts and ends spans (under its own lock), which is safe on the event loop.
    # benchmarks/turn_overhead.py measures the difference (about 1.5x faster turns).
    handler = getattr(instrumentor, "_tracer", None)
    if handler is not None:
        handler.run_inline = True
    handle._uninstrument.append(instrumentor.uninstrument)


def active() -> Telemetry | None:
    """The handle of the running ``setup_telemetry``, if any."""
    return _active
