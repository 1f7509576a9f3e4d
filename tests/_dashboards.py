"""Read the Grafana dashboards in ``dashboards/`` and pull out every query they run.

Shared by the stack tests: ``prometheus_exprs()`` yields every PromQL expression (panel
targets and the ``label_values`` selectors of template variables) with Grafana's variables
substituted, ready for ``promtool check rules`` or for evaluation against a real Prometheus;
``sql_queries()`` yields every SQL panel query with Grafana's PostgreSQL macros rewritten to
plain SQL for a given time range.

Expressions over the span metrics of the Collector's span_metrics connector only have data
when the telemetry goes through the Collector; ``PromExpr.requires_collector`` marks them
(``REQUIRES_COLLECTOR_PREFIXES``) so a test scraping the service directly can skip them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = REPO / "dashboards"

PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"
POSTGRES_UID = "chatter-postgres"

# Metric name prefixes that exist only on the Collector path (span_metrics connector).
REQUIRES_COLLECTOR_PREFIXES: tuple[str, ...] = ("traces_span_metrics_",)

# Values that make every template variable match everything (regex matchers `=~"$var"`).
MATCH_ALL: Mapping[str, str] = {
    "service": ".*",
    "provider": ".*",
    "model": ".*",
    "workflow": ".*",
}
# Grafana's interval variables, replaced by fixed durations.
INTERVALS: Mapping[str, str] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}


@dataclass(frozen=True)
class PromExpr:
    """One PromQL expression of a dashboard, as Prometheus will receive it."""

    dashboard: str  # file name, e.g. "llm-usage-and-cost.json"
    panel_id: int | None  # None for a template variable's query
    title: str  # panel title, or "variable <name>"
    ref_id: str  # target refId, or the variable name
    raw: str  # the expression as written in the dashboard
    expr: str  # with variables and intervals substituted
    exemplar: bool  # the target asks Grafana for exemplars

    @property
    def requires_collector(self) -> bool:
        return requires_collector(self.expr)

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.title} / {self.ref_id}"


@dataclass(frozen=True)
class SqlQuery:
    """One SQL panel query, with Grafana's macros replaced by plain PostgreSQL."""

    dashboard: str
    panel_id: int
    title: str
    ref_id: str
    format: str  # "table" or "time_series"
    raw: str
    sql: str

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.title} / {self.ref_id}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> parsed dashboard JSON."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in dashboard_files()}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including rows and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels that run queries (everything but rows)."""
    return (p for p in iter_panels(dashboard) if p.get("type") != "row")


def _uid(ref: Any) -> str | None:
    if isinstance(ref, Mapping):
        uid = ref.get("uid")
        return uid if isinstance(uid, str) else None
    return None


def target_datasource_uid(panel: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    """A target's datasource uid, falling back to the panel's."""
    return _uid(target.get("datasource")) or _uid(panel.get("datasource"))


def datasource_uids(dashboard: Mapping[str, Any]) -> set[str]:
    """Every datasource uid the dashboard refers to: panels, targets, variables, data links."""
    uids: set[str] = set()

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, Mapping):
            if key == "datasource" and isinstance(node.get("uid"), str):
                uids.add(node["uid"])
            if isinstance(node.get("datasourceUid"), str):
                uids.add(node["datasourceUid"])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    walk(dashboard)
    # Grafana's built-in annotation datasource is not a provisioned one.
    uids.discard("-- Grafana --")
    return uids


def variable_names(dashboard: Mapping[str, Any]) -> list[str]:
    return [v["name"] for v in dashboard.get("templating", {}).get("list", [])]


def variable_query(variable: Mapping[str, Any]) -> str:
    """The query text of a template variable (string or query-editor object form)."""
    query = variable.get("query", "")
    if isinstance(query, Mapping):
        return str(query.get("query", ""))
    return str(query)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)


def label_values_selector(query: str) -> str:
    """``label_values(sel, label)`` -> ``sel``: the series selector Grafana sends."""
    m = _LABEL_VALUES.match(query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    args = _split_args(m.group("args"))
    if len(args) != 2:
        raise ValueError(f"label_values() needs a selector and a label: {query!r}")
    return args[0]


def substitute_prom(expr: str, values: Mapping[str, str] = MATCH_ALL) -> str:
    """Replace ``$__rate_interval``-style intervals and ``$var``/``${var}``/``[[var]]``.

    Raises ``KeyError`` naming any variable left without a value.
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group("b") or m.group("s") or m.group("old")
        if name in INTERVALS:
            return INTERVALS[name]
        if name in values:
            return values[name]
        raise KeyError(f"no value for variable ${name} in {expr!r}")

    return re.sub(
        r"\$\{(?P<b>\w+)(?::\w+)?\}|\[\[(?P<old>\w+)\]\]|\$(?P<s>\w+)",
        repl,
        expr,
    )


def requires_collector(expr: str) -> bool:
    """True when the expression reads a metric only the Collector produces."""
    return any(prefix in expr for prefix in REQUIRES_COLLECTOR_PREFIXES)


def prometheus_exprs(
    values: Mapping[str, str] = MATCH_ALL,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PromExpr]:
    """Every PromQL expression of every dashboard, substituted with ``values``."""
    out: list[PromExpr] = []
    for name, dash in (dashboards if dashboards is not None else load_dashboards()).items():
        for variable in dash.get("templating", {}).get("list", []):
            if variable.get("type") != "query" or _uid(variable.get("datasource")) != (
                PROMETHEUS_UID
            ):
                continue
            raw = label_values_selector(variable_query(variable))
            out.append(
                PromExpr(
                    name,
                    None,
                    f"variable {variable['name']}",
                    variable["name"],
                    raw,
                    substitute_prom(raw, values),
                    False,
                )
            )
        for panel in query_panels(dash):
            for target in panel.get("targets", []):
                if target_datasource_uid(panel, target) != PROMETHEUS_UID:
                    continue
                raw = str(target["expr"])
                out.append(
                    PromExpr(
                        name,
                        int(panel["id"]),
                        str(panel.get("title", "")),
                        str(target.get("refId", "")),
                        raw,
                        substitute_prom(raw, values),
                        bool(target.get("exemplar", False)),
                    )
                )
    return out


# --- SQL -------------------------------------------------------------------------------------

_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _interval_seconds(text: str) -> int:
    m = re.fullmatch(r"\s*'?(\d+)([smhdw])'?\s*", text)
    if not m:
        raise ValueError(f"unsupported interval {text!r}")
    return int(m.group(1)) * _INTERVAL_UNITS[m.group(2)]


def _split_args(text: str) -> list[str]:
    """Split arguments on top-level commas (brackets of any kind and quotes respected)."""
    args: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return [a for a in args if a]


def _find_call(sql: str, start: int) -> tuple[str, list[str], int, int] | None:
    """The next ``$__name(args)`` at or after ``start``: name, arguments, start and end."""
    m = re.compile(r"\$__(\w+)\(").search(sql, start)
    if not m:
        return None
    depth, quote = 1, ""
    i = m.end()
    while i < len(sql) and depth:
        ch = sql[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        i += 1
    if depth:
        raise ValueError(f"unbalanced parentheses in macro $__{m.group(1)}")
    return m.group(1), _split_args(sql[m.end() : i - 1]), m.start(), i


def substitute_sql(sql: str, time_from: datetime, time_to: datetime) -> str:
    """Rewrite Grafana's PostgreSQL macros the way the datasource expands them.

    Supported: $__timeFilter(col), $__timeFrom(), $__timeTo(), $__time(col),
    $__timeEpoch(col), $__timeGroup(col, 'iv'[, fill]), $__timeGroupAlias(...),
    $__unixEpochFilter(col), $__unixEpochFrom(), $__unixEpochTo(). Any other ``$__`` macro
    or ``$variable`` raises ``ValueError``: an unknown macro would reach PostgreSQL as text.
    """
    frm = f"'{time_from.isoformat()}'::timestamptz"
    to = f"'{time_to.isoformat()}'::timestamptz"
    efrom, eto = int(time_from.timestamp()), int(time_to.timestamp())

    def group(args: list[str]) -> str:
        secs = _interval_seconds(args[1])
        return f"to_timestamp(floor(extract(epoch from {args[0]}) / {secs}) * {secs})"

    expanders: dict[str, Callable[[list[str]], str]] = {
        "timeFilter": lambda a: f"{a[0]} BETWEEN {frm} AND {to}",
        "timeFrom": lambda a: frm,
        "timeTo": lambda a: to,
        "time": lambda a: f'{a[0]} AS "time"',
        "timeEpoch": lambda a: f'extract(epoch from {a[0]}) AS "time"',
        "timeGroup": group,
        "timeGroupAlias": lambda a: f'{group(a)} AS "time"',
        "unixEpochFilter": lambda a: f"{a[0]} >= {efrom} AND {a[0]} <= {eto}",
        "unixEpochFrom": lambda a: str(efrom),
        "unixEpochTo": lambda a: str(eto),
    }
    out: list[str] = []
    pos = 0
    while (call := _find_call(sql, pos)) is not None:
        name, args, at, end = call
        if name not in expanders:
            raise ValueError(f"unsupported Grafana macro $__{name}")
        out.append(sql[pos:at])
        out.append(expanders[name](args))
        pos = end
    out.append(sql[pos:])
    result = "".join(out)
    leftover = re.search(r"\$\{?\w+|\[\[\w+\]\]", result)
    if leftover:
        raise ValueError(f"unsubstituted variable or macro {leftover.group(0)!r} in SQL")
    return result


def sql_queries(
    time_from: datetime,
    time_to: datetime,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SqlQuery]:
    """Every SQL query of every PostgreSQL panel, macros expanded for the time range."""
    out: list[SqlQuery] = []
    for name, dash in (dashboards if dashboards is not None else load_dashboards()).items():
        for panel in query_panels(dash):
            for target in panel.get("targets", []):
                if target_datasource_uid(panel, target) != POSTGRES_UID:
                    continue
                raw = str(target["rawSql"])
                out.append(
                    SqlQuery(
                        name,
                        int(panel["id"]),
                        str(panel.get("title", "")),
                        str(target.get("refId", "")),
                        str(target.get("format", "table")),
                        raw,
                        substitute_sql(raw, time_from, time_to),
                    )
                )
    return out


def recording_rules(exprs: Iterable[PromExpr]) -> dict[str, Any]:
    """A Prometheus rules document with one recording rule per expression (for promtool)."""
    rules = [
        {
            "record": f"chatter_dashboard:expr_{i}",
            "expr": e.expr,
            "labels": {"dashboard": e.dashboard, "ref": e.ref_id},
        }
        for i, e in enumerate(exprs)
    ]
    return {"groups": [{"name": "chatter-dashboards", "rules": rules}]}
