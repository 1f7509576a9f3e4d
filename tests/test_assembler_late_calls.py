"""The assembler alone, fed hand-made spans: calls that end after their turn, and after the
message TTL.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

import logging

import pytest

from chatter_otel.service.models import new_ulid
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.records import TurnRecord
from tests._assembler_spans import (
    S,
    assembler,
    make_span,
    oi_usage,
    owner,
    tokens,
    usage,
)


def _finished_turn(a: Assembler, mid: str) -> TurnRecord:
    a.add(make_span(11, 2, usage(10, 2)), now=0.0)
    a.add(make_span(2, 1), now=0.0)
    a.add(make_span(3, 1), now=0.0)  # a step that started a background call and returned
    a.add(make_span(1, None, owner(mid), end=2 * S), now=0.0)
    (turn,) = a.take(0.1)
    return turn


@pytest.mark.parametrize("delay", [3.0, 60.0, 299.0])
def test_a_call_ending_after_its_turn_is_added_to_its_message(delay: float) -> None:
    mid = new_ulid()
    a, counters = assembler()
    assert _finished_turn(a, mid).total_tokens == 12
    for second in range(int(delay)):
        a.expire(float(second))  # the processor expires state every second
    a.add(make_span(12, 3, usage(1, 2), end=int((2 + delay) * S)), now=delay)
    (late,) = a.take(delay + 0.1)
    assert (late.kind, late.message_id, late.span_id, *tokens(late)) == (
        "late",
        mid,
        f"{12:016x}",
        1,
        2,
        3,
    )
    assert late.response_time_ms is None
    assert counters.snapshot().late == 1


def test_a_late_call_below_a_step_that_ends_even_later_is_added() -> None:
    mid = new_ulid()
    a, _ = assembler()
    _finished_turn(a, mid)
    a.add(make_span(22, 21, usage(4, 4)), now=5.0)  # the background step is still running
    assert a.take(5.1) == []
    a.add(make_span(21, 1), now=6.0)  # the step ends: the call reaches the turn through it
    (late,) = a.take(6.1)
    assert (late.kind, late.message_id, late.total_tokens) == ("late", mid, 8)


def test_a_late_span_inside_the_counted_call_is_that_call_again() -> None:
    """A nested duplicate (another instrumentation's span inside our counted one) that ends
    after the turn was written is not counted twice."""
    mid = new_ulid()
    a, counters = assembler()
    _finished_turn(a, mid)
    a.add(make_span(13, 11, oi_usage(10, 2)), now=5.0)
    assert a.take(5.1) == []
    assert (counters.snapshot().late_conflicts, counters.snapshot().late) == (1, 0)


def test_a_late_chain_reaching_the_counted_call_through_a_late_step_is_not_counted() -> None:
    """The late call waits for its step; when the step arrives below the counted call, the
    chain leaves the group at a shadowed span: the same call again."""
    mid = new_ulid()
    a, counters = assembler()
    _finished_turn(a, mid)
    a.add(make_span(15, 14, usage(10, 2)), now=5.0)
    a.add(make_span(14, 11), now=6.0)
    assert a.take(6.1) == []
    assert (counters.snapshot().late_conflicts, counters.snapshot().late) == (1, 0)


def test_a_late_call_beside_the_counted_call_is_added() -> None:
    """Under the counted call's parent step (above it, not below): another call."""
    mid = new_ulid()
    a, counters = assembler()
    _finished_turn(a, mid)
    a.add(make_span(16, 2, usage(10, 2)), now=5.0)
    (late,) = a.take(5.1)
    assert (late.kind, late.message_id, *tokens(late)) == ("late", mid, 10, 2, 12)
    assert (counters.snapshot().late_conflicts, counters.snapshot().late) == (0, 1)


def test_a_call_ending_after_the_message_ttl_is_counted_unowned_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mid = new_ulid()
    a, counters = assembler()
    _finished_turn(a, mid)
    a.expire(300.5)
    with caplog.at_level(logging.WARNING, logger="chatter_otel.writeback"):
        a.add(make_span(12, 3, usage(1, 2)), now=301.0)
        assert a.take(301.1) == []
        a.expire(3902.0)
    assert counters.snapshot().unowned == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert a.sizes == dict.fromkeys(a.sizes, 0)


def test_a_turn_whose_trace_is_silent_for_longer_than_the_ttl_keeps_its_calls() -> None:
    """A step with no span ending for over 300 s: the calls before it still reach the turn."""
    mid = new_ulid()
    a, counters = assembler(trace_ttl=300.0)
    a.add(make_span(11, 2, usage(10, 2)), now=0.0)
    a.add(make_span(2, 1), now=0.1)  # the first node ends
    for second in range(1, 900):
        a.expire(float(second))  # a 15-minute step: nothing ends
    a.add(make_span(4, 3, usage(1, 1)), now=900.0)  # the long step's own call
    a.add(make_span(3, 1), now=900.0)
    a.add(make_span(1, None, owner(mid)), now=900.0)
    (turn,) = a.take(900.1)
    assert (*tokens(turn), turn.calls) == (11, 3, 14, 2)
    assert counters.snapshot().unowned == 0
