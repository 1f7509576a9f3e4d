"""The SDK parts ``setup_telemetry`` builds from the configuration: sampler, exporters,
metric readers, exemplar filter, resource and the logs bridge.

Exporter packages are imported only when configured, so an app that exports nothing does
not pay for gRPC or protobuf at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import ConsoleLogExporter
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from chatter_otel.config import TelemetryConfig


def sampler(config: TelemetryConfig) -> Sampler:
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


def span_exporters(config: TelemetryConfig) -> list[Any]:
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


def metric_readers(config: TelemetryConfig) -> list[MetricReader]:
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


def log_exporters(config: TelemetryConfig) -> list[Any]:
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


def resource(config: TelemetryConfig) -> Resource:
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: config.service_name}))
    return detected


def logging_handler(logger_provider: LoggerProvider) -> logging.Handler:
    """The OTel logs bridge: in opentelemetry-instrumentation-logging since 0.64b0, in the
    SDK (now deprecated there) before."""
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
    except ImportError:  # opentelemetry-instrumentation-logging < 0.64b0
        from opentelemetry.sdk._logs import LoggingHandler  # type: ignore[assignment]
    return LoggingHandler(logger_provider=logger_provider)
