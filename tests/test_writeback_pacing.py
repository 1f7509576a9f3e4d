"""The assembler thread's inbox: ``on_end`` waits only when it is far behind, and boundedly."""

from __future__ import annotations

import time
from pathlib import Path

from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.buffer import RecordBuffer
from chatter_otel.writeback.journal import Journal
from chatter_otel.writeback.pacing import BACKPRESSURE_WAIT, HARD_LIMIT, AssemblyWorker
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool import Spool
from chatter_otel.writeback.stats import Counters


def _worker(tmp_path: Path, counters: Counters) -> AssemblyWorker:
    def spill(records: list[TurnRecord]) -> int:
        raise AssertionError("nothing is spooled here")

    return AssemblyWorker(
        assembler=Assembler(
            pricing=None,
            counters=counters,
            limits=(100, 100, 100),
            grace=0.1,
            trace_ttl=300.0,
            done_ttl=2.0,
            max_traces=10,
            max_spans_per_trace=10,
        ),
        buffer=RecordBuffer(10, 10),
        journal=Journal(Spool(tmp_path, seal_after=float("inf"))),
        counters=counters,
        spill=spill,
        flush_interval=1.0,
        trace_ttl=300.0,
    )


def test_backpressure_is_a_bounded_counted_wait(tmp_path: Path) -> None:
    """The assembler is stuck (its thread never started): ``on_end`` over the hard limit
    waits on the condition for the bounded time, once, and it is counted."""
    counters = Counters(None)
    worker = _worker(tmp_path, counters)
    worker.inbox.extend([None] * (HARD_LIMIT + 1))  # type: ignore[list-item]  # never read
    started = time.monotonic()
    worker.backpressure()
    waited = time.monotonic() - started
    assert BACKPRESSURE_WAIT <= waited < BACKPRESSURE_WAIT + 1.0
    assert counters.snapshot().throttled == 1


def test_backpressure_ends_when_the_assembler_stops(tmp_path: Path) -> None:
    counters = Counters(None)
    worker = _worker(tmp_path, counters)
    worker.inbox.extend([None] * (HARD_LIMIT + 1))  # type: ignore[list-item]  # never read
    worker.stop()
    started = time.monotonic()
    worker.backpressure()
    assert time.monotonic() - started < 0.5
