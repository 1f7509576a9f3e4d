"""Several processes writing to the same conversations, and a writer killed mid-transaction."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from sqlalchemy.engine import URL

from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor
from tests.test_writeback_support import (
    aggregates_exact,
    conversation,
    ledger_rows,
    message,
    price,
    seed,
    simple_turn,
)

Turn = tuple[str, str, list[tuple[int, int]]]
"""(message id, conversation id, calls as (input, output) tokens)."""

CRASH_EXIT = 17


class _SeededIds(IdGenerator):
    """The same trace and span ids on every run: a rerun is a replay of the same spans."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


def _emit(
    url: str,
    spool: str,
    turns: list[Turn],
    seed: int,
    crash_at: tuple[str, int] | None = None,
    barrier: Any = None,
) -> dict[str, Any]:
    """Runs in a spawned process: one processor, the turns, a clean shutdown."""
    processor = WritebackSpanProcessor(
        url,
        pricing=Pricing(),
        flush_interval=0.02,
        late_span_grace=0.01,
        batch_size=7,
        spool_path=spool,
        backoff=(0.01, 0.2),
    )
    if crash_at is not None:
        stage, after = crash_at
        seen = [0]

        def fault(step: str) -> None:
            if step == stage:
                seen[0] += 1
                if seen[0] >= after:
                    os._exit(CRASH_EXIT)  # killed between two statements of a transaction

        processor.store.fault = fault
    provider = TracerProvider(id_generator=_SeededIds(seed))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("worker")
    if barrier is not None:
        barrier.wait(60)  # all workers write at the same time
    started = time.time()
    for index, (mid, cid, calls) in enumerate(turns):
        simple_turn(tracer, mid, cid, calls, nested_openinference=len(calls) % 2 == 0)
        if index % 10 == 0:
            time.sleep(0.005)  # spread over several flushes so transactions interleave
    ok = provider.force_flush(120_000)
    finished = time.time()
    provider.shutdown()
    stats = processor.stats
    return {
        "ok": ok,
        "applied": stats.applied,
        "db_errors": stats.db_errors,
        "lost": stats.lost,
        "window": (started, finished),
    }


def _run(target: Any, *args: Any) -> int:
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=target, args=args)
    process.start()
    process.join(120)
    assert not process.is_alive(), "worker hung"
    return process.exitcode if process.exitcode is not None else -1


def _worker_entry(
    queue: Any, barrier: Any, url: str, spool: str, turns: list[Turn], seed: int
) -> None:
    queue.put(_emit(url, spool, turns, seed, barrier=barrier))


def test_four_processes_on_the_same_conversations_are_exact(db_url: URL, tmp_path: Path) -> None:
    # PostgreSQL: conversation row locks; SQLite: BEGIN IMMEDIATE serializes the writers.
    rows = seed(db_url, conversations=5, messages=96)
    url = db_url.render_as_string(hide_password=False)
    rng = random.Random(4)
    plans: list[list[Turn]] = [[] for _ in range(4)]
    expected_tokens: dict[str, int] = dict.fromkeys(rows.all_messages, 0)
    for cid, mids in rows.messages.items():
        for index, mid in enumerate(mids):
            # Every conversation gets turns from every process, and every sixth message is
            # owned by spans in two processes (a retry served by another worker).
            owners = [index % 4] + ([(index + 1) % 4] if index % 6 == 0 else [])
            for worker in owners:
                calls = [(rng.randint(0, 500), rng.randint(0, 90)) for _ in range(1 + index % 3)]
                plans[worker].append((mid, cid, calls))
                expected_tokens[mid] += sum(a + b for a, b in calls)
    for plan in plans:
        rng.shuffle(plan)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(4)
    workers = [
        ctx.Process(
            target=_worker_entry,
            args=(queue, barrier, url, str(tmp_path / f"spool{i}"), plans[i], 1000 + i),
        )
        for i in range(4)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert all(r["ok"] and r["lost"] == 0 for r in results), results
    # The four write windows overlap: the writers really were concurrent.
    assert max(r["window"][0] for r in results) < min(r["window"][1] for r in results)
    assert sum(r["applied"] for r in results) == sum(len(p) for p in plans)
    for mid, tokens in expected_tokens.items():
        assert message(db_url, mid)["total_tokens"] == tokens
    for cid, mids in rows.messages.items():
        conv = conversation(db_url, cid)
        assert conv["total_tokens"] == sum(expected_tokens[m] for m in mids)
        assert conv["message_count"] == len(mids)
    assert aggregates_exact(db_url) == []
    assert len(ledger_rows(db_url)) == sum(len(p) for p in plans)


@pytest.mark.parametrize("stage", ["messages_update", "commit"])
def test_writer_killed_between_statements_converges_on_rerun(
    db_url: URL, tmp_path: Path, stage: str
) -> None:
    rows = seed(db_url, conversations=3, messages=12)
    url = db_url.render_as_string(hide_password=False)
    turns: list[Turn] = []
    expected = 0
    for cid, mids in rows.messages.items():
        for index, mid in enumerate(mids):
            calls = [(index + 1, 1), (2, index)]
            turns.append((mid, cid, calls))
            expected += sum(a + b for a, b in calls)
    spool = str(tmp_path / "spool")
    # Dies on the third transaction reaching ``stage``: two committed, one half done.
    assert _run(_emit, url, spool, turns, 7, (stage, 3)) == CRASH_EXIT
    partial = sum(conversation(db_url, cid)["total_tokens"] for cid in rows.conversations)
    assert 0 < partial < expected
    assert aggregates_exact(db_url, touched_only=True) == []  # each commit was exact
    # The same spans again (same ids): what was committed is not counted twice.
    assert _run(_emit, url, spool, turns, 7) == 0
    total = sum(conversation(db_url, cid)["total_tokens"] for cid in rows.conversations)
    assert total == expected
    assert aggregates_exact(db_url) == []
    assert len(ledger_rows(db_url)) == len(turns)
    first = [message(db_url, m)["total_tokens"] for m in rows.all_messages]
    assert _run(_emit, url, spool, turns, 7) == 0  # and once more: nothing changes
    assert [message(db_url, m)["total_tokens"] for m in rows.all_messages] == first
    cost = sum(float(message(db_url, m)["cost"]) for m in rows.all_messages)
    assert cost == pytest.approx(float(sum(price(a, b) for _, _, cs in turns for a, b in cs)))
