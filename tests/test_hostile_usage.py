"""Whatever a provider (or a bug) puts in a response, recording it never raises and never
puts an invalid number on a span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage

from chatter_otel import conventions as c
from chatter_otel import model_span
from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from chatter_otel.usage import MAX_TOKENS, from_ai_message

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
usage_like = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": anything,
        "output_tokens": anything,
        "total_tokens": anything,
        "input_token_details": st.dictionaries(
            st.sampled_from(["cache_read", "cache_creation"]), anything
        )
        | anything,
        "output_token_details": st.dictionaries(st.just("reasoning"), anything) | anything,
    },
)


class Weird:
    """An object that only pretends to be a message."""

    def __init__(self, usage: Any, meta: Any) -> None:
        self.usage_metadata = usage
        self.response_metadata = meta
        self.id = usage


@given(usage=usage_like, meta=st.dictionaries(st.text(max_size=15), anything, max_size=3))
def test_extraction_keeps_only_plausible_counts(
    usage: dict[str, Any], meta: dict[str, Any]
) -> None:
    response = from_ai_message(Weird(usage, meta))
    for value in (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.cache_read_input_tokens,
        response.usage.cache_creation_input_tokens,
        response.usage.reasoning_output_tokens,
    ):
        assert value is None or (type(value) is int and 0 <= value <= MAX_TOKENS)


@pytest.fixture(scope="module")
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry() as captured:
        yield captured


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(
    usage=usage_like,
    meta=st.dictionaries(st.sampled_from(["model_name", "finish_reason", "x"]), anything),
)
def test_recording_hostile_responses_never_raises(
    cap: CapturedTelemetry, usage: dict[str, Any], meta: dict[str, Any]
) -> None:
    cap.exporter.clear()
    with model_span(provider="openai", model="gpt-4o-mini") as call:
        call.record(Weird(usage, meta))
    (span,) = cap.spans()
    for key in (c.GEN_AI_USAGE_INPUT_TOKENS, c.GEN_AI_USAGE_OUTPUT_TOKENS):
        value = (span.attributes or {}).get(key)
        assert value is None or (type(value) is int and 0 <= value <= MAX_TOKENS)
    cost = (span.attributes or {}).get(c.CHATTER_USAGE_COST)
    assert cost is None or (isinstance(cost, float) and cost >= 0)


@pytest.mark.parametrize("bad", [-1, 10**12, 1.5, float("nan"), "12", True, None])
def test_a_bad_input_count_is_unknown_not_zero(bad: Any) -> None:
    message = AIMessage(content="x")
    message.usage_metadata = {"input_tokens": bad, "output_tokens": 3, "total_tokens": 3}
    assert from_ai_message(message).usage.input_tokens is None
    assert from_ai_message(message).usage.output_tokens == 3
