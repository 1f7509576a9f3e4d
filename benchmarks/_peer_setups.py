"""How each variant of the ``peers`` part is set up inside its runner process.

Each peer as its documentation tells a user to set it up, with every exporter writing into
an in-memory ``Sink`` instead of the network, and (``setup_defaults``) exactly as its quick
start shows it, for the untimed probe of what it reaches for unconfigured. Imported by
``_peer_runner`` after the network guard is in. The peers' packages exist only in their
venvs: they are imported inside the functions that use them (mypy in the project's venv
sees them as missing, ``ignore_missing_imports``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRICING_JSON = Path(__file__).resolve().parent / "peer_requirements" / "openlit-pricing.json"

_READERS: dict[int, Any] = {}
"""The in-memory metric reader of each meter provider built here, by provider id."""


@dataclass
class Sink:
    """What a variant's exporters received: everything while ``keep``, else a count."""

    keep: bool = False
    spans: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    exported: int = 0


@dataclass
class Setup:
    flush: Callable[[], None] = lambda: None
    metrics: Callable[[], list[dict[str, Any]]] = list
    wrap_turn: bool = False
    """Open chatter-otel's ``workflow_span`` around the turn, as its users do."""


def _span_exporter(sink: Sink) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Exporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> Any:
            sink.exported += len(spans)
            if sink.keep:
                sink.spans.extend(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return Exporter()


def _log_exporter(sink: Sink) -> Any:
    from opentelemetry.sdk._logs import export as logs_export

    base = getattr(logs_export, "LogRecordExporter", None) or logs_export.LogExporter
    success = getattr(logs_export, "LogRecordExportResult", None) or logs_export.LogExportResult

    class Exporter(base):  # type: ignore[misc, valid-type]
        def export(self, batch: Sequence[Any]) -> Any:
            if sink.keep:
                sink.logs.extend(batch)
            return success.SUCCESS

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    return Exporter()


def _providers(sink: Sink, *, set_global: bool, tracing: bool = True) -> tuple[Any, Any, Any]:
    """SDK tracer, meter and logger providers that export only into ``sink``; with
    ``set_global``, installed as the global ones (the tracer provider only if ``tracing``)."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(sink)))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(sink)))
    _READERS[id(meter_provider)] = reader
    if set_global:
        from opentelemetry import _logs, metrics, trace

        if tracing:
            trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
    return tracer_provider, meter_provider, logger_provider


def _flusher(*providers: Any) -> Callable[[], None]:
    def flush() -> None:
        for provider in providers:
            provider.force_flush(60_000)

    return flush


def _metric_points(meter_provider: Any) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        data = _READERS[id(meter_provider)].get_metrics_data()
        out: list[dict[str, Any]] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        value = getattr(p, "sum", None)
                        if value is None:
                            value = getattr(p, "value", None)
                        out.append(
                            {"name": m.name, "attributes": jsonable(p.attributes), "sum": value}
                        )
        return out

    return read


def setup(variant: str, sink: Sink) -> Setup:
    if variant == "none":
        return Setup()
    if variant == "chatter-otel":
        from chatter_otel.config import TelemetryConfig
        from chatter_otel.telemetry import setup_telemetry

        tracer_provider, meter_provider, _ = _providers(sink, set_global=False)
        telemetry = setup_telemetry(
            TelemetryConfig(
                traces_exporters=("none",),
                metrics_exporters=("none",),
                logs_exporters=("none",),
                capture_langchain=True,
                writeback_url=None,
            ),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            set_global=False,
            configure_logs=False,
        )
        return Setup(
            flush=_flusher(telemetry, tracer_provider),
            metrics=_metric_points(meter_provider),
            wrap_turn=True,
        )
    if variant == "openinference":
        from openinference.instrumentation.langchain import LangChainInstrumentor

        tracer_provider, _, _ = _providers(sink, set_global=False)
        LangChainInstrumentor().instrument(tracer_provider=tracer_provider)
        return Setup(flush=_flusher(tracer_provider))
    if variant == "openllmetry":
        from opentelemetry.instrumentation.langchain import LangchainInstrumentor

        tracer_provider, meter_provider, logger_provider = _providers(sink, set_global=False)
        LangchainInstrumentor().instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
        )
        return Setup(
            flush=_flusher(tracer_provider, logger_provider),
            metrics=_metric_points(meter_provider),
        )
    if variant == "traceloop":
        from traceloop.sdk import Traceloop

        # Traceloop builds its own tracer provider around the exporter it is given (its
        # documented way to export elsewhere); the app's meter and logger providers are
        # global, as in an app that already has OpenTelemetry metrics.
        _, meter_provider, logger_provider = _providers(sink, set_global=True, tracing=False)
        Traceloop.init(
            app_name="peers-bench",
            exporter=_span_exporter(sink),
            telemetry_enabled=False,
        )
        from opentelemetry import trace

        return Setup(
            flush=_flusher(trace.get_tracer_provider(), logger_provider),
            metrics=_metric_points(meter_provider),
        )
    if variant == "openlit":
        import openlit

        tracer_provider, meter_provider, logger_provider = _providers(sink, set_global=True)
        openlit.init(application_name="peers-bench", pricing_json=str(PRICING_JSON))
        return Setup(
            flush=_flusher(tracer_provider, logger_provider),
            metrics=_metric_points(meter_provider),
        )
    raise SystemExit(f"unknown variant {variant!r}")


def setup_defaults(variant: str) -> Setup:
    """The variant exactly as its quick start shows it: no exporter, no option given.

    Not timed: only to see what each one reaches for when nobody configured it.
    """
    if variant == "chatter-otel":
        from chatter_otel.telemetry import setup_telemetry

        setup_telemetry().capture_langchain()
    elif variant == "openlit":
        import openlit

        openlit.init()
    elif variant == "traceloop":
        from traceloop.sdk import Traceloop

        Traceloop.init()
    elif variant == "openinference":
        from openinference.instrumentation.langchain import LangChainInstrumentor

        LangChainInstrumentor().instrument()
    elif variant == "openllmetry":
        from opentelemetry.instrumentation.langchain import LangchainInstrumentor

        LangchainInstrumentor().instrument()
    return Setup()


def jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
