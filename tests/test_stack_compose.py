"""docker-compose.yml checked without Docker: services, health checks, pinned images,
localhost-only ports, mounts, secrets and where each program reads its configuration.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from typing import Any

from tests._dashboards import REPO
from tests._stack import (
    COLLECTOR_VERSION,
    PUBLISHED_PORTS,
)
from tests._stack import env_default as _env_default
from tests._stack import environment as _environment
from tests._stack import load_yaml as _yaml
from tests._stack import mounts as _mounts
from tests._stack import port as _port

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
