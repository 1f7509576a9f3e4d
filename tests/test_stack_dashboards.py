"""The provisioned Grafana dashboards checked without Docker: their variables, panels,
datasources, exemplars, the metric names they may use and the links to Jaeger.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests import _dashboards as dash

PROVISIONED_UIDS = {"prometheus", "jaeger", "loki", "chatter-postgres"}


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


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return dash.load_dashboards()


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
