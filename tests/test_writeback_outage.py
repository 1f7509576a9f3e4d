"""The database stopped and restarted under load: nothing is lost, memory stays bounded.

Runs a throwaway PostgreSQL the test starts itself (initdb + pg_ctl as the postgres user, on
a private port and socket directory); the shared server is never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor
from tests._pg import Throwaway, throwaway_server
from tests.test_writeback_support import (
    aggregates_exact,
    conversation,
    message,
    seed,
    simple_turn,
    tracing,
)


@pytest.fixture
def throwaway_pg() -> Iterator[Throwaway]:
    with throwaway_server() as server:
        yield server


def test_database_stopped_and_restarted_under_load(throwaway_pg: Throwaway, tmp_path: Path) -> None:
    url = throwaway_pg.url
    rows = seed(url, conversations=8, messages=60)
    max_queue, batch = 40, 20
    processor = WritebackSpanProcessor(
        url.set(drivername="postgresql+asyncpg"),  # as Chatter configures it
        pricing=Pricing(),
        flush_interval=0.05,
        late_span_grace=0.02,
        max_queue=max_queue,
        batch_size=batch,
        spool_path=tmp_path / "spool",
        backoff=(0.05, 0.5),
        connect_timeout=1,
    )
    t = tracing(processor)
    turns = [
        (mid, cid, [(index + 1, 2), (3, index % 5)])
        for cid, mids in rows.messages.items()
        for index, mid in enumerate(mids)
    ]
    expected = {mid: sum(a + b for a, b in calls) for mid, _, calls in turns}
    done = threading.Event()
    peak = [0]

    def load() -> None:
        for mid, cid, calls in turns:  # ~100 turns/s for ~5 s
            simple_turn(t.tracer, mid, cid, calls)
            time.sleep(0.01)
        done.set()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], processor.stats.queue_size)
            time.sleep(0.01)

    threads = [threading.Thread(target=load), threading.Thread(target=watch)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    throwaway_pg.stop()
    stopped_at = processor.stats.applied
    time.sleep(2.5)
    assert processor.stats.applied == stopped_at  # really down
    throwaway_pg.start()
    for th in threads:
        th.join(60)
    assert done.is_set()
    # A flush reports failure at once while the database is still failing: ask until the
    # writer has reconnected and drained memory and spool (bounded).
    deadline = time.monotonic() + 60
    while not t.provider.force_flush(10_000):
        assert time.monotonic() < deadline, "never drained after the restart"
        time.sleep(0.2)
    stats = processor.stats
    assert stats.db_errors > 0
    assert stats.spooled > 0 and stats.replayed >= stats.spooled
    assert stats.lost == 0 and stats.orphaned == 0 and stats.rejected_total == 0
    # Memory stayed bounded: records in memory never exceeded the bound (plus one batch in
    # flight); spans waiting for the assembler are drained continuously.
    assert peak[0] <= max_queue + batch + 200
    for mid, tokens in expected.items():
        assert message(url, mid)["total_tokens"] == tokens
    for cid, mids in rows.messages.items():
        assert conversation(url, cid)["total_tokens"] == sum(expected[m] for m in mids)
    assert aggregates_exact(url) == []
    t.provider.shutdown()
    assert list((tmp_path / "spool").glob("*.jsonl")) == []
