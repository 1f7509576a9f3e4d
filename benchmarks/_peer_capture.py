"""What one variant exported for one turn, read back: usage per call, cost, content, spans.

Measured, not assumed: the runner keeps every span, log record and metric point of one
turn, and this module reads them knowing only the attribute names each convention uses
(OpenTelemetry GenAI ``gen_ai.usage.*``, its older ``prompt_tokens`` spelling, and
openinference's ``llm.token_count.*``). The truth is the usage the provider (the fake
OpenAI server) reported for each call of that very turn, as LangChain parsed it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

INPUT_KEYS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
OUTPUT_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
PROMPT_MARK = "What is 12*7+3"
COMPLETION_MARK = "The result is 87"
# gpt-4o-mini at OpenAI's list price, USD per token: what every peer's cost should say.
PRICE_IN = 0.15e-6
PRICE_OUT = 0.60e-6


@dataclass
class Capture:
    calls: int
    """Model calls in the turn (from the provider's own usage)."""
    spans: int
    usage_spans: int
    """Spans that carry token counts (more than ``calls``: summing them over-counts)."""
    exact_calls: int
    """Calls whose exact input and output tokens are on at least one span."""
    cost: float | None
    """Sum over the calls of the cost on the span that carries each call's usage."""
    cost_key: str | None
    expected_cost: float
    prompt_exported: bool
    completion_exported: bool
    metric_tokens: float | None
    """Token-usage metric points added by the turn (sum), when the variant has one."""
    metric_costs: dict[str, float] = field(default_factory=dict)
    expected_input: float = 0.0
    expected_output: float = 0.0

    @property
    def expected_tokens(self) -> float:
        return self.expected_input + self.expected_output

    @property
    def usage_ok(self) -> bool:
        return self.calls > 0 and self.exact_calls == self.calls

    @property
    def cost_ok(self) -> bool:
        return self.cost is not None and math.isclose(self.cost, self.expected_cost, rel_tol=1e-6)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _first(attributes: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if key in attributes and (value := _number(attributes[key])) is not None:
            return value
    return None


def _usage(attributes: dict[str, Any]) -> tuple[float, float] | None:
    tokens_in, tokens_out = _first(attributes, INPUT_KEYS), _first(attributes, OUTPUT_KEYS)
    if tokens_in is None or tokens_out is None:
        return None
    return tokens_in, tokens_out


def _cost(attributes: dict[str, Any]) -> tuple[str, float] | None:
    for key, value in sorted(attributes.items()):
        if "cost" in key and (number := _number(value)) is not None:
            return key, number
    return None


def _metric_sums(points: list[dict[str, Any]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for point in points:
        value = _number(point.get("sum"))
        if value is not None:
            sums[point["name"]] = sums.get(point["name"], 0.0) + value
    return sums


def analyse(check: dict[str, Any]) -> Capture:
    truth = [(float(i), float(o)) for i, o in check["truth"]]
    spans: list[dict[str, Any]] = check["spans"]
    with_usage = [(u, s) for s in spans if (u := _usage(s["attributes"])) is not None]
    exact = 0
    cost: float | None = 0.0
    cost_key: str | None = None
    for call in truth:
        matching = [s for u, s in with_usage if u == call]
        exact += bool(matching)
        priced = [c for s in matching if (c := _cost(s["attributes"])) is not None]
        if priced and cost is not None:
            cost_key, value = priced[0]
            cost += value
        else:
            cost = None
    exported = json.dumps([spans, check["logs"]])
    before, after = _metric_sums(check["metrics_before"]), _metric_sums(check["metrics_after"])
    added = {name: after[name] - before.get(name, 0.0) for name in after}
    tokens = [v for name, v in added.items() if "token" in name and "usage" in name]
    return Capture(
        calls=len(truth),
        spans=len(spans),
        usage_spans=len(with_usage),
        exact_calls=exact,
        cost=cost if truth else None,
        cost_key=cost_key,
        expected_cost=sum(i * PRICE_IN + o * PRICE_OUT for i, o in truth),
        prompt_exported=PROMPT_MARK in exported,
        completion_exported=COMPLETION_MARK in exported,
        metric_tokens=sum(tokens) if tokens else None,
        metric_costs={n: v for n, v in sorted(added.items()) if "cost" in n and v},
        expected_input=sum(i for i, _ in truth),
        expected_output=sum(o for _, o in truth),
    )


def usage_cell(capture: Capture) -> str:
    if capture.usage_spans == 0:
        cell = "no span"
    else:
        cell = ("yes: " if capture.usage_ok else "NO: ") + (
            f"{capture.exact_calls}/{capture.calls} calls exact"
        )
        if capture.usage_spans > capture.calls:
            cell += f", on {capture.usage_spans} spans (a sum over spans over-counts)"
    if capture.metric_tokens is not None:
        exact = math.isclose(capture.metric_tokens, capture.expected_tokens)
        cell += f"; token metric +{capture.metric_tokens:g}" + (
            " (exact)" if exact else f" (expected {capture.expected_tokens:g})"
        )
    return cell


def _dollars(value: float, expected: float) -> str:
    verdict = (
        "exact" if math.isclose(value, expected, rel_tol=1e-6) else f"expected ${expected:.3g}"
    )
    return f"${value:.3g} ({verdict})"


def cost_cell(capture: Capture) -> str:
    if capture.cost is None:
        cell = "no span"
    else:
        cell = f"`{capture.cost_key}` {_dollars(capture.cost, capture.expected_cost)}"
    if capture.metric_costs:
        names = ", ".join(f"`{name}`" for name in capture.metric_costs)
        first = next(iter(capture.metric_costs.values()))
        cell += f"; metric {names} " + (
            _dollars(first, capture.expected_cost) if capture.cost is None else "too"
        )
    return cell


def content_cell(capture: Capture) -> str:
    parts = [
        name
        for name, seen in (
            ("prompt", capture.prompt_exported),
            ("completion", capture.completion_exported),
        )
        if seen
    ]
    return " + ".join(parts) if parts else "no"
