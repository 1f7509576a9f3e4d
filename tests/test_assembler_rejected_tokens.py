"""The assembler alone, fed hand-made spans: tokens that are rejected carry no cost.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

from chatter_otel import conventions as c
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import validation
from tests._assembler_spans import (
    assembler,
    make_span,
    oi_usage,
    owner,
    tokens,
    usage,
)


def test_a_turn_whose_tokens_are_rejected_contributes_no_cost() -> None:
    """Three calls of 1e9 tokens each: valid one by one, their sum does not fit the column.
    The tokens were refused but $1,500 of cost computed from them was written."""
    mid = new_ulid()
    a, counters = assembler()
    priced = {c.GEN_AI_PROVIDER_NAME: "offline", c.GEN_AI_REQUEST_MODEL: "offline-echo-1"}
    for span_id in (11, 12, 13):  # $500 each at $0.50 per million input tokens
        a.add(make_span(span_id, 1, {**usage(10**9, 0), **priced}), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.cost, record.cost_unpriced) == (None, None, None, None, False)
    assert record.usage_missing
    assert counters.snapshot().rejected == {validation.R_TOKENS_TOO_LARGE: 1}


def test_a_call_whose_tokens_are_rejected_lends_no_cost() -> None:
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(3, 2, oi_usage(-1, 5)), now=0.0)  # the inner span's tokens are refused
    a.add(make_span(2, 1, usage(7, 5, cost=0.75)), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.cost, record.calls) == (None, None, None, None, 0)
