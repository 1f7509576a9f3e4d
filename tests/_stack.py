"""Loading and reading the stack's configuration files, for the structural stack tests.

Nothing here starts a container: the Collector, compose, Loki and Grafana files are parsed as
YAML and read the way each program reads them (component ids ``type/name``, ``${VAR:-default}``
defaults, ``HOST:PORT`` endpoints).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from tests._dashboards import REPO

COLLECTOR_VERSION = "0.157.0"
COMPONENTS_FILE = REPO / "tests" / "data" / f"otelcol-contrib-{COLLECTOR_VERSION}-components.yaml"
UPSTREAM_KEYS_FILE = REPO / "tests" / "data" / "upstream-config-keys.yaml"

# Every Collector configuration of the stack: the single Collector, and the gateway layout.
COLLECTOR_CONFIGS = (
    "collector-config.yaml",
    "otel/collector/gateway.yaml",
    "otel/collector/sampler.yaml",
)

# The host ports the stack publishes, by compose service.
PUBLISHED_PORTS = {
    "chatter": [8000],
    "otel-collector": [4317, 4318],
    "jaeger": [16686],
    "prometheus": [9090],
    "grafana": [3000],
}

KINDS = {
    "receivers": "receiver",
    "processors": "processor",
    "exporters": "exporter",
    "connectors": "connector",
    "extensions": "extension",
}


def load_yaml(path: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def pipelines(config: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    return config["service"]["pipelines"]  # type: ignore[no-any-return]


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def env_default(value: str) -> str:
    """``${VAR:-default}`` / ``${env:VAR:-default}`` -> default (the value with VAR unset)."""
    return re.sub(r"\$\{(?:env:)?\w+:-([^}]*)\}", r"\1", value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def key_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every leaf key of a mapping as a dotted path; list items of mappings as ``key[].sub``."""
    if isinstance(node, Mapping):
        if not node and prefix:
            yield prefix
        for key, value in node.items():
            yield from key_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and node and all(isinstance(i, Mapping) for i in node):
        for item in node:
            yield from key_paths(item, f"{prefix}[]")
    elif prefix:
        yield prefix


def values_at(node: Any, path: str) -> list[Any]:
    """The values found at a ``key_paths``-style path (lists flattened)."""
    head, _, rest = path.partition(".")
    name, is_list = (head[:-2], True) if head.endswith("[]") else (head, False)
    if not isinstance(node, Mapping) or name not in node:
        return []
    found = node[name]
    items = found if is_list else [found]
    if not rest:
        return [v for item in items for v in (item if isinstance(item, list) else [item])]
    return [v for item in items for v in values_at(item, rest)]


def mounts(services: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            yield name, source, target
