"""Four service processes, each with its own write-back, on the same conversations.

tests/test_writeback_processes.py already proves four processes writing back spans for the
same (pre-seeded) conversations converge to exact totals. What it does not cover is the
service itself inserting messages into those conversations while the write-backs of other
processes recompute them: here four real ``chatter-otel serve`` processes share one
database behind a round-robin "load balancer" (each conversation's turns rotate over the
four), and two conversations also receive turns from two clients at once (the sequence
number race the service serializes with a row lock).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from sqlalchemy.engine import URL

from chatter_otel.service.db import Database
from chatter_otel.service.models import Base
from tests._chat_load import ChatLoad, create_conversations, metric, summarize
from tests._exactness import assistant_without_usage, stored_turns
from tests._pg_cluster import url_text
from tests._service_processes import service_env, serving_many
from tests._wait import wait_for
from tests.test_writeback_support import engine_for

SERVICES = 4
CONVERSATIONS = 8
LOAD_S = 5.0


def test_four_service_processes_on_the_same_conversations_end_exact(
    pg_url: URL, tmp_path: Path
) -> None:
    """Every turn succeeds; afterwards every assistant message has exactly the usage the
    model reported, once, and every conversation equals its messages."""
    envs = [service_env(url_text(pg_url), tmp_path / f"spool{i}") for i in range(SERVICES)]
    logs = [tmp_path / f"serve{i}.log" for i in range(SERVICES)]
    with serving_many(envs, logs) as services:
        targets = [s.base_url for s in services]
        ids = create_conversations(targets[0], CONVERSATIONS)
        shared = ids[:2]  # two clients at once on each of these
        started = time.monotonic()
        with ChatLoad(targets, [*ids, *shared], max_seconds=LOAD_S) as load:
            load.wait()
        took = time.monotonic() - started
        caught_up = wait_for(
            lambda: assistant_without_usage(pg_url) == 0, 60, 0.2, "every message has usage"
        )
        assert all(s.process.poll() is None for s in services)
        applied = [metric(s.base_url, "chatter_writeback_applied_total") for s in services]
    report = stored_turns(pg_url, concurrent=shared)
    overall = summarize(load.requests)
    figures = (
        f"{SERVICES} service processes, {CONVERSATIONS} conversations (2 with two clients at "
        f"once), {took:.1f} s of load: {overall}, {overall.succeeded / took:.0f} turns/s; "
        f"{report.assistant} assistant messages stored, {report.with_usage} with usage, "
        f"written back by the four processes {applied} (records applied each), "
        f"write-back caught up {caught_up:.1f} s after the load; "
        f"{'all exact' if not report.problems else 'NOT exact'}"
    )
    print(figures)
    assert overall.failed == 0, figures
    assert overall.succeeded >= 4 * SERVICES, figures
    assert all(n > 0 for n in applied), figures  # all four write-backs wrote concurrently
    assert sum(applied) == report.assistant, figures
    assert report.problems == [], "\n".join(report.problems)
    assert report.assistant == overall.succeeded == report.with_usage, figures


def _drop_all(url: URL) -> None:
    engine = engine_for(url)
    Base.metadata.drop_all(engine)
    engine.dispose()


def _start_up(url: str, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    """What a replica does at start-up, released by the barrier with the others."""
    db = Database(url)

    async def create() -> None:
        try:
            barrier.wait(30)
            await db.create_tables()
        finally:
            await db.dispose()

    try:
        asyncio.run(create())
    except BaseException as exc:
        errors.append(exc)


def test_replicas_starting_at_once_on_a_fresh_database_all_create_their_tables(
    pg_url: URL,
) -> None:
    """Four replicas deployed at once on an empty database each create the tables if
    missing (``Database.create_tables`` at start-up); every one must succeed, not fail on
    a table another created a moment before. Five rounds, the four released together by
    a barrier (separate engines and connections: to PostgreSQL, separate processes)."""
    failures: list[str] = []
    for _ in range(5):
        barrier = threading.Barrier(SERVICES)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_start_up, args=(url_text(pg_url), barrier, errors))
            for _ in range(SERVICES)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        failures += [str(e).splitlines()[0] for e in errors]
        _drop_all(pg_url)
    assert failures == [], f"{len(failures)} of 20 start-ups failed: {failures[:3]}"
