"""Jaeger's configuration checked without Docker: its pipeline, the traces it receives from the
Collector, the span metrics it reads from Prometheus and its ports.
"""

from __future__ import annotations

from typing import Any

from tests._stack import env_default as _env_default
from tests._stack import environment as _environment
from tests._stack import port as _port


def test_jaeger_pipeline_and_extensions_are_defined(jaeger: dict[str, Any]) -> None:
    service = jaeger["service"]
    assert service["extensions"] == ["jaeger_storage", "jaeger_query", "healthcheckv2"]
    assert set(jaeger["extensions"]) == set(service["extensions"])
    assert service["pipelines"] == {
        "traces": {
            "receivers": ["otlp"],
            "processors": ["batch"],
            "exporters": ["jaeger_storage_exporter"],
        }
    }
    query = jaeger["extensions"]["jaeger_query"]
    storage = jaeger["extensions"]["jaeger_storage"]
    assert query["storage"] == {"traces": "memstore", "metrics": "promstore"}
    assert query["storage"]["traces"] in storage["backends"]
    assert query["storage"]["metrics"] in storage["metric_backends"]
    assert jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"] == "memstore"


def test_collector_sends_traces_to_jaeger_over_otlp_grpc(
    collector: dict[str, Any], jaeger: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    endpoint = collector["exporters"]["otlp_grpc/jaeger"]["endpoint"]
    assert endpoint == "${env:JAEGER_OTLP_GRPC_ENDPOINT:-jaeger:4317}"
    assert _env_default(endpoint) == "jaeger:4317"
    assert _environment(services["otel-collector"])["JAEGER_OTLP_GRPC_ENDPOINT"] == "jaeger:4317"
    assert _port(jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]) == 4317
    assert collector["exporters"]["otlp_grpc/jaeger"]["tls"] == {"insecure": True}


def test_jaeger_reads_span_metrics_from_the_prometheus_service(
    jaeger: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    prom = jaeger["extensions"]["jaeger_storage"]["metric_backends"]["promstore"]["prometheus"]
    assert _env_default(prom["endpoint"]) == "http://prometheus:9090"
    assert _environment(services["jaeger"])["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_jaeger_ui_and_health_ports_match_compose(
    jaeger: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert jaeger["extensions"]["jaeger_query"]["http"]["endpoint"] == "0.0.0.0:16686"
    assert jaeger["extensions"]["healthcheckv2"]["http"]["endpoint"] == "0.0.0.0:13133"
    assert services["jaeger"]["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:13133/status",
    ]
    assert services["jaeger"]["command"] == ["--config", "/etc/jaeger/config.yaml"]
