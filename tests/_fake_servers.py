"""Peers for the fault tests: a server that never answers, a healthy OTLP receiver that
counts, a port that refuses. All bind to 127.0.0.1 and stop with their context managers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

# The throwaway server of the write-back outage test, reused rather than duplicated.
from tests._pg import free_port


class SilentServer:
    """Accepts TCP connections and never answers (a Collector that hangs)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-silent", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)  # never read, never closed until the end

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()


class FakeCollector:
    """A healthy OTLP/gRPC receiver (traces and metrics) that answers at once and counts."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import (
            metrics_service_pb2,
            metrics_service_pb2_grpc,
        )
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        collector = self
        self.spans = 0
        self.metric_exports = 0

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.spans += sum(
                    len(scope.spans)
                    for resource in request.resource_spans
                    for scope in resource.scope_spans
                )
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.metric_exports += 1
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        add_traces = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(Traces(), self._server)  # type: ignore[no-untyped-call]
        add_metrics(Metrics(), self._server)  # type: ignore[no-untyped-call]
        self.port = int(self._server.add_insecure_port("127.0.0.1:0"))

    def __enter__(self) -> FakeCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait(10)


def refused_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()
