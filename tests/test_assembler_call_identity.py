"""The assembler alone, fed hand-made spans: each call is counted once, by its identity
(parallel calls, instrumentation siblings, roll-ups, nested duplicates, asyncio).

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Tracer

from chatter_otel import conventions as c
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback.assembler import Assembler
from tests._assembler_spans import (
    S,
    assembler,
    make_span,
    oi_usage,
    owner,
    tokens,
    usage,
)


def test_parallel_calls_with_openinference_siblings_count_once_each() -> None:
    """The case that stored (21, 21, 42): a slow call starts, a fast one starts later and is
    answered first, its ``chat`` span staying open a little after ``record()``. openinference
    parents its LLM spans on the node's CHAIN span, so each call is two sibling spans that
    share the call id; their intervals prove nothing."""
    mid = new_ulid()
    a, counters = assembler()
    ms = S // 1000
    spans = [  # in the order they end
        make_span(11, 2, oi_usage(7, 7, "fast"), start=2000 * ms, end=5000 * ms),
        make_span(13, 2, oi_usage(7, 7, "slow"), start=1000 * ms, end=6000 * ms),
        make_span(14, 2, usage(7, 7, "slow"), start=900 * ms, end=6100 * ms),
        make_span(12, 2, usage(7, 7, "fast"), start=1900 * ms, end=6500 * ms),
        make_span(2, 1, {c.OI_SPAN_KIND: "CHAIN"}, start=800 * ms, end=7000 * ms),
        make_span(1, None, owner(mid), start=0, end=8000 * ms),
    ]
    for span in spans:
        a.add(span, now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (14, 14, 28, 2)
    assert counters.snapshot().rollups_ignored == 2


def test_hand_wrapped_call_beside_an_unwrapped_one_with_equal_tokens_both_count() -> None:
    """The case that stored (7, 7, 14): our span for a call made by hand, openinference's span
    for another call inside its interval with the same tokens. Different calls: both count."""
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(12, 2, oi_usage(7, 7, "lc-run"), start=2 * S, end=3 * S), now=0.0)
    a.add(make_span(11, 2, usage(7, 7, "by-hand"), start=1 * S, end=4 * S), now=0.0)
    a.add(make_span(2, 1, start=1 * S, end=5 * S), now=0.0)
    a.add(make_span(1, None, owner(mid), start=0, end=6 * S), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (14, 14, 28, 2)


def test_spans_without_call_id_count_apart_whatever_their_timing() -> None:
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(12, 1, oi_usage(7, 7), start=2 * S, end=3 * S), now=0.0)
    a.add(make_span(11, 1, usage(7, 7), start=1 * S, end=4 * S), now=0.0)
    a.add(make_span(1, None, owner(mid), start=0, end=6 * S), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (14, 14, 28, 2)


def test_identical_sequential_calls_count_twice() -> None:
    mid = new_ulid()
    a, _ = assembler()
    for index, start in enumerate((1, 3)):
        call = f"call-{index}"
        a.add(make_span(20 + index, 10 + index, oi_usage(5, 5, call)), now=0.0)
        a.add(make_span(30 + index, 10 + index, usage(5, 5, call)), now=0.0)
        a.add(make_span(10 + index, 1, start=start * S, end=(start + 1) * S), now=0.0)
    a.add(make_span(1, None, owner(mid), start=0, end=6 * S), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (10, 10, 20, 2)


def test_parallel_graph_branches_count_each_call_once() -> None:
    mid = new_ulid()
    a, _ = assembler()
    for branch in range(3):
        chain, ours, theirs, call = 10 + branch, 20 + branch, 30 + branch, f"b{branch}"
        a.add(make_span(theirs, chain, oi_usage(4, 2, call), start=S, end=2 * S), now=0.0)
        a.add(make_span(ours, chain, usage(4, 2, call), start=S, end=3 * S), now=0.0)
        a.add(make_span(chain, 1, {c.OI_SPAN_KIND: "CHAIN"}, start=S, end=4 * S), now=0.0)
    a.add(make_span(1, None, owner(mid), start=0, end=5 * S), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (12, 6, 18, 3)


def test_nested_duplicate_counts_the_inner_span_with_the_outer_ones_cost_and_reason() -> None:
    mid = new_ulid()
    a, counters = assembler()
    inner = oi_usage(10, 2)
    outer = usage(10, 2, cost=0.5, finish="stop")
    a.add(make_span(3, 2, inner), now=0.0)
    a.add(make_span(2, 1, outer), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (10, 2, 12, 1)
    assert (str(record.cost), record.finish_reason) == ("0.5", "stop")
    assert counters.snapshot().rollups_ignored == 1


def test_a_hand_wrapped_span_around_a_captured_call_is_a_roll_up() -> None:
    """``model_span`` by hand (its own call id) around a LangChain call our capture also
    records (the run's id): nested, so the outer one is the same call, not a second one."""
    mid = new_ulid()
    a, _ = assembler()
    a.add(make_span(4, 3, oi_usage(6, 3, "run")), now=0.0)
    a.add(make_span(3, 2, usage(6, 3, "run")), now=0.0)
    a.add(make_span(2, 1, usage(6, 3, "by-hand", cost=0.25)), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls, str(record.cost)) == (6, 3, 9, 1, "0.25")


def test_sibling_with_the_same_call_id_counts_once_also_when_it_ends_late() -> None:
    mid = new_ulid()
    a, counters = assembler()
    a.add(make_span(11, 2, usage(10, 2, "a", cost=0.01)), now=0.0)
    a.add(make_span(2, 1), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (turn,) = a.take(0.1)
    assert (turn.total_tokens, turn.calls) == (12, 1)
    a.add(make_span(12, 2, oi_usage(10, 2, "a")), now=5.0)  # openinference's, after the turn
    assert a.take(5.1) == []
    assert counters.snapshot().rollups_ignored == 1


def test_same_call_id_lends_what_the_counted_span_lacks() -> None:
    """Between siblings of one call, ours (GenAI convention) counts; openinference's span
    knows the model ours missed, and its cost is ours (theirs reports none)."""
    mid = new_ulid()
    a, _ = assembler()
    theirs = {**oi_usage(10, 2, "a"), c.OI_LLM_MODEL_NAME: "gpt-x"}
    a.add(make_span(11, 1, theirs, end=2 * S), now=0.0)
    a.add(make_span(12, 1, usage(10, 2, "a", cost=0.125, finish="length"), end=3 * S), now=0.0)
    a.add(make_span(1, None, owner(mid)), now=0.0)
    (record,) = a.take(0.1)
    assert (*tokens(record), record.calls) == (10, 2, 12, 1)
    assert (record.model, record.finish_reason, str(record.cost)) == ("gpt-x", "length", "0.125")


class Feed(SpanProcessor):
    """Hands every ended SDK span to the assembler, as the write-back processor does."""

    def __init__(self, target: Assembler) -> None:
        self.target = target

    def on_end(self, span: ReadableSpan) -> None:
        self.target.add(span, now=time.monotonic())


def sdk_tracer(target: Assembler) -> Tracer:
    provider = TracerProvider()
    provider.add_span_processor(Feed(target))
    return provider.get_tracer("tests")


async def test_asyncio_gather_of_calls_counts_each_call_once() -> None:
    """Five calls with equal usage in parallel, each reported by our span and by an
    openinference-like sibling span (same call id), ending in scrambled order."""
    a, _ = assembler()
    tracer = sdk_tracer(a)
    mid = new_ulid()

    async def call(index: int) -> None:
        call_id = uuid.uuid4().hex
        with tracer.start_as_current_span("chat", attributes=usage(3, 4, call_id)):
            theirs = tracer.start_span("ChatOpenAI", attributes=oi_usage(3, 4, call_id))
            await asyncio.sleep(0.001 * (5 - index))
            theirs.end()
            await asyncio.sleep(0.001 * index)

    with tracer.start_as_current_span("invoke_workflow chat", attributes=owner(mid)):
        await asyncio.gather(*(call(i) for i in range(5)))
    (record,) = a.take(time.monotonic(), force=True)
    assert (*tokens(record), record.calls) == (15, 20, 35, 5)
