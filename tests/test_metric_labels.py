"""Metric label values stay bounded whatever model names clients send (issue 13.7).

Before: 3,000 client-chosen model names made 3,000 series per metric (/metrics 32 MB), one
WARNING per name, and past the SDK's cardinality limit (2,000) real models fell into the
overflow series. A model not known to pricing or configuration is now ``_OTHER`` in metric
attributes; spans keep the real name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage

from chatter_otel import _runtime, model_span, workflow_span
from chatter_otel import conventions as c
from chatter_otel.config import MODEL_LABEL_MAX_LENGTH
from chatter_otel.testing import CapturedTelemetry, capture_telemetry

UNKNOWN_MODELS = 3000
OVERFLOW = "otel.metric.overflow"


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry() as captured:
        yield captured


def _call(provider: str, model: str) -> None:
    with model_span(provider=provider, model=model) as call:
        call.record(
            AIMessage(
                content="x",
                usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
                response_metadata={"model_name": model},
            )
        )


def _series(cap: CapturedTelemetry, metric: str) -> list[dict[str, object]]:
    return [dict(p.attributes) for p in cap.points(metric)]


def test_unknown_models_share_one_label_value(cap: CapturedTelemetry) -> None:
    for i in range(UNKNOWN_MODELS):
        _call("openai", f"junk-model-{i}")
    other = {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "openai",
        c.GEN_AI_REQUEST_MODEL: c.OTHER_VALUE,
        c.GEN_AI_RESPONSE_MODEL: c.OTHER_VALUE,
    }
    assert _series(cap, c.METRIC_TOKEN_USAGE) == [
        {**other, c.GEN_AI_TOKEN_TYPE: "input"},
        {**other, c.GEN_AI_TOKEN_TYPE: "output"},
    ]
    assert _series(cap, c.METRIC_OPERATION_DURATION) == [other]
    assert cap.point(c.METRIC_OPERATION_DURATION, other).count == UNKNOWN_MODELS
    unpriced = {c.GEN_AI_PROVIDER_NAME: "openai", c.GEN_AI_REQUEST_MODEL: c.OTHER_VALUE}
    assert cap.point(c.METRIC_LLM_UNPRICED, unpriced).value == UNKNOWN_MODELS


def test_spans_keep_the_real_model_name(cap: CapturedTelemetry) -> None:
    _call("openai", "junk-model-7")
    span = cap.span("chat junk-model-7")
    attrs = span.attributes or {}
    assert attrs[c.GEN_AI_REQUEST_MODEL] == "junk-model-7"
    assert attrs[c.GEN_AI_RESPONSE_MODEL] == "junk-model-7"


def test_real_models_never_fall_into_the_overflow_series(cap: CapturedTelemetry) -> None:
    for i in range(UNKNOWN_MODELS):
        _call("openai", f"junk-model-{i}")
    _call("openai", "gpt-4o-mini")
    _call("offline", "offline-echo-1")
    series = _series(cap, c.METRIC_LLM_COST)
    assert series == [
        {c.GEN_AI_PROVIDER_NAME: "openai", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"},
        {c.GEN_AI_PROVIDER_NAME: "offline", c.GEN_AI_REQUEST_MODEL: "offline-echo-1"},
    ]
    all_series = [
        s for m in (c.METRIC_TOKEN_USAGE, c.METRIC_OPERATION_DURATION) for s in _series(cap, m)
    ]
    assert [s for s in all_series if OVERFLOW in s] == []
    assert len(all_series) == 3 * 3  # (_OTHER, gpt-4o-mini, offline-echo-1) x (in, out, dur)


IN_HOUSE = "in-house-model"
"""A self-hosted model pricing does not know, named in CHATTER_OTEL_KNOWN_MODELS."""


@pytest.fixture
def configured() -> Iterator[CapturedTelemetry]:
    with capture_telemetry(known_models=(IN_HOUSE,)) as captured:
        yield captured


def test_a_configured_model_keeps_its_name_on_the_usage_metrics(
    configured: CapturedTelemetry,
) -> None:
    _call("vllm", IN_HOUSE)
    own = {
        c.GEN_AI_OPERATION_NAME: "chat",
        c.GEN_AI_PROVIDER_NAME: "vllm",
        c.GEN_AI_REQUEST_MODEL: IN_HOUSE,
        c.GEN_AI_RESPONSE_MODEL: IN_HOUSE,
    }
    assert _series(configured, c.METRIC_TOKEN_USAGE) == [
        {**own, c.GEN_AI_TOKEN_TYPE: "input"},
        {**own, c.GEN_AI_TOKEN_TYPE: "output"},
    ]
    assert configured.point(c.METRIC_TOKEN_USAGE, {**own, c.GEN_AI_TOKEN_TYPE: "input"}).sum == 3
    assert _series(configured, c.METRIC_LLM_UNPRICED) == [
        {c.GEN_AI_PROVIDER_NAME: "vllm", c.GEN_AI_REQUEST_MODEL: IN_HOUSE}
    ]


def test_an_unconfigured_unpriced_model_is_other_beside_a_configured_one(
    configured: CapturedTelemetry,
) -> None:
    _call("vllm", IN_HOUSE + "-v2")
    assert _series(configured, c.METRIC_LLM_UNPRICED) == [
        {c.GEN_AI_PROVIDER_NAME: "vllm", c.GEN_AI_REQUEST_MODEL: c.OTHER_VALUE}
    ]


def test_a_priced_name_longer_than_a_label_is_other(cap: CapturedTelemetry) -> None:
    # Priced by prefix, but 101 characters: longer than any model column holds.
    long_name = "claude-3-5-haiku-" + "x" * (MODEL_LABEL_MAX_LENGTH + 1 - len("claude-3-5-haiku-"))
    _call("anthropic", long_name)
    assert _series(cap, c.METRIC_LLM_COST) == [
        {c.GEN_AI_PROVIDER_NAME: "anthropic", c.GEN_AI_REQUEST_MODEL: c.OTHER_VALUE}
    ]


def test_unpriced_warnings_are_rate_limited(
    cap: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatter_otel")
    with workflow_span("chat"):
        for i in range(UNKNOWN_MODELS):
            _call("openai", f"junk-model-{i}")
    warnings = [r.getMessage() for r in caplog.records if "price" in r.getMessage()]
    assert warnings == [
        f"no price known for provider=openai model=junk-model-{i}: cost left unset "
        "(add it to CHATTER_OTEL_PRICES_FILE)"
        for i in range(_runtime.WARN_PER_WINDOW)
    ]


def test_priced_look_alike_names_are_bounded_too(
    cap: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    # genai-prices matches by prefix: every claude-3-5-haiku-<anything> has a price.
    caplog.set_level(logging.WARNING, logger="chatter_otel")
    _call("anthropic", "claude-3-5-haiku-latest")
    for i in range(300):
        _call("anthropic", f"claude-3-5-haiku-{i}")
    labels = {str(s[c.GEN_AI_REQUEST_MODEL]) for s in _series(cap, c.METRIC_LLM_COST)}
    assert len(labels) == _runtime.MAX_MODEL_LABELS + 1  # the first 100 names, and _OTHER
    assert "claude-3-5-haiku-latest" in labels and c.OTHER_VALUE in labels
    full = [r for r in caplog.records if "distinct model names" in r.getMessage()]
    assert len(full) == 1
