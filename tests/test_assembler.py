"""The assembler alone, fed hand-made spans: which calls count, for which message, and when.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanContext, Tracer

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import extract, validation
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.stats import Counters

LIMITS = (100, 50, 50)
PRICING = Pricing()
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
S = 1_000_000_000  # one second in ns
RESOURCE = Resource.get_empty()

REASONS = {
    validation.R_TOKENS_TYPE,
    validation.R_TOKENS_NEGATIVE,
    validation.R_TOKENS_TOO_LARGE,
    validation.R_TOKENS_NOT_FINITE,
}


def make_span(
    span_id: int,
    parent: int | None,
    attrs: dict[str, Any] | None = None,
    *,
    start: int = 1 * S,
    end: int = 2 * S,
    trace_id: int = TRACE,
) -> ReadableSpan:
    return ReadableSpan(
        name=f"s{span_id}",
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=SpanContext(trace_id, parent, is_remote=False) if parent is not None else None,
        attributes=attrs or {},
        start_time=start,
        end_time=end,
        resource=RESOURCE,
    )


def assembler(**kwargs: Any) -> tuple[Assembler, Counters]:
    counters = Counters(None)
    options: dict[str, Any] = {
        "pricing": PRICING,
        "counters": counters,
        "limits": LIMITS,
        "grace": 0.0,
        "trace_ttl": 10.0,
        "message_ttl": 300.0,
        "call_ttl": 3600.0,
        "max_traces": 100,
        "max_spans_per_trace": 1000,
    }
    options.update(kwargs)
    return Assembler(**options), counters


def usage(
    inp: int,
    out: int,
    call_id: str | None = None,
    *,
    cost: float | None = None,
    finish: str | None = None,
) -> dict[str, Any]:
    """Our ``chat`` span's usage (GenAI convention)."""
    attrs: dict[str, Any] = {c.GEN_AI_USAGE_INPUT_TOKENS: inp, c.GEN_AI_USAGE_OUTPUT_TOKENS: out}
    if call_id is not None:
        attrs[c.CHATTER_CALL_ID] = call_id
    if cost is not None:
        attrs[c.GEN_AI_USAGE_COST] = cost
    if finish is not None:
        attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] = (finish,)
    return attrs


def oi_usage(inp: int, out: int, call_id: str | None = None) -> dict[str, Any]:
    """openinference's LLM span usage (tagged with the call id when our capture is on)."""
    attrs: dict[str, Any] = {
        c.OI_SPAN_KIND: c.OI_SPAN_KIND_LLM,
        c.OI_TOKEN_COUNT_PROMPT: inp,
        c.OI_TOKEN_COUNT_COMPLETION: out,
    }
    if call_id is not None:
        attrs[c.CHATTER_CALL_ID] = call_id
    return attrs


def owner(mid: str) -> dict[str, Any]:
    return {c.CHATTER_MESSAGE_ID: mid}


def tokens(record: TurnRecord) -> tuple[int | None, int | None, int | None]:
    return (record.prompt_tokens, record.completion_tokens, record.total_tokens)


# --- ordering, broken input, limits --------------------------------------------------------------


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


# --- 13.2: each call counted once, by identity --------------------------------------------------


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


# --- 13.3: late calls ---------------------------------------------------------------------------


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


# --- 13.4: a constant traceparent ---------------------------------------------------------------


def test_turns_sharing_one_trace_id_cost_the_same_per_turn_and_memory_stays_bounded() -> None:
    """Every request carries the same ``traceparent``: 10,000 turns in one trace. The old
    assembler kept every earlier call of the trace and scanned them at each turn (CPU per
    1,000 turns 0.84 s -> 11.2 s). What a turn costs depends on the state it scans, so the
    state must stop growing; the CPU figure itself is ``python -m benchmarks.assembler_trace``
    (timings flake in a test on a shared machine)."""
    a, _ = assembler(max_index=20_000, max_spans_per_trace=5_000, trace_ttl=300.0)
    remote = 0xC0FFEE  # the client's span: never seen here
    ids = iter(range(1_000, 10**9))
    grown: list[dict[str, int]] = []
    exact = 0
    for batch in range(10):
        turns = []
        for _ in range(1_000):
            server, workflow, chain, ours, theirs = (next(ids) for _ in range(5))
            call_id = f"{workflow:032x}"
            turns.append(
                (
                    make_span(theirs, chain, oi_usage(3, 4, call_id)),
                    make_span(ours, chain, usage(3, 4, call_id)),
                    make_span(chain, workflow),
                    make_span(workflow, server, owner(new_ulid())),
                    make_span(server, remote),  # the HTTP server span
                )
            )
        for turn, spans in enumerate(turns):
            now = (batch * 1_000 + turn) * 0.01  # 100 turns a second
            for span in spans:
                a.add(span, now)
            exact += sum(tokens(r) == (3, 4, 7) and r.calls == 1 for r in a.take(now))
            if turn % 100 == 0:
                a.expire(now)
        grown.append(dict(a.sizes))
    assert exact == 10_000
    for sizes in grown:  # after every 1,000 turns, not only at the end
        assert sizes["index"] <= 20_000 + 100 * 5, grown  # trimmed every 100 turns
        assert sizes["unresolved"] <= 5_000, grown  # server spans waiting on the client's span
        assert sizes["aging"] <= 2 * (20_000 + 100 * 5), grown  # both age queues, likewise
        assert (sizes["traces"], sizes["open"]) == (1, 0), grown


# --- 13.8: rejected tokens carry no cost --------------------------------------------------------


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


# --- 12.4: a turn bound to its message after it ended -------------------------------------------


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
