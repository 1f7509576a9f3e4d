"""The Docker stack checked without Docker: Collector, compose, provisioning and dashboards.

Nothing here starts a container. The Collector, Jaeger and Grafana configurations are checked
structurally against what their pinned versions document; Prometheus's own tooling
(``promtool`` from Debian's prometheus package) parses the scrape config and every PromQL
expression of the dashboards.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests import _dashboards as dash
from tests._promtool import promtool_path
from tests._stack import COLLECTOR_CONFIGS, COLLECTOR_VERSION, COMPONENTS_FILE, KINDS
from tests._stack import component_type as _type
from tests._stack import env_default as _env_default
from tests._stack import environment as _environment
from tests._stack import load_yaml as _yaml
from tests._stack import pipelines as _pipelines
from tests._stack import port as _port

REPO = dash.REPO

# The OTLP exporter defaults of every OpenTelemetry SDK (OTEL_EXPORTER_OTLP_ENDPOINT).
OTLP_GRPC_DEFAULT_PORT = 4317
OTLP_HTTP_DEFAULT_PORT = 4318

PINNED_IMAGES = {
    "postgres": "postgres:17.6",
    "loki": "grafana/loki:3.7.6",
    "jaeger": "jaegertracing/jaeger:2.19.0",
    "prometheus": "prom/prometheus:v3.5.0",
    "grafana": "grafana/grafana:12.2.0",
}
PINNED_BASE_IMAGES = {
    "Dockerfile": ["python:3.11.14-slim-bookworm"],
    "otel/collector/Dockerfile": [
        "busybox:1.37.0-musl",
        f"otel/opentelemetry-collector-contrib:{COLLECTOR_VERSION}",
    ],
}
PUBLISHED_PORTS = {
    "chatter": [8000],
    "otel-collector": [4317, 4318],
    "jaeger": [16686],
    "prometheus": [9090],
    "grafana": [3000],
}
PROVISIONED_UIDS = {"prometheus", "jaeger", "loki", "chatter-postgres"}

# Attribute keys that carry prompt or completion text: the Collector must delete them.
CONTENT_KEYS = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.prompt.0.content",
    "gen_ai.prompt.1.role",
    "gen_ai.completion",
    "gen_ai.completion.0.content",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "llm.input_messages",
    "llm.input_messages.0.message.content",
    "llm.output_messages.0.message.content",
    "llm.prompts",
    "llm.prompt_template.template",
    "llm.prompt_template.variables",
    "input.value",
    "output.value",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "retrieval.documents.0.document.content",
    "embedding.embeddings.0.embedding.text",
]
# Attribute keys the pipeline needs (usage, cost, correlation): the Collector must keep them.
KEPT_KEYS = [
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.finish_reasons",
    "gen_ai.conversation.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.cost",
    "chatter.usage.cost",
    "gen_ai.tool.name",
    "gen_ai.tool.call.id",
    "gen_ai.workflow.name",
    "llm.token_count.prompt",
    "llm.token_count.completion",
    "llm.model_name",
    "llm.provider",
    "input.mime_type",
    "session.id",
    "chatter.conversation.id",
    "chatter.message.id",
    "error.type",
]

# Every metric name the dashboards may use: what the service exposes and the span metrics.
KNOWN_METRICS = {
    "gen_ai_client_token_usage_bucket",
    "gen_ai_client_token_usage_sum",
    "gen_ai_client_token_usage_count",
    "gen_ai_client_operation_duration_seconds_bucket",
    "gen_ai_client_operation_duration_seconds_sum",
    "gen_ai_client_operation_duration_seconds_count",
    "chatter_llm_cost_total",
    "chatter_llm_unpriced_total",
    "gen_ai_workflow_duration_seconds_bucket",
    "gen_ai_workflow_duration_seconds_sum",
    "gen_ai_workflow_duration_seconds_count",
    "chatter_turn_cost_bucket",
    "chatter_turn_cost_sum",
    "chatter_turn_cost_count",
    "chatter_writeback_queue_size",
    "chatter_writeback_applied_total",
    "chatter_writeback_retried_total",
    "chatter_writeback_orphaned_total",
    "chatter_writeback_rejected_total",
    "chatter_writeback_spooled_total",
    # Write-back loss panels (trust-wb's metrics, names from the contract between branches).
    "chatter_writeback_lost_total",
    "chatter_writeback_unowned_total",
    "chatter_writeback_late_total",
    "chatter_writeback_database_errors_total",
    "chatter_writeback_oldest_age_seconds",
    "chatter_writeback_schema_waits_total",
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_milliseconds_bucket",
}


# --- loading -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return _yaml("collector-config.yaml")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def jaeger() -> dict[str, Any]:
    return _yaml("otel/jaeger/config.yaml")


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return _yaml("otel/prometheus/prometheus.yml")


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    doc = _yaml("otel/grafana/provisioning/datasources/datasources.yaml")
    return {ds["uid"]: ds for ds in doc["datasources"]}


@pytest.fixture(scope="module")
def pinned_components() -> dict[str, Any]:
    data = yaml.safe_load(COMPONENTS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return dash.load_dashboards()


@pytest.fixture(scope="module")
def collectors() -> dict[str, dict[str, Any]]:
    """Every Collector configuration of the stack, by file."""
    return {path: _yaml(path) for path in COLLECTOR_CONFIGS}


# --- Collector: structure ---------------------------------------------------------------------


def test_the_components_file_is_for_the_pinned_collector_image(
    pinned_components: dict[str, Any],
) -> None:
    assert pinned_components["version"] == COLLECTOR_VERSION
    assert pinned_components["image"] == f"otel/opentelemetry-collector-contrib:{COLLECTOR_VERSION}"
    # Where the module list was copied from: anyone can check it with git.
    assert pinned_components["source"] == {
        "repository": "open-telemetry/opentelemetry-collector-releases",
        "tag": f"v{COLLECTOR_VERSION}",
        "commit": "145e73e8663aff5ce978ea38cf0cbd4a97017141",
        "path": "distributions/otelcol-contrib/manifest.yaml",
    }
    dockerfile = (REPO / "otel/collector/Dockerfile").read_text(encoding="utf-8")
    assert f"FROM otel/opentelemetry-collector-contrib:{COLLECTOR_VERSION}\n" in dockerfile


def test_the_module_list_is_the_release_manifest_not_a_guess(
    pinned_components: dict[str, Any],
) -> None:
    """Modules the v0.157.0 contrib manifest dropped or added (collector-releases be578aaf,
    d203815e): the jmx and signalfx receivers are gone, the tail storage and drain are in."""
    modules = pinned_components["modules"]
    contrib = "github.com/open-telemetry/opentelemetry-collector-contrib/"
    assert f"{contrib}receiver/jmxreceiver" not in modules["receiver"]
    assert f"{contrib}receiver/signalfxreceiver" not in modules["receiver"]
    assert f"{contrib}exporter/signalfxexporter" in modules["exporter"]
    assert f"{contrib}processor/drainprocessor" in modules["processor"]
    assert f"{contrib}extension/tailstorage/pebbletailstorageextension" in modules["extension"]
    assert {kind: len(paths) for kind, paths in modules.items()} == {
        "receiver": 107,
        "processor": 32,
        "exporter": 49,
        "connector": 13,
        "extension": 40,
    }


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_every_component_a_pipeline_names_is_defined(
    collectors: dict[str, dict[str, Any]], path: str
) -> None:
    config = collectors[path]
    for name, pipeline in _pipelines(config).items():
        for role, section in (
            ("receivers", ("receivers", "connectors")),
            ("processors", ("processors",)),
            ("exporters", ("exporters", "connectors")),
        ):
            for component in pipeline.get(role, []):
                assert any(component in config.get(s, {}) for s in section), (
                    f"{path}: pipeline {name} names {role[:-1]} {component!r}, not defined"
                )
    for extension in config["service"]["extensions"]:
        assert extension in config["extensions"], f"{path}: extension {extension} not defined"


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_every_defined_component_is_used(collectors: dict[str, dict[str, Any]], path: str) -> None:
    config = collectors[path]
    pipelines = _pipelines(config).values()
    used_as = {
        role: {c for p in pipelines for c in p.get(role, [])}
        for role in ("receivers", "processors", "exporters")
    }
    for section in ("receivers", "processors", "exporters"):
        unused = set(config.get(section, {})) - used_as[section]
        assert not unused, f"{path}: {section} defined but never used: {sorted(unused)}"
    for connector in config.get("connectors", {}):
        assert connector in used_as["exporters"], f"{path}: {connector} never receives data"
        assert connector in used_as["receivers"], f"{path}: {connector} never emits data"
    assert set(config["extensions"]) == set(config["service"]["extensions"])


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_every_component_type_is_a_module_of_the_pinned_collector(
    collectors: dict[str, dict[str, Any]], pinned_components: dict[str, Any], path: str
) -> None:
    types, modules = pinned_components["types"], pinned_components["modules"]
    for section, kind in KINDS.items():
        for component in collectors[path].get(section, {}):
            module = types[kind].get(_type(component))
            assert module, f"{path}: {kind} type {_type(component)!r} has no known module"
            assert module in modules[kind], (
                f"{module} is not in otelcol-contrib {COLLECTOR_VERSION}"
            )


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_the_collector_uses_current_names_not_deprecated_aliases(
    collectors: dict[str, dict[str, Any]], pinned_components: dict[str, Any], path: str
) -> None:
    for kind, aliases in pinned_components["deprecated_aliases"].items():
        for component in collectors[path].get(f"{kind}s", {}):
            assert _type(component) not in aliases, (
                f"{path}: {component!r} is a deprecated alias: use {aliases[_type(component)]!r}"
            )


def test_component_types_used_by_the_stack(collectors: dict[str, dict[str, Any]]) -> None:
    used = {
        path: {s: sorted({_type(c) for c in config.get(s, {})}) for s in KINDS}
        for path, config in collectors.items()
    }
    assert used == {
        "collector-config.yaml": {
            "receivers": ["otlp"],
            "processors": ["batch", "memory_limiter", "resource", "tail_sampling", "transform"],
            "exporters": ["otlp_grpc", "otlp_http", "prometheus"],
            "connectors": ["forward", "span_metrics"],
            "extensions": ["health_check"],
        },
        "otel/collector/gateway.yaml": {
            "receivers": ["otlp"],
            "processors": ["batch", "memory_limiter", "resource", "transform"],
            "exporters": ["load_balancing", "otlp_http", "prometheus"],
            "connectors": ["span_metrics"],
            "extensions": ["health_check"],
        },
        "otel/collector/sampler.yaml": {
            "receivers": ["otlp"],
            "processors": ["batch", "memory_limiter", "tail_sampling"],
            "exporters": ["otlp_grpc"],
            "connectors": [],
            "extensions": ["health_check"],
        },
    }


def test_pipelines_count_every_span_then_sample_traces_for_jaeger(
    collector: dict[str, Any],
) -> None:
    """span_metrics sees every redacted span; only traces/sampled goes through tail_sampling."""
    assert _pipelines(collector) == {
        "traces": {
            "receivers": ["otlp"],
            "processors": ["memory_limiter", "transform/drop_content", "resource", "batch"],
            "exporters": ["span_metrics", "forward/sampling"],
        },
        "traces/sampled": {
            "receivers": ["forward/sampling"],
            "processors": ["memory_limiter", "tail_sampling", "batch"],
            "exporters": ["otlp_grpc/jaeger"],
        },
        "metrics": {
            "receivers": ["otlp", "span_metrics"],
            "processors": ["memory_limiter", "resource", "batch"],
            "exporters": ["prometheus"],
        },
        "logs": {
            "receivers": ["otlp"],
            "processors": ["memory_limiter", "transform/drop_content", "resource", "batch"],
            "exporters": ["otlp_http/loki"],
        },
    }


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS)
def test_every_pipeline_starts_with_memory_limiter_and_ends_with_batch(
    collectors: dict[str, dict[str, Any]], path: str
) -> None:
    for name, pipeline in _pipelines(collectors[path]).items():
        assert pipeline["processors"][0] == "memory_limiter", (path, name)
        assert pipeline["processors"][-1] == "batch", (path, name)


def test_otlp_receiver_listens_on_all_interfaces_on_the_sdk_default_ports(
    collector: dict[str, Any], jaeger: dict[str, Any]
) -> None:
    for config in (collector, jaeger):
        protocols = config["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["endpoint"] == f"0.0.0.0:{OTLP_GRPC_DEFAULT_PORT}"
        assert protocols["http"]["endpoint"] == f"0.0.0.0:{OTLP_HTTP_DEFAULT_PORT}"


def test_prometheus_exporter_writes_openmetrics_so_exemplars_survive(
    collector: dict[str, Any],
) -> None:
    exporter = collector["exporters"]["prometheus"]
    assert exporter["endpoint"] == "0.0.0.0:8889"
    assert exporter["enable_open_metrics"] is True


def test_prometheus_exporter_names_are_pinned_not_left_to_the_default(
    collector: dict[str, Any],
) -> None:
    """Dashboards, alerts and Jaeger's SPM read the suffixed names (_total, _seconds, _bucket);
    the deprecated resource_to_telemetry_conversion is not used."""
    exporter = collector["exporters"]["prometheus"]
    assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert "resource_to_telemetry_conversion" not in exporter


def test_span_metrics_have_exemplars_and_the_names_jaeger_spm_reads(
    collector: dict[str, Any], jaeger: dict[str, Any]
) -> None:
    connector = collector["connectors"]["span_metrics"]
    assert connector["exemplars"] == {"enabled": True}
    assert connector["namespace"] == "traces.span.metrics"
    assert connector["histogram"]["unit"] == "ms"
    prom = jaeger["extensions"]["jaeger_storage"]["metric_backends"]["promstore"]["prometheus"]
    assert prom["metric_namespace"] == connector["namespace"].replace(".", "_")
    assert prom["latency_unit"] == connector["histogram"]["unit"]
    assert prom["normalize_calls"] is True
    assert prom["normalize_duration"] is True


def test_resource_processor_sets_the_deployment_environment_from_the_environment(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert collector["processors"]["resource"]["attributes"] == [
        {
            "key": "deployment.environment.name",
            "value": "${env:DEPLOYMENT_ENVIRONMENT:-local}",
            "action": "upsert",
        }
    ]
    assert _environment(services["otel-collector"])["DEPLOYMENT_ENVIRONMENT"] == (
        "${DEPLOYMENT_ENVIRONMENT:-local}"
    )


def _content_patterns(collector: Mapping[str, Any]) -> dict[str, re.Pattern[str]]:
    """Target -> compiled regex of each delete_matching_keys statement (`$$` is a `$`)."""
    transform = collector["processors"]["transform/drop_content"]
    patterns: dict[str, re.Pattern[str]] = {}
    for key in ("trace_statements", "log_statements"):
        groups = transform[key]
        # One group per context (span, spanevent, log): never mixed in one group.
        assert all(len(group["statements"]) == 1 for group in groups), key
        for statement in (s for group in groups for s in group["statements"]):
            m = re.fullmatch(r'delete_matching_keys\((\w+\.attributes), "(.*)"\)', statement)
            assert m, f"unexpected statement {statement!r}"
            patterns[m.group(1)] = re.compile(m.group(2).replace("$$", "$"))
    return patterns


def test_content_is_deleted_from_span_event_and_log_attributes(
    collector: dict[str, Any],
) -> None:
    assert set(_content_patterns(collector)) == {
        "span.attributes",
        "spanevent.attributes",
        "log.attributes",
    }
    assert collector["processors"]["transform/drop_content"]["error_mode"] == "ignore"


@pytest.mark.parametrize("key", CONTENT_KEYS)
def test_an_attribute_carrying_content_is_deleted(collector: dict[str, Any], key: str) -> None:
    for target, pattern in _content_patterns(collector).items():
        assert pattern.search(key), f"{key} survives in {target}"


@pytest.mark.parametrize("key", KEPT_KEYS)
def test_an_attribute_the_pipeline_needs_is_kept(collector: dict[str, Any], key: str) -> None:
    for target, pattern in _content_patterns(collector).items():
        assert not pattern.search(key), f"{key} would be deleted from {target}"


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("otel-collector", "collector-config.yaml"),
        ("otel-gateway", "otel/collector/gateway.yaml"),
        ("otel-sampler", "otel/collector/sampler.yaml"),
    ],
)
def test_health_check_extension_is_what_the_container_healthcheck_probes(
    collectors: dict[str, dict[str, Any]],
    services: dict[str, dict[str, Any]],
    service: str,
    path: str,
) -> None:
    assert collectors[path]["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    assert services[service]["healthcheck"]["test"] == [
        "CMD",
        "/probe/busybox",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:13133/",
    ]
    assert ("./" + path, "/etc/otelcol-contrib/config.yaml") in {
        (src, dst) for name, src, dst in _mounts(services) if name == service
    }


# --- Jaeger -----------------------------------------------------------------------------------


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


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_runs_seven_services_and_the_gateway_layout_on_request(
    services: dict[str, dict[str, Any]],
) -> None:
    by_profile: dict[str, list[str]] = {}
    for name, service in services.items():
        for profile in service.get("profiles", ["default"]):
            by_profile.setdefault(profile, []).append(name)
    assert {profile: sorted(names) for profile, names in by_profile.items()} == {
        "default": [
            "chatter",
            "grafana",
            "jaeger",
            "loki",
            "otel-collector",
            "postgres",
            "prometheus",
        ],
        "gateway": ["otel-gateway", "otel-sampler"],
    }


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name} healthcheck has no {key} (bounded waits)"


def test_depends_on_waits_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "chatter": {"postgres", "otel-collector"},
        "otel-collector": {"jaeger", "loki"},
        "otel-gateway": {"otel-sampler", "loki"},
        "otel-sampler": {"jaeger"},
        "prometheus": {"otel-collector"},
        "grafana": {"postgres", "prometheus", "jaeger", "loki"},
    }
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions"
        assert set(depends) == expected.get(name, set()), name
        for dependency, spec in depends.items():
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_images_are_pinned_to_exact_versions(services: dict[str, dict[str, Any]]) -> None:
    images = {name: s["image"] for name, s in services.items() if "image" in s}
    assert images == PINNED_IMAGES
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert built == {
        "chatter": {"context": ".", "dockerfile": "Dockerfile"},
        "otel-collector": {"context": "./otel/collector"},
        "otel-gateway": {"context": "./otel/collector"},
        "otel-sampler": {"context": "./otel/collector"},
    }
    for dockerfile, expected in PINNED_BASE_IMAGES.items():
        text = (REPO / dockerfile).read_text(encoding="utf-8")
        bases = [m.split()[0] for m in re.findall(r"^FROM\s+(.+)$", text, re.MULTILINE)]
        assert bases == expected, dockerfile
    for image in [*images.values(), *(i for v in PINNED_BASE_IMAGES.values() for i in v)]:
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image} is not pinned"


def _published(port: str) -> tuple[str, int, int]:
    host_ip, host_port, container_port = _env_default(port).split(":")
    return host_ip, int(host_port), int(container_port)


def test_published_ports_bind_to_localhost_by_default(
    services: dict[str, dict[str, Any]],
) -> None:
    published: dict[str, list[int]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as HOST_IP:HOST:CONTAINER"
            assert port.startswith("${STACK_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
            host_ip, _, container_port = _published(port)
            assert host_ip == "127.0.0.1"
            published.setdefault(name, []).append(container_port)
    assert published == PUBLISHED_PORTS


def test_the_collector_publishes_the_otlp_ports_it_listens_on(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    listening = {_port(protocols["grpc"]["endpoint"]), _port(protocols["http"]["endpoint"])}
    host_and_container = {_published(p)[1:] for p in services["otel-collector"]["ports"]}
    assert host_and_container == {(p, p) for p in listening}


def _mounts(services: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            yield name, source, target


def test_every_mounted_file_or_directory_exists_in_the_repository(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    bind_mounts = [(n, s, t) for n, s, t in _mounts(services) if s.startswith(".")]
    assert bind_mounts, "no bind mounts found"
    for name, source, _ in bind_mounts:
        assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    named = {s for _, s, _ in _mounts(services) if not s.startswith(".")}
    assert named == set(compose["volumes"])
    for name, service in services.items():
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


def test_configs_are_mounted_where_each_program_reads_them(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = {(n, s, t) for n, s, t in _mounts(services)}
    assert {
        ("otel-collector", "./collector-config.yaml", "/etc/otelcol-contrib/config.yaml"),
        ("jaeger", "./otel/jaeger/config.yaml", "/etc/jaeger/config.yaml"),
        ("prometheus", "./otel/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        ("prometheus", "./otel/prometheus/rules", "/etc/prometheus/rules"),
        ("loki", "./otel/loki/config.yaml", "/etc/loki/config.yaml"),
        ("otel-gateway", "./otel/collector/gateway.yaml", "/etc/otelcol-contrib/config.yaml"),
        ("otel-sampler", "./otel/collector/sampler.yaml", "/etc/otelcol-contrib/config.yaml"),
        ("postgres", "./otel/postgres/init", "/docker-entrypoint-initdb.d"),
        (
            "grafana",
            "./otel/grafana/provisioning/datasources",
            "/etc/grafana/provisioning/datasources",
        ),
        (
            "grafana",
            "./otel/grafana/provisioning/dashboards",
            "/etc/grafana/provisioning/dashboards",
        ),
        ("grafana", "./dashboards", "/var/lib/grafana/dashboards"),
    } <= mounts
    provider = _yaml("otel/grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


SECRET_HINTS = ("PASSWORD", "SECRET", "KEY", "TOKEN")


def test_no_secret_is_written_in_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in _environment(service).items():
            if any(h in key for h in SECRET_HINTS):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)?\}", value), (
                    f"{name}.{key} must come from .env, got {value!r}"
                )
    url = re.fullmatch(
        r"(?P<scheme>[\w+]+)://(?P<user>\$\{[^}]+\}):(?P<password>\$\{[^}]+\})@(?P<host>[\w-]+)"
        r":(?P<port>\d+)/(?P<db>.+)",
        _environment(services["chatter"])["DATABASE_URL"],
    )
    assert url, "DATABASE_URL must be scheme://user:${PASSWORD}@host:port/db"
    assert url["scheme"] == "postgresql+asyncpg"
    assert url["password"] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}"
    assert (url["host"], url["port"]) == ("postgres", "5432")


def test_env_example_lists_every_variable_and_holds_no_real_secret() -> None:
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    compose_text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    referenced = set(re.findall(r"\$\{(\w+)", compose_text))
    assert referenced == set(values), "compose variables and .env.example differ"
    for key, value in values.items():
        if "PASSWORD" in key:
            assert value.startswith("CHANGE_ME"), key
        elif key.endswith("_API_KEY"):
            assert value == "", key
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    dockerignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in dockerignore and ".venv" in dockerignore


def test_chatter_sends_all_telemetry_to_the_collector(
    services: dict[str, dict[str, Any]], collector: dict[str, Any]
) -> None:
    env = _environment(services["chatter"])
    grpc_port = _port(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    # CHATTER_OTLP_ENDPOINT switches to the gateway layout (README, "Scaling the Collector").
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        f"${{CHATTER_OTLP_ENDPOINT:-http://otel-collector:{grpc_port}}}"
    )
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_SERVICE_NAME"] == "chatter"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    assert env["OTEL_LOGS_EXPORTER"] == "otlp"
    assert env["CHATTER_HOST"] == "0.0.0.0"
    assert env["CHATTER_PORT"] == "8000"


def test_chatter_image_runs_as_a_non_root_user_with_a_healthz_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users == ["chatter:chatter"]
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[[^\n]*\])$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck, "no HEALTHCHECK"
    assert "/healthz" in json.loads(healthcheck.group(1))[-1]
    assert re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE) == ['["chatter-otel", "serve"]']
    assert "RUN pip install ." in text


def test_postgres_init_script_creates_the_grafana_role_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    script = REPO / "otel/postgres/init/10-grafana-readonly.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "the postgres image sources non-executables"
    env = _environment(services["postgres"])
    grafana_env = _environment(services["grafana"])
    for variable in ("GRAFANA_PG_USER", "GRAFANA_PG_PASSWORD"):
        assert env[variable] == grafana_env[variable]
        assert f"${{{variable}:?" in script.read_text(encoding="utf-8")
    subprocess.run(["bash", "-n", str(script)], check=True)


# --- Prometheus ---------------------------------------------------------------------------------


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


# --- dashboards ---------------------------------------------------------------------------------


EXPECTED_DASHBOARDS = {
    "llm-usage-and-cost.json": ("chatter-llm-usage", ["service", "provider", "model"]),
    "workflows.json": ("chatter-workflows", ["service", "workflow"]),
    "conversations-and-users.json": ("chatter-conversations", ["jaeger_ui", "jaeger_service"]),
}


def test_three_dashboards_with_their_template_variables(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    assert {
        name: (d["uid"], dash.variable_names(d)) for name, d in dashboards.items()
    } == EXPECTED_DASHBOARDS


def test_prometheus_variables_are_label_values_queries(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    labels = {}
    for name in ("llm-usage-and-cost.json", "workflows.json"):
        for variable in dashboards[name]["templating"]["list"]:
            query = dash.variable_query(variable)
            assert query.startswith("label_values("), query
            assert variable["datasource"]["uid"] == "prometheus"
            labels[(name, variable["name"])] = query.rsplit(",", 1)[1].strip(" )")
    assert labels == {
        ("llm-usage-and-cost.json", "service"): "job",
        ("llm-usage-and-cost.json", "provider"): "gen_ai_provider_name",
        ("llm-usage-and-cost.json", "model"): "gen_ai_request_model",
        ("workflows.json", "service"): "job",
        ("workflows.json", "workflow"): "gen_ai_workflow_name",
    }


def test_panel_ids_are_unique_within_each_dashboard(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, d in dashboards.items():
        ids = [p["id"] for p in dash.iter_panels(d)]
        assert len(ids) == len(set(ids)), f"{name} repeats a panel id"


def test_every_panel_queries_a_provisioned_datasource(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, d in dashboards.items():
        for panel in dash.query_panels(d):
            assert panel["datasource"]["uid"] in PROVISIONED_UIDS, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                uid = dash.target_datasource_uid(panel, target)
                assert uid == panel["datasource"]["uid"], (name, panel["title"])
        assert dash.datasource_uids(d) <= PROVISIONED_UIDS, name


def test_latency_and_token_panels_show_exemplars(dashboards: dict[str, dict[str, Any]]) -> None:
    with_exemplars = {
        p["title"]
        for p in dash.query_panels(dashboards["llm-usage-and-cost.json"])
        if any(t.get("exemplar") for t in p["targets"])
    }
    # Not "Tokens per second": it plots rate(_sum), and OpenMetrics _sum/_count lines carry no
    # exemplars (only _bucket lines and counters do).
    assert with_exemplars == {
        "Tokens per call p95 by token type",
        "Cost per turn p50 / p95 (USD)",
        "LLM call latency p50 / p95 / p99",
        "LLM call latency p95 by provider and model",
    }


def test_exemplars_are_only_asked_of_bucket_and_counter_series() -> None:
    """OpenMetrics puts exemplars on _bucket lines and counters only, never on _sum/_count."""
    asking = [e for e in dash.prometheus_exprs() if e.exemplar]
    assert asking
    for e in asking:
        assert re.search(r"_bucket\b|_total\b", e.expr), e.where
        assert not re.search(r"_(sum|count)\b", e.expr), e.where


def test_dashboards_only_use_metrics_the_stack_exposes() -> None:
    names: set[str] = set()
    for e in dash.prometheus_exprs():
        # Drop label matchers and grouping clauses: what is left names metrics only.
        bare = re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", e.expr)
        names |= set(re.findall(r"\b(?:gen_ai|chatter|traces_span_metrics)_\w+", bare))
    assert names <= KNOWN_METRICS, sorted(names - KNOWN_METRICS)
    assert {
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket",
        "chatter_llm_cost_total",
        "chatter_llm_unpriced_total",
        "chatter_turn_cost_bucket",
        "gen_ai_workflow_duration_seconds_bucket",
        "chatter_writeback_queue_size",
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds_bucket",
    } <= names


def test_expressions_that_need_the_collector_are_marked() -> None:
    marked = [(e.dashboard, e.title) for e in dash.prometheus_exprs() if e.requires_collector]
    assert marked == [
        ("workflows.json", "Workflow span calls per second by status"),
        ("workflows.json", "Workflow span error ratio"),
        ("workflows.json", "Workflow span duration p95 (ms)"),
    ]


def test_service_variable_filters_the_job_label() -> None:
    for e in dash.prometheus_exprs(values={**dash.MATCH_ALL, "service": "SERVICE"}):
        if e.panel_id is not None:
            assert 'job=~"SERVICE"' in e.expr, e.where


def test_conversation_rows_link_to_their_traces_in_jaeger(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    d = dashboards["conversations-and-users.json"]
    linked = {}
    for panel in dash.query_panels(d):
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "links":
                    linked[panel["title"]] = (override["matcher"]["options"], prop["value"])
    assert sorted(linked) == [
        "Assistant messages still missing usage",
        "Most expensive conversations",
    ]
    for field, (url_link, explore_link) in linked.values():
        assert field == "conversation_id"
        assert url_link["url"] == (
            "${jaeger_ui}/search?service=${jaeger_service}&limit=100&lookback=custom"
            "&start=${__from}000&end=${__to}000"
            "&tags=%7B%22chatter.conversation.id%22%3A%22${__value.raw}%22%7D"
        )
        assert explore_link["internal"]["datasourceUid"] == "jaeger"
        assert explore_link["internal"]["query"]["tags"] == (
            'chatter.conversation.id="${__value.raw}"'
        )


# --- promtool -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from Debian's prometheus package; installed in CI, never skipped there."""
    return promtool_path()


def test_prometheus_config_passes_promtool(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "config", str(REPO / "otel/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_promql_expression_parses(promtool: str, tmp_path: Path) -> None:
    exprs = dash.prometheus_exprs()
    assert len(exprs) == 56
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump(dash.recording_rules(exprs), sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_rejects_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    """The check above is only worth something if promtool does fail on bad PromQL."""
    broken = dash.PromExpr("x.json", 1, "broken", "A", "sum(rate(x[5m])", "sum(rate(x[5m])", False)
    rules = tmp_path / "broken.yml"
    rules.write_text(yaml.safe_dump(dash.recording_rules([broken])))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
