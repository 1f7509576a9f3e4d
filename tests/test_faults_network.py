"""Network faults between the write-back and PostgreSQL: delays, resets, resets in the middle
of a transaction, lost COMMIT results, refused connections and a database that hangs.

The processor runs in the test process and reaches a throwaway PostgreSQL only through a
loopback TCP proxy (tests._tcp_proxy.TcpProxy) that follows the PostgreSQL protocol, so it can
reset a connection exactly inside an open transaction or right after the server committed
and before the client hears of it. While spans of 360 turns are produced (6 conversations,
about 150 turns/s), the fault is active for 2 s; afterwards every message and conversation
must be exact and the ledger must hold one row per turn: nothing lost, nothing doubled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor
from tests._exactness import Turn, emit_turn, multi_call_plan, planned_usage_problems
from tests._pg_cluster import PgCluster, via
from tests._service_processes import spool_records
from tests._tcp_proxy import CUT_AFTER_COMMIT, CUT_IN_TRANSACTION, TcpProxy
from tests.test_writeback_support import (
    Seeded,
    aggregates_exact,
    ledger_rows,
    seed,
    tracing,
)

FAULT_S = 2.0
MAX_QUEUE = 100
BATCH = 20


@dataclass
class Plan:
    rows: Seeded
    turns: list[Turn]
    """One, two sequential or three parallel calls per turn (see ``multi_call_plan``)."""


def _plan(url: URL) -> Plan:
    rows = seed(url, conversations=6, messages=60)
    return Plan(rows, multi_call_plan(rows))


def _processor(url: URL, spool: Path) -> WritebackSpanProcessor:
    return WritebackSpanProcessor(
        url.set(drivername="postgresql+asyncpg"),  # as Chatter configures it
        pricing=Pricing(),
        flush_interval=0.05,
        late_span_grace=0.02,
        max_queue=MAX_QUEUE,
        batch_size=BATCH,
        spool_path=spool,
        backoff=(0.05, 0.5),
        connect_timeout=2,
    )


def _drain(processor: WritebackSpanProcessor, flush: Callable[[int], bool]) -> float:
    """Flushes until everything is written (a flush fails at once while the database
    does); returns the seconds it took."""
    started = time.monotonic()
    deadline = started + 60
    while not flush(10_000):
        assert time.monotonic() < deadline, f"never drained: {processor.stats}"
        time.sleep(0.1)
    return time.monotonic() - started


def _assert_exact(url: URL, plan: Plan) -> None:
    """Every message and conversation equal to the sum of its calls, recomputed from the
    plan; one applied ledger row per turn."""
    problems = planned_usage_problems(url, plan.turns)
    assert problems == [], f"{len(problems)} wrong, e.g.: " + "\n".join(problems[:5])
    assert aggregates_exact(url) == []  # counts and last times too
    ledger = ledger_rows(url)
    assert len(ledger) == len(plan.turns)
    assert {r["message_id"] for r in ledger} == {turn[0] for turn in plan.turns}
    assert all(r["status"] == "applied" for r in ledger)


def _run_with_fault(
    pg: PgCluster,
    tmp_path: Path,
    start_fault: Callable[[TcpProxy], None],
    stop_fault: Callable[[TcpProxy], None],
) -> tuple[TcpProxy, WritebackSpanProcessor, Plan, str]:
    url = pg.database()
    plan = _plan(url)
    with TcpProxy(pg.port) as proxy:
        processor = _processor(via(url, proxy.port), tmp_path / "spool")
        t = tracing(processor)
        done = threading.Event()
        peak_spool, peak_memory = [0], [0]

        def load() -> None:
            for turn in plan.turns:
                emit_turn(t.tracer, turn)
                time.sleep(1 / 150)
            done.set()

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.4)
        start_fault(proxy)
        fault_end = time.monotonic() + FAULT_S
        while time.monotonic() < fault_end:
            peak_spool[0] = max(peak_spool[0], spool_records(tmp_path / "spool"))
            peak_memory[0] = max(peak_memory[0], processor.stats.queue_size)
            time.sleep(0.05)
        stop_fault(proxy)
        thread.join(60)
        assert done.is_set()
        drained = _drain(processor, t.provider.force_flush)
        t.provider.shutdown()
    stats = processor.stats
    _assert_exact(url, plan)
    assert stats.lost == 0 and stats.orphaned == 0 and stats.rejected_total == 0, stats
    assert stats.applied >= len(plan.turns)
    assert list((tmp_path / "spool").glob("*.jsonl")) == []
    figures = (
        f"{len(plan.turns)} turns at ~150/s; proxy: {proxy.stats.accepted} connections, "
        f"resets {dict(proxy.stats.cuts)}, {proxy.stats.cut_in_transaction} inside a "
        f"transaction, {proxy.stats.refused} refused; write-back: {stats.db_errors} failed "
        f"transactions, {stats.retried} record retries, peak {peak_memory[0]} spans/records "
        f"in memory (max_queue {MAX_QUEUE}), {stats.spooled} spooled (peak {peak_spool[0]} "
        f"on disk), {stats.replayed} replayed; drained {drained:.1f} s after "
        f"the load; every message and conversation exact, data lost: 0"
    )
    print(figures)
    return proxy, processor, plan, figures


@pytest.mark.slow
def test_delayed_packets(pg: PgCluster, tmp_path: Path) -> None:
    """50 ms added to every chunk in both directions (about 0.6 s per transaction)."""
    proxy, _, _, figures = _run_with_fault(
        pg, tmp_path, lambda p: p.delay(0.05), lambda p: p.delay(0.0)
    )
    assert proxy.stats.bytes_up > 0, figures


def test_connections_reset_every_100_ms(pg: PgCluster, tmp_path: Path) -> None:
    """Every open connection is reset (RST) every 100 ms, wherever it is."""
    stop = threading.Event()

    def start(proxy: TcpProxy) -> None:
        def cutter() -> None:
            for _ in range(int(FAULT_S / 0.1) + 20):  # bounded even if the test fails
                if stop.wait(0.1):
                    return
                proxy.cut_all()

        threading.Thread(target=cutter, daemon=True).start()

    proxy, processor, _, figures = _run_with_fault(pg, tmp_path, start, lambda p: stop.set())
    assert proxy.stats.cuts["cut_all"] > 0, figures
    assert processor.stats.db_errors > 0, figures


def test_connections_reset_inside_transactions(pg: PgCluster, tmp_path: Path) -> None:
    """Connections are reset right after a statement of an open transaction ran (before
    the client sees its result): the server rolls the batch back, the writer retries it."""
    proxy, processor, _, figures = _run_with_fault(
        pg,
        tmp_path,
        lambda p: p.cut_when(CUT_IN_TRANSACTION, probability=0.3),
        lambda p: p.cut_when(None),
    )
    assert proxy.stats.cuts[CUT_IN_TRANSACTION] >= 3, figures
    assert proxy.stats.cut_in_transaction == proxy.stats.cuts[CUT_IN_TRANSACTION], figures
    assert processor.stats.db_errors >= 3, figures


def test_commit_results_lost(pg: PgCluster, tmp_path: Path) -> None:
    """Connections are reset after the server committed a batch and before the writer
    hears of it: the writer retries batches that were applied, and nothing is doubled."""
    proxy, processor, _, figures = _run_with_fault(
        pg,
        tmp_path,
        lambda p: p.cut_when(CUT_AFTER_COMMIT, probability=0.5),
        lambda p: p.cut_when(None),
    )
    assert proxy.stats.cuts[CUT_AFTER_COMMIT] >= 3, figures
    assert processor.stats.db_errors >= 3, figures


def test_connections_refused(pg: PgCluster, tmp_path: Path) -> None:
    """Open connections are reset and new ones refused for 2 s (the database unreachable)."""
    proxy, processor, _, figures = _run_with_fault(
        pg, tmp_path, lambda p: p.down(), lambda p: p.up()
    )
    assert proxy.stats.refused > 0, figures
    assert processor.stats.db_errors > 0, figures


def test_database_hangs(pg: PgCluster, tmp_path: Path) -> None:
    """Nothing is forwarded for 2 s while connections stay open (a database that hangs,
    the writer blocked in a statement): spans keep being consumed, records beyond
    ``max_queue`` are spooled by the assembler meanwhile, and everything is written after."""
    _, processor, _, figures = _run_with_fault(
        pg, tmp_path, lambda p: p.stall(), lambda p: p.flow()
    )
    assert processor.stats.spooled > 0, figures
    assert processor.stats.replayed >= processor.stats.spooled, figures


@pytest.mark.slow
def test_shutdown_while_the_database_hangs_spools_and_the_next_start_replays(
    pg: PgCluster, tmp_path: Path
) -> None:
    """Shutdown with the database hanging mid-transaction returns within its timeout and
    spools everything not written (the batch in flight too); a new processor on the same
    spool writes it all, exactly once."""
    url = pg.database()
    plan = _plan(url)
    spool = tmp_path / "spool"
    with TcpProxy(pg.port) as proxy:
        first = _processor(via(url, proxy.port), spool)
        t = tracing(first)
        half = len(plan.turns) // 2
        for turn in plan.turns[:half]:
            emit_turn(t.tracer, turn)
        assert t.provider.force_flush(30_000)  # the first half is written
        proxy.stall()
        for turn in plan.turns[half:]:
            emit_turn(t.tracer, turn)
        time.sleep(0.5)
        started = time.monotonic()
        first.shutdown(timeout_millis=3000)
        took = time.monotonic() - started
        t.provider.shutdown()
        spooled = spool_records(spool)
        proxy.cut_all()  # the hung connections die with their process
        proxy.flow()
        second = _processor(via(url, proxy.port), spool)
        t2 = tracing(second)
        drained = _drain(second, t2.provider.force_flush)
        t2.provider.shutdown()
    figures = (
        f"shutdown with the database hanging took {took:.1f} s and left {spooled} records "
        f"in the spool (of {len(plan.turns)} turns, {first.stats.applied} written before "
        f"the hang); the next processor replayed {second.stats.replayed} in {drained:.1f} s; "
        f"every message exact, data lost: 0"
    )
    print(figures)
    _assert_exact(url, plan)
    assert spooled > 0 and second.stats.replayed >= spooled, figures
    assert first.stats.lost == 0 and second.stats.lost == 0, figures
