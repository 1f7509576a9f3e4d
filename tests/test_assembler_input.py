"""The assembler alone, fed hand-made spans: spans in any order, broken chains, cycles and
duplicates, the trace limit, unowned calls and arbitrary attributes.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatter_otel import conventions as c
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import extract, validation
from tests._assembler_spans import (
    LIMITS,
    TRACE,
    assembler,
    make_span,
    owner,
    usage,
)

REASONS = {
    validation.R_TOKENS_TYPE,
    validation.R_TOKENS_NEGATIVE,
    validation.R_TOKENS_TOO_LARGE,
    validation.R_TOKENS_NOT_FINITE,
}


def test_spans_in_any_order_within_the_grace() -> None:
    mid = new_ulid()
    a, _ = assembler(grace=1.0)
    # Owner first, then the chain span, then the LLM span: all within the grace window.
    a.add(make_span(1, None, owner(mid)), now=0.0)
    a.add(make_span(2, 1), now=0.1)
    a.add(make_span(3, 2, usage(5, 6)), now=0.2)
    assert a.take(0.5) == []
    (record,) = a.take(1.5)
    assert (record.message_id, record.total_tokens, record.response_time_ms) == (mid, 11, 1000)
    assert record.span_id == f"{1:016x}" and record.trace_id == f"{TRACE:032x}"


def test_broken_chains_cycles_and_duplicates_never_raise() -> None:
    mid = new_ulid()
    a, counters = assembler()
    a.add(make_span(7, 7, usage(1, 1)), now=0.0)  # its own parent
    a.add(make_span(8, 9, usage(1, 1)), now=0.0)  # 9 <-> 8 cycle
    a.add(make_span(9, 8), now=0.0)
    a.add(make_span(10, 99, usage(2, 2)), now=0.0)  # parent never seen
    a.add(make_span(1, None, owner(mid)), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)  # duplicate delivery
    (record,) = a.take(0.1)
    assert record.usage_missing and record.total_tokens is None
    a.expire(3599.0)
    assert counters.snapshot().unowned == 0  # they may still find their owner
    a.expire(3601.0)
    stats = counters.snapshot()
    assert stats.duplicates == 1
    assert stats.unowned == 3  # 7, 8 and 10: no chain from them reaches the owner
    assert a.traces == 0


def test_trace_limit_evicts_the_oldest_and_finalizes_its_owner() -> None:
    a, counters = assembler(max_traces=2, grace=100.0)
    mids = [new_ulid() for _ in range(3)]
    for index, mid in enumerate(mids):
        trace_id = TRACE + index
        a.add(make_span(2, 1, usage(1, 1), trace_id=trace_id), now=float(index))
        a.add(make_span(1, None, owner(mid), trace_id=trace_id), float(index))
    assert a.traces == 2
    (evicted,) = a.take(3.0)  # the oldest owner was finalized when its trace was dropped
    assert evicted.message_id == mids[0] and evicted.total_tokens == 2
    assert [r.message_id for r in a.take(200.0, force=True)] == mids[1:]
    assert counters.snapshot().traces_evicted == 0  # nothing was waiting in it


def test_a_call_under_a_root_without_owner_is_unowned_at_once() -> None:
    a, counters = assembler()
    a.add(make_span(2, 1, usage(1, 1)), now=0.0)
    a.add(make_span(1, None), now=0.0)  # the trace's root: no message id anywhere above
    assert counters.snapshot().unowned == 1
    assert a.traces == 0


def test_unowned_usage_is_logged_at_warning_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, counters = assembler()
    with caplog.at_level(logging.WARNING, logger="chatter_otel.writeback"):
        for index in range(5):
            trace_id = TRACE + index
            a.add(make_span(2, 1, usage(1, 1), trace_id=trace_id), now=0.0)
            a.add(make_span(1, None, trace_id=trace_id), now=0.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert counters.snapshot().unowned == 5
    assert len(warnings) == 1
    assert "1 LLM call(s) with usage had no message" in warnings[0].getMessage()


values = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
keys = st.sampled_from(sorted(extract.USAGE_KEYS | set(extract.MODEL_KEYS) | {c.CHATTER_CALL_ID}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(keys, values, max_size=6), min_size=1, max_size=5),
    st.one_of(st.builds(new_ulid), st.text(max_size=30), st.integers()),
    st.permutations(range(6)),
)
def test_arbitrary_attributes_never_raise_and_records_are_database_safe(
    calls: list[dict[str, Any]], message_id: Any, order: list[int]
) -> None:
    a, counters = assembler()
    spans = [make_span(1, None, {c.CHATTER_MESSAGE_ID: message_id})]
    spans += [make_span(10 + i, 1 if i % 2 == 0 else 9 + i, attrs) for i, attrs in enumerate(calls)]
    for index in order:
        if index < len(spans):
            a.add(spans[index], now=0.0)
    records = a.take(1.0, force=True)
    a.expire(10_000.0)
    for record in records:
        record.validate(LIMITS)
        assert record.message_id == message_id
    assert len(records) <= 1 + len(calls)
    stats = counters.snapshot()
    assert set(stats.rejected) <= {
        *REASONS,
        validation.R_COST,
        validation.R_TEXT,
        validation.R_MESSAGE_ID,
        validation.R_CALL_ID,
    }
    assert a.sizes == dict.fromkeys(a.sizes, 0)
