"""Logs beside traces, tail sampling, the gateway layout and the spool volume, checked without Docker.

Loki, the Collector and Grafana never run here. Their configurations are checked the way the
rest of the stack is (tests/test_stack_*.py): every key against the sources read upstream
at the pinned versions (tests/data/upstream-config-keys.yaml), ports and names against each
other, and the sampling policy against what it must keep.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from chatter_otel import conventions
from tests._dashboards import REPO
from tests._stack import (
    COLLECTOR_CONFIGS,
    UPSTREAM_KEYS_FILE,
    component_type,
    env_default,
    environment,
    key_paths,
    load_yaml,
    pipelines,
    port,
    values_at,
)

SPOOL_DIR = "/var/lib/chatter/spool"
# The components added or changed for logs, sampling and the gateway, whose keys are listed
# with their upstream source in tests/data/upstream-config-keys.yaml.
KEY_CHECKED_COMPONENTS = {
    "collector-config.yaml": ["forward/sampling", "otlp_http/loki", "prometheus", "tail_sampling"],
    "otel/collector/gateway.yaml": ["load_balancing", "otlp_http/loki", "prometheus"],
    "otel/collector/sampler.yaml": ["tail_sampling"],
}
STATUS_GATE = "spanmetrics.statusCodeConvention.useOtelPrefix"


@pytest.fixture(scope="module")
def upstream() -> dict[str, Any]:
    data = yaml.safe_load(UPSTREAM_KEYS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def collectors() -> dict[str, dict[str, Any]]:
    return {path: load_yaml(path) for path in COLLECTOR_CONFIGS}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml("docker-compose.yml")["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    doc = load_yaml("otel/grafana/provisioning/datasources/datasources.yaml")
    return {ds["uid"]: ds for ds in doc["datasources"]}


@pytest.fixture(scope="module")
def loki() -> dict[str, Any]:
    return load_yaml("otel/loki/config.yaml")


def _check_keys(config: Any, spec: dict[str, Any], where: str) -> None:
    used = set(key_paths(config))
    unknown = used - set(spec["keys"])
    assert not unknown, f"{where}: keys not read upstream: {sorted(unknown)}"
    for path, allowed in spec.get("values", {}).items():
        for value in values_at(config, path):
            assert value in allowed, f"{where}: {path}={value!r} is not one of {allowed}"


# --- every new key, against the upstream sources --------------------------------------------


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_collector_component_keys_were_read_upstream(
    collectors: dict[str, dict[str, Any]], upstream: dict[str, Any], path: str
) -> None:
    checked = []
    for kind, types in upstream["collector"].items():
        if kind == "feature_gates":
            continue
        for name, settings in collectors[path].get(f"{kind}s", {}).items():
            if component_type(name) in types:
                _check_keys(settings or {}, types[component_type(name)], f"{path} {name}")
                checked.append(name)
    assert sorted(checked) == KEY_CHECKED_COMPONENTS[path]


def test_an_unread_key_or_a_wrong_value_is_caught(upstream: dict[str, Any]) -> None:
    spec = upstream["collector"]["exporter"]["prometheus"]
    with pytest.raises(AssertionError, match="resource_to_telemetry_conversion"):
        _check_keys({"resource_to_telemetry_conversion": {"enabled": False}}, spec, "x")
    with pytest.raises(AssertionError, match="translation_strategy"):
        _check_keys({"translation_strategy": "Underscore"}, spec, "x")


def test_loki_keys_were_read_upstream(loki: dict[str, Any], upstream: dict[str, Any]) -> None:
    _check_keys(loki, upstream["loki"], "otel/loki/config.yaml")


def test_every_datasource_uses_only_grafana_provisioning_keys(
    datasources: dict[str, dict[str, Any]], upstream: dict[str, Any]
) -> None:
    allowed = set(upstream["grafana"]["datasource"]["keys"])
    for uid, ds in datasources.items():
        assert set(ds) <= allowed, (uid, sorted(set(ds) - allowed))


def test_grafana_loki_and_trace_to_logs_keys_were_read_upstream(
    datasources: dict[str, dict[str, Any]], upstream: dict[str, Any]
) -> None:
    grafana = upstream["grafana"]
    _check_keys(datasources["loki"]["jsonData"], grafana["loki_jsonData"], "Loki datasource")
    _check_keys(
        datasources["jaeger"]["jsonData"]["tracesToLogsV2"],
        grafana["tracesToLogsV2"],
        "Jaeger tracesToLogsV2",
    )


# --- logs: Collector -> Loki -> Grafana <-> Jaeger --------------------------------------------


def test_loki_runs_the_pinned_image_with_its_own_health_probe(
    services: dict[str, dict[str, Any]], upstream: dict[str, Any]
) -> None:
    service = services["loki"]
    assert service["image"] == upstream["loki"]["image"]
    assert service["command"] == ["-config.file=/etc/loki/config.yaml"]
    assert "./otel/loki/config.yaml:/etc/loki/config.yaml:ro" in service["volumes"]
    assert "loki-data:/loki" in service["volumes"]
    # The image is distroless: `loki -health` GETs /ready itself.
    assert service["healthcheck"]["test"] == ["CMD", "/usr/bin/loki", "-health"]
    assert "ports" not in service


def test_loki_stores_under_its_volume_and_keeps_trace_ids(loki: dict[str, Any]) -> None:
    assert loki["auth_enabled"] is False
    assert loki["common"]["path_prefix"] == "/loki"
    for directory in loki["common"]["storage"]["filesystem"].values():
        assert directory.startswith("/loki/")
    # OTLP ingestion keeps trace_id/span_id as structured metadata only when this is on.
    assert loki["limits_config"]["allow_structured_metadata"] is True
    # A week of logs, deleted by the compactor (which needs a delete-request store for it).
    assert loki["limits_config"]["retention_period"] == "168h"
    assert loki["compactor"] == {
        "working_directory": "/loki/compactor",
        "retention_enabled": True,
        "delete_request_store": "filesystem",
    }
    [period] = loki["schema_config"]["configs"]
    assert (period["store"], period["schema"], period["object_store"]) == (
        "tsdb",
        "v13",
        "filesystem",
    )


@pytest.mark.parametrize("path", ["collector-config.yaml", "otel/collector/gateway.yaml"])
def test_the_collector_sends_logs_to_loki_over_otlp_http(
    collectors: dict[str, dict[str, Any]],
    services: dict[str, dict[str, Any]],
    loki: dict[str, Any],
    path: str,
) -> None:
    config = collectors[path]
    assert pipelines(config)["logs"]["exporters"] == ["otlp_http/loki"]
    endpoint = config["exporters"]["otlp_http/loki"]["endpoint"]
    assert endpoint == "${env:LOKI_OTLP_ENDPOINT:-http://loki:3100/otlp}"
    # The exporter appends /v1/logs: Loki's OTLP route is /otlp/v1/logs.
    assert env_default(endpoint) == f"http://loki:{loki['server']['http_listen_port']}/otlp"
    service = "otel-collector" if path == "collector-config.yaml" else "otel-gateway"
    assert environment(services[service])["LOKI_OTLP_ENDPOINT"] == env_default(endpoint)
    assert "debug" not in config.get("exporters", {})


def test_a_log_line_trace_id_opens_the_trace_in_jaeger(
    datasources: dict[str, dict[str, Any]], loki: dict[str, Any]
) -> None:
    ds = datasources["loki"]
    assert (ds["type"], ds["url"]) == ("loki", f"http://loki:{loki['server']['http_listen_port']}")
    [field] = ds["jsonData"]["derivedFields"]
    # trace_id is structured metadata (a label to Grafana), not text in the line.
    assert field["matcherType"] == "label"
    assert field["matcherRegex"] == "trace_id"
    assert field["datasourceUid"] == "jaeger"
    # `$$` in provisioning is a literal `$`: Grafana gets ${__value.raw}.
    assert field["url"] == "$${__value.raw}"


def test_a_span_opens_the_logs_of_its_trace_in_loki(
    datasources: dict[str, dict[str, Any]],
) -> None:
    to_logs = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki"
    # Loki indexes the OTLP resource attribute service.name as the label service_name.
    assert to_logs["tags"] == [{"key": "service.name", "value": "service_name"}]
    assert to_logs["filterByTraceID"] is True
    assert to_logs["customQuery"] is False


# --- tail sampling ---------------------------------------------------------------------------


def _policies(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in config["processors"]["tail_sampling"]["policies"]}


def test_span_metrics_see_every_span_before_tail_sampling(
    collectors: dict[str, dict[str, Any]],
) -> None:
    for path, config in collectors.items():
        for name, pipeline in pipelines(config).items():
            if "tail_sampling" in pipeline["processors"]:
                assert "span_metrics" not in pipeline.get("exporters", []), (path, name)
            if "span_metrics" in pipeline.get("exporters", []):
                assert "tail_sampling" not in pipeline["processors"], (path, name)


def test_the_policy_keeps_errors_slow_traces_and_expensive_calls(
    collectors: dict[str, dict[str, Any]],
) -> None:
    policies = _policies(collectors["collector-config.yaml"])
    assert {name: p["type"] for name, p in policies.items()} == {
        "errors": "status_code",
        "slow-traces": "latency",
        "expensive-calls": "ottl_condition",
        "baseline": "probabilistic",
    }
    assert policies["errors"]["status_code"]["status_codes"] == ["ERROR"]
    threshold = policies["slow-traces"]["latency"]["threshold_ms"]
    assert threshold == "${env:TAIL_SAMPLING_SLOW_TRACE_MS:-20480}"
    # The latency objective of the alert rules: a turn over 20.48 s is a slow one.
    assert 'le="20.48"' in (REPO / "otel/prometheus/rules/chatter-alerts.yml").read_text()
    baseline = policies["baseline"]["probabilistic"]["sampling_percentage"]
    assert baseline == "${env:TAIL_SAMPLING_PERCENTAGE:-10}"


def _cost_attributes() -> set[str]:
    """Span attributes of conventions.py that carry a cost in USD (not metric names)."""
    return {
        value
        for name, value in vars(conventions).items()
        if name.isupper()
        and not name.startswith("METRIC_")
        and isinstance(value, str)
        and re.fullmatch(r"(gen_ai|chatter)(\.\w+)*\.cost", value)
    }


def test_the_expensive_call_policy_reads_every_cost_attribute_the_library_writes(
    collectors: dict[str, dict[str, Any]],
) -> None:
    condition = _policies(collectors["collector-config.yaml"])["expensive-calls"]["ottl_condition"]
    assert condition["error_mode"] == "ignore"
    read = {}
    for statement in condition["span"]:
        m = re.fullmatch(
            r'attributes\["([\w.]+)"\] >= \$\{env:TAIL_SAMPLING_EXPENSIVE_CALL_USD:-0\.05\}',
            statement,
        )
        assert m, statement
        read[m.group(1)] = statement
    assert "gen_ai.usage.cost" in read
    assert _cost_attributes() <= set(read), "a cost attribute the tail sampler does not read"


def test_sampling_settings_come_from_the_environment_with_the_documented_defaults(
    services: dict[str, dict[str, Any]],
) -> None:
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    for service in ("otel-collector", "otel-sampler"):
        env = environment(services[service])
        assert env["TAIL_SAMPLING_PERCENTAGE"] == "${TAIL_SAMPLING_PERCENTAGE:-10}"
        assert env["TAIL_SAMPLING_SLOW_TRACE_MS"] == "${TAIL_SAMPLING_SLOW_TRACE_MS:-20480}"
        assert env["TAIL_SAMPLING_EXPENSIVE_CALL_USD"] == (
            "${TAIL_SAMPLING_EXPENSIVE_CALL_USD:-0.05}"
        )
    for line in (
        "TAIL_SAMPLING_PERCENTAGE=10",
        "TAIL_SAMPLING_SLOW_TRACE_MS=20480",
        "TAIL_SAMPLING_EXPENSIVE_CALL_USD=0.05",
    ):
        assert line in example.splitlines()


# --- span metrics status label, pinned on the command line -----------------------------------


@pytest.mark.parametrize("service", ["otel-collector", "otel-gateway"])
def test_the_span_metrics_status_label_is_pinned_to_what_jaeger_spm_reads(
    services: dict[str, dict[str, Any]], upstream: dict[str, Any], service: str
) -> None:
    """Off, the connector writes status_code="STATUS_CODE_ERROR" (Jaeger's SPM query); the
    Collector refuses to start if the gate is gone or stable, instead of silently changing it."""
    assert upstream["collector"]["feature_gates"]["gates"][STATUS_GATE] == "alpha"
    assert services[service]["command"] == [
        "--config=/etc/otelcol-contrib/config.yaml",
        f"--feature-gates=-{STATUS_GATE}",
    ]
    workflows = (REPO / "dashboards/workflows.json").read_text(encoding="utf-8")
    assert 'status_code=\\"STATUS_CODE_ERROR\\"' in workflows


# --- gateway layout ----------------------------------------------------------------------------


SHARED_WITH_GATEWAY = {
    "processors": ["memory_limiter", "transform/drop_content", "resource", "batch"],
    "connectors": ["span_metrics"],
    "exporters": ["prometheus", "otlp_http/loki"],
    "receivers": ["otlp"],
    "extensions": ["health_check"],
}
SHARED_WITH_SAMPLER = {
    "processors": ["memory_limiter", "tail_sampling", "batch"],
    "exporters": ["otlp_grpc/jaeger"],
    "receivers": ["otlp"],
    "extensions": ["health_check"],
}


@pytest.mark.parametrize(
    ("path", "shared"),
    [
        ("otel/collector/gateway.yaml", SHARED_WITH_GATEWAY),
        ("otel/collector/sampler.yaml", SHARED_WITH_SAMPLER),
    ],
)
def test_the_gateway_layout_reuses_the_single_collector_blocks(
    collectors: dict[str, dict[str, Any]], path: str, shared: dict[str, list[str]]
) -> None:
    single = collectors["collector-config.yaml"]
    for section, names in shared.items():
        for name in names:
            assert collectors[path][section][name] == single[section][name], (path, name)


def test_the_gateway_routes_whole_traces_to_every_sampler(
    collectors: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    gateway, sampler = (
        collectors["otel/collector/gateway.yaml"],
        collectors["otel/collector/sampler.yaml"],
    )
    assert pipelines(gateway)["traces"]["exporters"] == ["span_metrics", "load_balancing"]
    assert pipelines(sampler) == {
        "traces": {
            "receivers": ["otlp"],
            "processors": ["memory_limiter", "tail_sampling", "batch"],
            "exporters": ["otlp_grpc/jaeger"],
        }
    }
    balancer = gateway["exporters"]["load_balancing"]
    assert balancer["routing_key"] == "traceID"
    dns = balancer["resolver"]["dns"]
    assert env_default(dns["hostname"]) == "otel-sampler"
    assert environment(services["otel-gateway"])["SAMPLER_HOSTNAME"] == "otel-sampler"
    assert int(dns["port"]) == port(sampler["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert balancer["protocol"]["otlp"]["tls"] == {"insecure": True}
    assert services["otel-sampler"]["deploy"] == {"replicas": "${OTEL_SAMPLER_REPLICAS:-2}"}
    for name in ("otel-gateway", "otel-sampler"):
        assert services[name]["profiles"] == ["gateway"]
        assert "ports" not in services[name]


# --- the write-back spool survives the container -------------------------------------------


def test_the_spool_is_a_named_volume_the_service_user_owns(
    services: dict[str, dict[str, Any]],
) -> None:
    chatter = services["chatter"]
    assert environment(chatter)["CHATTER_OTEL_WRITEBACK_SPOOL"] == SPOOL_DIR
    assert chatter["volumes"] == [f"chatter-spool:{SPOOL_DIR}"]
    assert "chatter-spool" in load_yaml("docker-compose.yml")["volumes"]
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    # A fresh named volume copies the image directory's owner: chatter (uid 10001), not root.
    assert f"install -d -o chatter -g chatter -m 0700 {SPOOL_DIR}" in dockerfile
    assert dockerfile.index(SPOOL_DIR) < dockerfile.index("USER chatter:chatter")


# --- the smoke script ---------------------------------------------------------------------------

SMOKE = REPO / "scripts" / "smoke-stack.sh"


def test_smoke_down_sets_every_variable_compose_requires() -> None:
    """`docker compose down` interpolates the whole file: without .env every `${VAR:?}` must be
    given a value, or --down fails before stopping anything."""
    required = set(re.findall(r"\$\{(\w+):\?", (REPO / "docker-compose.yml").read_text()))
    text = SMOKE.read_text(encoding="utf-8")
    down = text[text.index("  --down)") : text.index(";;", text.index("  --down)"))]
    assert required == {"POSTGRES_PASSWORD", "GRAFANA_PG_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    for name in required:
        assert f'{name}="${{{name}:-unused}}"' in down, name
    assert "--profile gateway down --volumes --remove-orphans" in down
    assert ".env" not in down.replace("without .env", "").replace("in .env", "")


def test_smoke_checks_spm_exemplars_datasources_and_redaction() -> None:
    text = SMOKE.read_text(encoding="utf-8")
    for needle in (
        "/api/metrics/${kind}",
        "/api/metrics/errors",
        "/api/v1/query_exemplars",
        "/api/v1/rules",
        "/api/datasources/uid/$1/health",
        "for uid in prometheus jaeger loki chatter-postgres",
        "/v1/traces",
        "/v1/logs",
        "/api/datasources/proxy/uid/loki/loki/api/v1/query_range",
    ):
        assert needle in text, needle


def test_smoke_script_parses_and_answers_help_without_docker() -> None:
    subprocess.run(["bash", "-n", str(SMOKE)], check=True)
    helped = subprocess.run(
        ["bash", str(SMOKE), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert helped.returncode == 0
    assert "--down" in helped.stdout and "Checks:" in helped.stdout
    wrong = subprocess.run(
        ["bash", str(SMOKE), "--bogus"], capture_output=True, text=True, timeout=30, check=False
    )
    assert wrong.returncode == 2
