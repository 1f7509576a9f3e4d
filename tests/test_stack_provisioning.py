"""Prometheus's scrape configuration and Grafana's provisioned datasources checked without
Docker: each points at the stack service that serves it, exemplars link metrics and traces,
and PostgreSQL is read as the read-only role.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests._dashboards import REPO
from tests._stack import (
    PUBLISHED_PORTS,
)
from tests._stack import environment as _environment
from tests._stack import load_yaml as _yaml
from tests._stack import port as _port


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return _yaml("otel/prometheus/prometheus.yml")


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    doc = _yaml("otel/grafana/provisioning/datasources/datasources.yaml")
    return {ds["uid"]: ds for ds in doc["datasources"]}


def test_prometheus_scrapes_the_collector_prometheus_exporter(
    prometheus_config: dict[str, Any],
    collector: dict[str, Any],
    services: dict[str, dict[str, Any]],
) -> None:
    job, gateway = prometheus_config["scrape_configs"]
    port = _port(collector["exporters"]["prometheus"]["endpoint"])
    assert job["static_configs"] == [{"targets": [f"otel-collector:{port}"]}]
    # Keep job="chatter" (from service.name) instead of the scrape job's name.
    assert job["honor_labels"] is True
    # The gateway (profile `gateway`) is found by DNS: no target, so no `up == 0`, without it.
    gateway_port = _port(
        _yaml("otel/collector/gateway.yaml")["exporters"]["prometheus"]["endpoint"]
    )
    assert gateway == {
        "job_name": "otel-gateway",
        "honor_labels": True,
        "dns_sd_configs": [{"names": ["otel-gateway"], "type": "A", "port": gateway_port}],
    }
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_grafana_datasources_point_at_the_stack_services(
    datasources: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    assert {uid: (ds["type"], ds["url"]) for uid, ds in datasources.items()} == {
        "prometheus": ("prometheus", "http://prometheus:9090"),
        "jaeger": ("jaeger", "http://jaeger:16686"),
        "loki": ("loki", "http://loki:3100"),
        "chatter-postgres": ("grafana-postgresql-datasource", "postgres:5432"),
    }
    published = {port for ports in PUBLISHED_PORTS.values() for port in ports}
    for ds in datasources.values():
        host, port = (urlsplit(ds["url"]).netloc or ds["url"]).split(":")
        assert host in services
        assert int(port) in published or host in ("postgres", "loki")


def test_exemplars_open_traces_and_traces_open_span_metrics(
    datasources: dict[str, dict[str, Any]],
) -> None:
    assert datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "jaeger"}
    ]
    traces_to_metrics = datasources["jaeger"]["jsonData"]["tracesToMetrics"]
    assert traces_to_metrics["datasourceUid"] == "prometheus"
    assert traces_to_metrics["tags"] == [{"key": "service.name", "value": "service_name"}]
    for query in traces_to_metrics["queries"]:
        assert "$__tags" in query["query"]


def test_grafana_reads_postgresql_as_the_read_only_role(
    datasources: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    pg = datasources["chatter-postgres"]
    assert pg["user"] == "${GRAFANA_PG_USER}"
    assert pg["secureJsonData"] == {"password": "${GRAFANA_PG_PASSWORD}"}
    assert pg["jsonData"]["database"] == "${POSTGRES_DB}"
    env = _environment(services["grafana"])
    assert {"GRAFANA_PG_USER", "GRAFANA_PG_PASSWORD", "POSTGRES_DB"} <= set(env)


def test_provisioning_files_escape_literal_dollars() -> None:
    path = REPO / "otel/grafana/provisioning/datasources/datasources.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    expanded = re.findall(r"\$\{(\w+)\}", text.replace("$$", ""))
    assert sorted(set(expanded)) == ["GRAFANA_PG_PASSWORD", "GRAFANA_PG_USER", "POSTGRES_DB"]
    assert re.findall(r"\$(?!\{)", text.replace("$$", "")) == [], "write a literal $ as $$"
    assert "{$$__tags}" in text
