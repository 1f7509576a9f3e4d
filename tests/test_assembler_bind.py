"""The assembler alone, fed hand-made spans: a turn bound to its message after it ended.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

from typing import Any

from chatter_otel import conventions as c
from chatter_otel.service.models import new_ulid
from tests._assembler_spans import (
    assembler,
    make_span,
    owner,
    tokens,
    usage,
)


def unbound() -> dict[str, Any]:
    return {c.CHATTER_MESSAGE_UNBOUND: True, c.CHATTER_CONVERSATION_ID: CONVERSATION}


def bind(mid: str) -> dict[str, Any]:
    return {c.CHATTER_MESSAGE_BIND: True, c.CHATTER_MESSAGE_ID: mid}


CONVERSATION = new_ulid()


def test_an_unbound_turn_waits_for_its_bind_and_then_gets_its_usage() -> None:
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(11, 1, usage(10, 2)), now=0.0)
    a.add(make_span(1, None, unbound()), now=0.0)
    assert a.take(100.0) == [] and a.pending_owners == 1
    a.add(make_span(2, 1, bind(mid)), now=100.0)  # the app created its row, then bound it
    (record,) = a.take(100.1)
    assert (record.message_id, record.conversation_id, *tokens(record)) == (
        mid,
        CONVERSATION,
        10,
        2,
        12,
    )
    assert record.span_id == f"{1:016x}"


def test_a_bind_that_arrives_before_its_turn_span_is_kept_for_it() -> None:
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(2, 1, bind(mid)), now=0.0)
    a.add(make_span(11, 1, usage(1, 1)), now=0.0)
    a.add(make_span(1, None, unbound()), now=0.0)
    (record,) = a.take(0.1)
    assert (record.message_id, record.total_tokens) == (mid, 2)


def test_an_unbound_turn_never_bound_is_counted_unowned_after_the_message_ttl() -> None:
    a, counters = assembler()
    a.add(make_span(11, 1, usage(1, 1)), now=0.0)
    a.add(make_span(1, None, unbound()), now=0.0)
    a.expire(299.0)
    assert (a.take(299.0, force=True), counters.snapshot().unowned) == ([], 0)
    a.expire(300.0)
    assert (a.take(300.0), counters.snapshot().unowned) == ([], 1)
    a.add(make_span(2, 1, bind(new_ulid())), now=301.0)  # too late: counted, not applied
    assert a.take(301.1) == []
    assert counters.snapshot().rejected == {"bind_unmatched": 1}


def test_a_bind_for_a_turn_that_named_its_message_is_refused() -> None:
    mid = new_ulid()
    a, counters = assembler(grace=1.0)
    a.add(make_span(11, 1, usage(1, 1)), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    a.add(make_span(2, 1, bind(new_ulid())), now=0.5)
    (record,) = a.take(1.5)
    assert record.message_id == mid
    assert counters.snapshot().rejected == {"bind_unmatched": 1}
