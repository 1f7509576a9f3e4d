"""FastAPI server spans and metrics follow the stable HTTP conventions by default.

opentelemetry-instrumentation reads ``OTEL_SEMCONV_STABILITY_OPT_IN`` once per process, so
each case runs in a fresh interpreter: a real FastAPI app, chatter-otel's ``instrument_app``,
one request through Starlette's test client, spans and metrics printed as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.metrics import http_metrics

_SCRIPT = """
import json
from fastapi import FastAPI
from starlette.testclient import TestClient
from chatter_otel.testing import capture_telemetry

app = FastAPI()

@app.get("/items/{item}")
def item(item: str) -> dict[str, str]:
    return {"item": item}

with capture_telemetry(instrument_fastapi=True) as cap:
    cap.telemetry.instrument_app(app)
    assert TestClient(app).get("/items/a").status_code == 200
    [server] = [s for s in cap.spans() if s.kind.name == "SERVER"]
    data = cap.reader.get_metrics_data()
    metrics = {
        m.name: m.unit
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name.startswith("http.server")
    }
    print(json.dumps({"attributes": dict(server.attributes), "metrics": metrics}))
"""


def _run(opt_in: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SEMCONV_STABILITY_OPT_IN"}
    if opt_in is not None:
        env["OTEL_SEMCONV_STABILITY_OPT_IN"] = opt_in
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_server_spans_use_stable_http_names_by_default() -> None:
    result = _run(None)
    attrs = result["attributes"]
    assert attrs[http_attributes.HTTP_REQUEST_METHOD] == "GET"
    assert attrs[http_attributes.HTTP_RESPONSE_STATUS_CODE] == 200
    assert attrs[http_attributes.HTTP_ROUTE] == "/items/{item}"
    assert "http.method" not in attrs
    assert "http.status_code" not in attrs
    assert result["metrics"][http_metrics.HTTP_SERVER_REQUEST_DURATION] == "s"
    assert "http.server.duration" not in result["metrics"]


def test_an_application_choice_wins() -> None:
    result = _run("http/dup")
    attrs = result["attributes"]
    assert attrs[http_attributes.HTTP_REQUEST_METHOD] == "GET"
    assert attrs["http.method"] == "GET"
    assert result["metrics"][http_metrics.HTTP_SERVER_REQUEST_DURATION] == "s"
    assert result["metrics"]["http.server.duration"] == "ms"
