"""OTLP export wiring and reuse of providers someone else installed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chatter_otel import workflow_span
from chatter_otel.config import TelemetryConfig
from chatter_otel.telemetry import setup_telemetry
from chatter_otel.testing import capture_telemetry


class _Receiver(ThreadingHTTPServer):
    bodies: dict[str, list[bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.server.bodies.setdefault(self.path, []).append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Receiver]:
    """An OTLP/HTTP endpoint on loopback that keeps what it receives."""
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.bodies = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}"
    )
    yield server
    server.shutdown()
    server.server_close()


def test_spans_and_logs_reach_an_otlp_http_endpoint(receiver: _Receiver) -> None:
    with capture_telemetry(
        traces_exporters=("otlp",),
        traces_protocol="http/protobuf",
        logs_exporters=("otlp",),
        logs_protocol="http/protobuf",
    ) as cap:
        with workflow_span("chat", conversation_id="01ARZ3NDEKTSV4RRFFQ69G5FAV") as span:
            logging.getLogger("chatter.export").warning("turn started")
            trace_id = span.get_span_context().trace_id
        assert cap.telemetry.force_flush(10_000)
    traces = ExportTraceServiceRequest()
    traces.ParseFromString(receiver.bodies["/v1/traces"][0])
    names = [s.name for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert names == ["invoke_workflow chat"]
    logs = ExportLogsServiceRequest()
    logs.ParseFromString(b"".join(receiver.bodies["/v1/logs"][:1]))
    records = [r for rl in logs.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    turn = next(r for r in records if r.body.string_value == "turn started")
    assert turn.trace_id == trace_id.to_bytes(16, "big")


def test_an_installed_tracer_provider_is_reused_not_replaced() -> None:
    exporter = InMemorySpanExporter()
    theirs = TracerProvider()
    theirs.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = setup_telemetry(
        TelemetryConfig(metrics_exporters=("none",)),
        tracer_provider=theirs,
        set_global=False,
        configure_logs=False,
    )
    try:
        assert telemetry.tracer_provider is theirs
        with workflow_span("chat"):
            pass
        assert [s.name for s in exporter.get_finished_spans()] == ["invoke_workflow chat"]
    finally:
        telemetry.shutdown()


def test_setup_is_idempotent() -> None:
    with capture_telemetry() as cap:
        again = setup_telemetry(
            TelemetryConfig(capture_content=True), set_global=False, configure_logs=False
        )
        assert again is cap.telemetry
        assert again.config.capture_content is False
