"""Helpers for testing code instrumented with chatter-otel (and for our own tests).

``capture_telemetry()`` installs chatter-otel on private in-memory providers, so a test can
assert on exact spans and metric points without touching global OTel state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from chatter_otel.config import TelemetryConfig
from chatter_otel.telemetry import Telemetry, setup_telemetry

__all__ = ["CapturedTelemetry", "FakeOpenAIServer", "capture_telemetry"]


def __getattr__(name: str) -> Any:
    if name == "FakeOpenAIServer":
        from chatter_otel.testing._fake_openai import FakeOpenAIServer

        return FakeOpenAIServer
    raise AttributeError(name)


@dataclass
class CapturedTelemetry:
    telemetry: Telemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        """Finished, exported spans in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        """The one finished span with this name (fails if there are none or several)."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, (
            f"expected one span {name!r}, found {[s.name for s in self.spans()]}"
        )
        return found[0]

    def points(self, metric: str) -> list[Any]:
        """Data points of one metric across scopes (cumulative)."""
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        points.extend(m.data.data_points)
        return points

    def point(self, metric: str, attributes: Mapping[str, Any]) -> Any:
        """The data point whose attributes are exactly ``attributes``."""
        matches = [p for p in self.points(metric) if dict(p.attributes) == dict(attributes)]
        assert len(matches) == 1, (
            f"{metric}{dict(attributes)} not in {[dict(p.attributes) for p in self.points(metric)]}"
        )
        return matches[0]


@contextmanager
def capture_telemetry(sampler: Sampler | None = None, **config: Any) -> Iterator[CapturedTelemetry]:
    """chatter-otel on in-memory exporters; ``config`` overrides ``TelemetryConfig`` fields.

    Nothing is read from the environment, so tests are independent of the shell that
    runs them. The write-back is off unless ``writeback_url`` is given.
    """
    fields: dict[str, Any] = {
        "traces_exporters": ("none",),
        "metrics_exporters": ("none",),
        "logs_exporters": ("none",),
        "writeback_url": None,
        **config,
    }
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = setup_telemetry(
        TelemetryConfig(**fields),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        set_global=False,
        configure_logs=False,
    )
    try:
        yield CapturedTelemetry(telemetry, exporter, reader)
    finally:
        telemetry.shutdown()
        tracer_provider.shutdown()
        meter_provider.shutdown()
