"""Every PromQL expression of every dashboard, evaluated by a real Prometheus.

The reference service runs as a real process (``chatter-otel serve``) with the Prometheus
exporter; a demo workload (tool call, stream, unpriced model, failure) goes through its HTTP
API; Debian's Prometheus scrapes ``/metrics``; each expression must parse and return data.
Span-metrics expressions need the Collector's connector and are checked only by
``promtool`` in test_stack_promtool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._dashboards import PromExpr, prometheus_exprs
from tests._pg import free_port

SCRAPE_INTERVAL_S = 1


def _prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("prometheus is not installed: `make test` installs Debian's package")
    pytest.skip("prometheus not installed (apt-get install prometheus)")


def _wait(url: str, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {deadline_s} s")


def _workload(base: str, phase: int) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        user = client.post(
            "/api/v1/users", json={"username": f"prom{phase}", "email": f"p{phase}@example.com"}
        ).json()
        priced = client.post(
            "/api/v1/conversations", json={"user_id": user["id"], "title": "priced"}
        ).json()["id"]
        unpriced = client.post(
            "/api/v1/conversations",
            json={"user_id": user["id"], "title": "unpriced", "llm_model": "offline-unpriced-1"},
        ).json()["id"]
        for content in ("hello there", "please calculate 6*7", "what is (1+2)*3"):
            assert (
                client.post(
                    f"/api/v1/conversations/{priced}/messages", json={"content": content}
                ).status_code
                == 201
            )
        with client.stream(
            "POST", f"/api/v1/conversations/{priced}/messages/stream", json={"content": "stream me"}
        ) as r:
            assert "event: message" in r.read().decode()
        assert (
            client.post(
                f"/api/v1/conversations/{unpriced}/messages", json={"content": "hi"}
            ).status_code
            == 201
        )
        assert (
            client.post(
                f"/api/v1/conversations/{priced}/messages", json={"content": "boom #fail"}
            ).status_code
            == 502
        )


def _scrapes(prom: str) -> float:
    r = httpx.get(
        f"{prom}/api/v1/query", params={"query": 'count_over_time(up{job="chatter"}[10m])'}
    )
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _wait_for_scrapes(prom: str, at_least: float, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while _scrapes(prom) < at_least:
        assert time.monotonic() < end, "Prometheus did not scrape the service"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _prometheus_binary()
    tmp = tmp_path_factory.mktemp("prom")
    app_port, prom_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp}/chatter.db",
        "CHATTER_PORT": str(app_port),
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "chatter",
        "CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL": "0.2",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    service_log = tmp / "serve.log"
    with service_log.open("wb") as log:  # the child keeps its own copy of the descriptor
        service = subprocess.Popen(
            [sys.executable, "-m", "chatter_otel.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "chatter",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base, prom_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
    try:
        try:
            _wait(f"{base}/healthz", 60, service)
            _wait(f"{prom_url}/-/ready", 60, prom)
            _workload(base, 1)
            _wait_for_scrapes(prom_url, 2)
            _workload(base, 2)
            _wait_for_scrapes(prom_url, _scrapes(prom_url) + 2)
        except Exception as exc:
            # Every test of the module errors on a failed set-up: say why, once.
            tail = "\n".join(service_log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{exc!r}\n--- service log, last lines ---\n{tail}") from exc
        yield prom_url
    finally:
        for proc in (prom, service):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


LOCAL_EXPRS = [e for e in prometheus_exprs() if not e.requires_collector]


def test_there_are_expressions_to_evaluate() -> None:
    assert len(LOCAL_EXPRS) >= 20


@pytest.mark.parametrize("expr", LOCAL_EXPRS, ids=[e.where for e in LOCAL_EXPRS])
def test_dashboard_expression_returns_data(prometheus: str, expr: PromExpr) -> None:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr.expr}, timeout=10)
    body: dict[str, Any] = r.json()
    assert body["status"] == "success", (expr.expr, body)
    assert body["data"]["result"], f"no data for {expr.where}: {expr.expr}"


def test_token_counter_matches_the_workload(prometheus: str) -> None:
    query = 'sum(gen_ai_client_token_usage_count{job="chatter",gen_ai_token_type="input"})'
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10)
    # per phase: hello (1 call), two tool turns (2 calls each), stream (1), unpriced (1) = 7
    assert float(r.json()["data"]["result"][0]["value"][1]) == 14.0
