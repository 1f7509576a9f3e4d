"""The stack's Collector configurations checked without Docker: every component defined, used
and a module of the pinned contrib release, the pipelines, the ports, the names Jaeger and
Prometheus read, and the deletion of prompt and completion text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from tests._dashboards import REPO
from tests._stack import (
    COLLECTOR_CONFIGS,
    COLLECTOR_VERSION,
    COMPONENTS_FILE,
    KINDS,
)
from tests._stack import component_type as _type
from tests._stack import environment as _environment
from tests._stack import load_yaml as _yaml
from tests._stack import mounts as _mounts
from tests._stack import pipelines as _pipelines

# The OTLP exporter defaults of every OpenTelemetry SDK (OTEL_EXPORTER_OTLP_ENDPOINT).
OTLP_GRPC_DEFAULT_PORT = 4317
OTLP_HTTP_DEFAULT_PORT = 4318


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


@pytest.fixture(scope="module")
def pinned_components() -> dict[str, Any]:
    data = yaml.safe_load(COMPONENTS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def collectors() -> dict[str, dict[str, Any]]:
    """Every Collector configuration of the stack, by file."""
    return {path: _yaml(path) for path in COLLECTOR_CONFIGS}


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
