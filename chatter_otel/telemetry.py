"""``setup_telemetry``: one call that wires tracing, metrics, logs and the write-back.

If an SDK TracerProvider or MeterProvider is already installed (``opentelemetry-instrument``
or the host application), chatter-otel adds its processors and instruments to it instead
of replacing it: two providers would split one trace in two. The SDK parts are built in
:mod:`._providers`; the handle it returns is :class:`._handle.Telemetry`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.engine import URL

from chatter_otel import _handle, _providers, _runtime, dburl
from chatter_otel._handle import (
    SHUTDOWN_TIMEOUT_MS,
    Telemetry,
    TraceResponseMiddleware,
    active,
    installed,
)
from chatter_otel._providers import exemplar_filter
from chatter_otel.config import ConfigError, TelemetryConfig, dburl_safe
from chatter_otel.logs import configure_logging
from chatter_otel.writeback.sampling import AlwaysRecordSampler

__all__ = [
    "SHUTDOWN_TIMEOUT_MS",
    "Telemetry",
    "TraceResponseMiddleware",
    "active",
    "exemplar_filter",
    "setup_telemetry",
]

logger = logging.getLogger("chatter_otel")


def _require(enabled: bool, variable: str, module: str, extra: str) -> None:
    """A switched-on integration whose package is missing stops start-up with one line."""
    if enabled and not installed(module):
        raise ConfigError(variable, "true", f"false, or install 'chatter-otel[{extra}]'")


def setup_telemetry(
    config: TelemetryConfig | None = None,
    *,
    writeback_url: str | URL | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    set_global: bool = True,
    configure_logs: bool = True,
    pricing: Any = None,
    app: Any = None,
    **overrides: Any,
) -> Telemetry:
    """Configure tracing, metrics, logs and the write-back from the environment.

    ``writeback_url`` is the database the write-back fills, as the app already holds it
    (a string or a SQLAlchemy ``URL``; ``postgresql+asyncpg://`` is fine): apps that read
    their settings from a ``.env`` file pass ``settings.database_url`` here, since the
    environment variables would not be set. ``app``, a FastAPI app, is instrumented as
    ``Telemetry.instrument_app`` does, so that set-up is one line. Keyword ``overrides``
    replace fields of ``TelemetryConfig`` (arguments beat the environment). Idempotent: a
    second call returns the active handle (instrumenting its ``app``, if new). Raises
    ``ConfigError`` with one line naming the bad value.
    """
    with _handle.lock:
        handle = _handle.active()
        if handle is None:
            config = config or TelemetryConfig.from_env(**overrides)
            if writeback_url is not None:
                config = replace(config, writeback_url=_checked_url(writeback_url))
            handle = _build(
                config, tracer_provider, meter_provider, set_global, configure_logs, pricing
            )
            _handle.set_active(handle)
    if app is not None:
        handle.instrument_app(app)
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
    resource = _providers.resource(config)

    existing_mp = metrics.get_meter_provider()
    if meter_provider is None and isinstance(existing_mp, MeterProvider):
        meter_provider = existing_mp
    if meter_provider is None:
        readers = _providers.metric_readers(config)
        handle.prometheus = any(type(r).__name__ == "PrometheusMetricReader" for r in readers)
        meter_provider = MeterProvider(
            resource=resource,
            metric_readers=readers,
            exemplar_filter=_providers.exemplar_filter(config),
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
        sampler = _providers.sampler(config)
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
    for exporter in _providers.span_exporters(config):
        processor = BatchSpanProcessor(exporter)
        tracer_provider.add_span_processor(processor)
        handle._processors.append(processor)

    log_exporters = _providers.log_exporters(config)
    if log_exporters:
        logger_provider = LoggerProvider(resource=resource)
        for exporter in log_exporters:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        log_handler = _providers.logging_handler(logger_provider)
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
