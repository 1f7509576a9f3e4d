"""The assembler alone, fed hand-made spans: turns that share one trace id (a constant
traceparent) cost the same per turn, and memory stays bounded.

Spans are built as the SDK hands them to ``on_end`` (children usually before parents); ``now``
is the assembler's clock in seconds, span times are nanoseconds.
"""

from __future__ import annotations

from chatter_otel.service.models import new_ulid
from tests._assembler_spans import (
    assembler,
    make_span,
    oi_usage,
    owner,
    tokens,
    usage,
)


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
