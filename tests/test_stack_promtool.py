"""Prometheus's own tooling (``promtool`` from Debian's prometheus package) parses the scrape
configuration and every PromQL expression of the dashboards.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import _dashboards as dash
from tests._dashboards import REPO
from tests._promtool import promtool_path


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
