"""The Prometheus alerting rules of the stack, proven with Prometheus's own ``promtool``.

``otel/prometheus/rules/`` holds the alerts (chatter-alerts.yml) and the thresholds an operator
edits (chatter-settings.yml); ``otel/prometheus/tests/chatter-alerts.test.yml`` holds the
promtool unit tests: every alert firing on data over its threshold and quiet on data under it,
with the exact labels and annotations it carries. Here promtool checks and runs them, and the
structure every alert must have (severity, summary, description, a dashboard panel to open)
is checked against the dashboards in ``dashboards/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatter_otel import conventions
from tests import _dashboards as dash
from tests._promtool import promtool_path

REPO = dash.REPO
RULES_DIR = REPO / "otel" / "prometheus" / "rules"
ALERTS_FILE = RULES_DIR / "chatter-alerts.yml"
SETTINGS_FILE = RULES_DIR / "chatter-settings.yml"
UNIT_TESTS = REPO / "otel" / "prometheus" / "tests" / "chatter-alerts.test.yml"

ALERTS = {
    "ChatterLLMCostOverBudget": "warning",
    "ChatterLLMCostSpike": "warning",
    "ChatterLLMUnpricedCalls": "warning",
    "ChatterLLMErrorRatioHigh": "warning",
    "ChatterWorkflowErrorRatioHigh": "critical",
    "ChatterWorkflowLatencyBudgetBurnFast": "critical",
    "ChatterWorkflowLatencyBudgetBurnSlow": "warning",
    "ChatterWritebackFallingBehind": "warning",
    "ChatterWritebackQueueLarge": "warning",
    "ChatterWritebackRecordsLost": "critical",
    "ChatterWritebackRecordsRejected": "warning",
    "ChatterWritebackRecordsOrphaned": "warning",
    "ChatterWritebackCallsUnowned": "warning",
    "ChatterWritebackSpooling": "warning",
    "ChatterWritebackDatabaseErrors": "warning",
    "ChatterScrapeTargetDown": "critical",
}
SETTINGS = {
    "chatter:llm_cost_budget_usd_per_hour": "vector(5)",
    "chatter:workflow_latency_error_budget_ratio": "vector(0.01)",
}
# The Prometheus names of the service's metrics (the contract between branches), plus `up`.
SERVICE_METRICS = {
    "chatter_llm_cost_total",
    "chatter_llm_unpriced_total",
    "gen_ai_client_operation_duration_seconds_count",
    "gen_ai_workflow_duration_seconds_bucket",
    "gen_ai_workflow_duration_seconds_count",
    "chatter_writeback_oldest_age_seconds",
    "chatter_writeback_queue_size",
    "chatter_writeback_lost_total",
    "chatter_writeback_rejected_total",
    "chatter_writeback_orphaned_total",
    "chatter_writeback_unowned_total",
    "chatter_writeback_spooled_total",
    "chatter_writeback_database_errors_total",
    "up",
}
PROMQL_WORDS = {
    "sum",
    "max",
    "by",
    "on",
    "and",
    "rate",
    "increase",
    "offset",
    "vector",
    "group_left",
}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _rules(ALERTS_FILE) if "alert" in r}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    return promtool_path()


# --- promtool -----------------------------------------------------------------------------------


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(SETTINGS_FILE), str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout
    assert "SUCCESS: 20 rules found" in result.stdout


def test_every_alert_unit_test_passes(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_unit_tests_fail_when_a_threshold_moves(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: a budget of 7 USD/h breaks the over-budget case."""
    shutil.copytree(RULES_DIR, tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / UNIT_TESTS.name)
    settings = tmp_path / "rules" / SETTINGS_FILE.name
    text = settings.read_text(encoding="utf-8")
    assert text.count("expr: vector(5)\n") == 1
    settings.write_text(text.replace("expr: vector(5)\n", "expr: vector(7)\n"), encoding="utf-8")
    result = _run(promtool, "test", "rules", str(tmp_path / "tests" / UNIT_TESTS.name))
    assert result.returncode != 0
    assert "ChatterLLMCostOverBudget" in result.stdout + result.stderr


def test_prometheus_loads_the_rule_files_from_the_mounted_directory() -> None:
    config = _load(REPO / "otel/prometheus/prometheus.yml")
    assert config["rule_files"] == ["rules/*.yml"]
    assert sorted(p.name for p in RULES_DIR.glob("*.yml")) == [
        ALERTS_FILE.name,
        SETTINGS_FILE.name,
    ]
    prometheus = _load(REPO / "docker-compose.yml")["services"]["prometheus"]
    assert "./otel/prometheus/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    assert (
        "./otel/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (prometheus["volumes"])
    )


# --- what every alert carries ---------------------------------------------------------------------


def test_the_alerts_and_their_severities() -> None:
    assert {name: rule["labels"]["severity"] for name, rule in _alerts().items()} == ALERTS


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _load(UNIT_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == set(ALERTS)
    assert quiet == set(ALERTS)


def test_every_alert_has_a_summary_a_description_and_a_dashboard_panel() -> None:
    dashboards = {d["uid"]: d for d in dash.load_dashboards().values()}
    for name, rule in _alerts().items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "dashboard", "panel"}, name
        m = re.fullmatch(r"/d/([\w-]+)", annotations["dashboard"])
        assert m and m.group(1) in dashboards, (name, annotations["dashboard"])
        titles = {p.get("title") for p in dash.query_panels(dashboards[m.group(1)])}
        assert annotations["panel"] in titles, (name, annotations["panel"])
        assert len(annotations["description"]) > 100, name


def test_thresholds_an_operator_sets_are_in_the_settings_file() -> None:
    assert {r["record"]: r["expr"] for r in _rules(SETTINGS_FILE)} == SETTINGS
    exprs = " ".join(rule["expr"] for rule in _alerts().values())
    for record in SETTINGS:
        assert record in exprs, record


def _metric_names(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    bare = re.sub(r"\b(by|on)\s*\([^)]*\)|group_left\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", bare))
    return {w for w in words if w not in PROMQL_WORDS}


def test_alerts_read_only_the_service_metrics_and_their_own_recordings() -> None:
    recorded = {r["record"] for r in _rules(ALERTS_FILE) if "record" in r} | set(SETTINGS)
    used: set[str] = set()
    for rule in _rules(ALERTS_FILE):
        used |= _metric_names(rule["expr"])
    assert used - recorded == SERVICE_METRICS


# --- the names, against the library's conventions ---------------------------------------------

# Prometheus adds these to an OTel metric's name (unit, counter and histogram suffixes).
PROMETHEUS_SUFFIXES = re.compile(r"(_seconds)?(_total|_bucket|_sum|_count)?$")
# Labels Prometheus or the exporter set, not OTel attributes.
TARGET_LABELS = {"job", "instance", "le"}


def _convention_names(prefix: str) -> set[str]:
    """conventions.py values of constants starting with ``prefix``, dots as underscores."""
    return {
        value.replace(".", "_")
        for name, value in vars(conventions).items()
        if name.startswith(prefix) and isinstance(value, str)
    }


def test_every_metric_an_alert_reads_is_one_the_library_defines() -> None:
    """Fails until the metric renames (semconv) and write-back metrics (trust-wb) are merged."""
    defined = _convention_names("METRIC_")
    for metric in SERVICE_METRICS - {"up"}:
        assert PROMETHEUS_SUFFIXES.sub("", metric) in defined, metric


def test_every_label_an_alert_reads_is_an_attribute_the_library_defines() -> None:
    attributes = {
        value.replace(".", "_")
        for name, value in vars(conventions).items()
        if name.isupper() and not name.startswith("METRIC_") and isinstance(value, str)
    }
    labels: set[str] = set()
    for rule in _rules(ALERTS_FILE):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!=|=)\s*\"", rule["expr"]))
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            labels |= {label.strip() for label in group.split(",") if label.strip()}
    assert labels - TARGET_LABELS == {
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_workflow_name",
        "chatter_workflow_outcome",
        "chatter_writeback_reason",
        "error_type",
    }
    assert labels - TARGET_LABELS <= attributes
