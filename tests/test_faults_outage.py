"""Database outages under a sustained chat load, against the real service process.

``python -m chatter_otel.cli serve`` runs with its production defaults against a throwaway
PostgreSQL the test starts on a private port. Clients post chat turns continuously (one
thread per conversation, each waiting for its answer, like users); in the middle the
database, or only the write-back's path to it, goes away and comes back. Afterwards:

* every assistant message the service stored carries exactly the usage the offline model
  reported for it (prompt tokens recomputed from the stored history, completion from the
  stored answer, cost from the price table), once: one ledger row per message;
* every conversation's totals equal its messages (tokens, cost, count, last message time).

Each test prints its figures (load held, error ratio and latency during the outage,
catch-up time, data lost) and states them in its assertion messages.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests._chat_load import ChatLoad, create_conversations, summarize
from tests._exactness import StoredTurns, assistant_without_usage, stored_turns
from tests._pg_cluster import PgCluster, throwaway_postgres, url_text, via
from tests._service_processes import service_env, serving
from tests._tcp_proxy import TcpProxy
from tests._wait import wait_for

CATCH_UP_S = 60.0
"""Longest wait for the write-back to catch up after a fault (it backs off up to 5 s)."""


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    with throwaway_postgres() as cluster:
        yield cluster


def _catch_up(db: URL) -> float:
    """Seconds until every stored assistant message has usage (fails after CATCH_UP_S)."""
    return wait_for(
        lambda: assistant_without_usage(db) == 0,
        CATCH_UP_S,
        0.25,
        "every stored assistant message has its usage",
    )


def _assert_exact(report: StoredTurns, load: ChatLoad) -> None:
    """Every answered turn is stored, and every stored turn is exact, once (tool-calling
    turns of two model calls among them)."""
    answered = {r.message_id for r in load.requests if r.message_id is not None}
    assert report.multi_call > 0
    assert report.problems == [], "\n".join(report.problems)
    assert answered <= report.ids, f"answered but not stored: {sorted(answered - report.ids)[:5]}"
    assert report.with_usage == report.assistant


def test_control_turns_without_faults_are_written_back_exactly(
    pg: PgCluster, tmp_path: Path
) -> None:
    """No fault: the control for every test below. Default configuration (LangChain
    instrumentation on): each turn's usage is written once, exactly as the model reported."""
    db = pg.database()
    env = service_env(url_text(db), tmp_path / "spool")
    with serving(env, tmp_path / "serve.log") as service:
        conversations = create_conversations(service.base_url, 2)
        with ChatLoad([service.base_url], conversations, max_turns=4) as load:
            load.wait()
        assert summarize(load.requests).succeeded == 8
        _catch_up(db)
    _assert_exact(stored_turns(db), load)


@pytest.mark.parametrize(
    ("outage_s", "stop_mode", "conversations"),
    [
        pytest.param(4.0, "fast", 4, id="4s-fast-stop"),
        pytest.param(10.0, "immediate", 8, id="10s-crash-stop", marks=pytest.mark.slow),
    ],
)
def test_database_outage_service_answers_and_stored_turns_end_exact(
    pg: PgCluster, tmp_path: Path, outage_s: float, stop_mode: str, conversations: int
) -> None:
    """The service's own database stops for ``outage_s`` under load, then starts again.

    While it is down the service cannot store messages: those requests fail (HTTP 500),
    fast, and the service keeps answering; afterwards turns succeed again, and every turn
    that was stored, before, during (in flight) and after the outage, ends up exact.
    """
    db = pg.database()
    env = service_env(url_text(db), tmp_path / "spool")
    with serving(env, tmp_path / "serve.log") as service:
        ids = create_conversations(service.base_url, conversations)
        with ChatLoad([service.base_url], ids, max_seconds=outage_s + 30) as load:
            wait_for(lambda: load.done() >= 4 * conversations, 30, 0.05, "load under way")
            time.sleep(1.0)
            stopped = time.monotonic()
            pg.stop(stop_mode)  # a fast stop takes a few seconds: part of the outage
            time.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))
            restarted = time.monotonic()
            pg.start()
            before = load.done()
            recovered = wait_for(
                lambda: load.done() >= before + 2 * conversations, 30, 0.05, "turns succeed again"
            )
            time.sleep(2.0)
        ended = time.monotonic()
        caught_up = _catch_up(db)
        assert service.process.poll() is None, "the service died"
    report = stored_turns(db)
    before_w = summarize(load.window(0, stopped))
    during = summarize(load.window(stopped, restarted))
    after = summarize(load.window(restarted, ended))
    figures = (
        f"database down {outage_s:.0f} s ({stop_mode} stop), {conversations} conversations; "
        f"before: {before_w}; during the outage: {during}; after: {after}; "
        f"turns succeed again {recovered:.1f} s after the restart; write-back caught up "
        f"{caught_up:.1f} s after the load ended; stored assistant messages: "
        f"{report.assistant}, {report.with_usage} with usage, {len(report.problems)} problems"
    )
    print(figures)
    _assert_exact(report, load)
    # The service kept answering: every request got an HTTP answer, none hung.
    unanswered = Counter(r.error for r in load.requests if r.status == 0)
    assert not unanswered, f"requests without an HTTP answer: {dict(unanswered)}; {figures}"
    assert during.requests > 0 and during.failed > 0, figures  # the outage was real
    assert during.p99_ms < 3_000, figures
    # Before the stop every turn succeeded (only turns still in flight at the stop failed).
    assert all(r.status == 201 for r in load.requests if r.started + r.seconds < stopped), figures
    assert after.succeeded > 0, figures


@pytest.mark.parametrize(
    "cut_s",
    [pytest.param(4.0, id="4s"), pytest.param(10.0, id="10s", marks=pytest.mark.slow)],
)
def test_writeback_database_cut_every_turn_succeeds_and_gets_its_usage(
    pg: PgCluster, tmp_path: Path, cut_s: float
) -> None:
    """Only the write-back's connection to the database is cut (a proxy resets every
    connection and refuses new ones) for ``cut_s`` under load; the service's own database
    stays reachable. Every turn succeeds, and every message receives its usage once the
    write-back reaches the database again: nothing lost, nothing doubled."""
    db = pg.database()
    with TcpProxy(pg.port) as proxy:
        env = service_env(
            url_text(db),
            tmp_path / "spool",
            writeback_url=url_text(via(db, proxy.port), "postgresql"),
        )
        with serving(env, tmp_path / "serve.log") as service:
            ids = create_conversations(service.base_url, 4)
            with ChatLoad([service.base_url], ids, max_seconds=cut_s + 30) as load:
                wait_for(lambda: load.done() >= 16, 30, 0.05, "load under way")
                cut_at = time.monotonic()
                proxy.down()
                time.sleep(cut_s)
                during_cut = load.done()
                held = assistant_without_usage(db)
                restored = time.monotonic()
                proxy.up()
                time.sleep(2.0)
            ended = time.monotonic()
            pending = assistant_without_usage(db)
            caught_up = _catch_up(db)
            assert service.process.poll() is None
    report = stored_turns(db)
    during = summarize(load.window(cut_at, restored))
    overall = summarize(load.requests)
    figures = (
        f"write-back database cut {cut_s:.0f} s; load: {overall}; during the cut: {during}; "
        f"{during_cut} turns done by the end of the cut, {held} of them waiting for their "
        f"usage then; {pending} messages without usage when the load ended (2 s after the "
        f"cut), all written {caught_up:.1f} s later; connections reset or "
        f"refused by the proxy: {sum(proxy.stats.cuts.values()) + proxy.stats.refused}; "
        f"{report.assistant} stored, {report.with_usage} with usage, "
        f"{len(report.problems)} problems"
    )
    print(figures)
    _assert_exact(report, load)
    assert overall.failed == 0, figures
    assert proxy.stats.refused > 0, figures  # the write-back really tried during the cut
    assert during.requests > 0 and held > 0, figures
    assert ended > restored
