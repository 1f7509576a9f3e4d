"""SIGTERM to ``chatter-otel serve`` under load: the write-back is drained before exit.

The service's own database is reached directly; the write-back's goes through a TCP proxy
the test controls, so at the moment of SIGTERM there is provably usage still to write (the
proxy holds the write-back's traffic for half a second around the signal). A process
manager sends SIGTERM, waits (Kubernetes: 30 s by default), then SIGKILLs: everything
must be in the database, or spooled for the next start, before then.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests._chat_load import ChatLoad, create_conversations, summarize
from tests._exactness import assistant_without_usage, stored_turns
from tests._pg_cluster import PgCluster, url_text, via
from tests._service_processes import service_env, serving, spool_records
from tests._tcp_proxy import TcpProxy
from tests._wait import wait_for

GRACE_S = 30.0
"""What a process manager waits after SIGTERM before SIGKILL."""


def test_sigterm_during_load_writes_every_stored_turn_before_exit(
    pg: PgCluster, tmp_path: Path
) -> None:
    """SIGTERM arrives while turns are being served and usage is still waiting to be
    written: the process exits by itself within the grace period, and afterwards every
    stored assistant message has exactly its usage, with nothing left in the spool."""
    db = pg.database()
    spool = tmp_path / "spool"
    with TcpProxy(pg.port) as proxy:
        env = service_env(
            url_text(db), spool, writeback_url=url_text(via(db, proxy.port), "postgresql")
        )
        with serving(env, tmp_path / "serve.log") as service:
            ids = create_conversations(service.base_url, 4)
            with ChatLoad([service.base_url], ids, max_seconds=30) as load:
                wait_for(lambda: load.done() >= 40, 30, 0.05, "load under way")
                proxy.stall()
                time.sleep(0.5)
                pending = assistant_without_usage(db)
                signalled = time.monotonic()
                service.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                proxy.flow()
                code = service.process.wait(GRACE_S)
                took = time.monotonic() - signalled
        stored = stored_turns(db)
    served = summarize(load.window(0, signalled))
    figures = (
        f"SIGTERM under load ({served}) with {pending} stored messages waiting for their "
        f"usage: exit code {code} after {took:.1f} s; afterwards {stored.with_usage} of "
        f"{stored.assistant} stored assistant messages have their usage, "
        f"{spool_records(spool)} records left in the spool"
    )
    print(figures)
    assert pending > 0, figures
    assert stored.problems == [], figures + "\n" + "\n".join(stored.problems)
    assert stored.with_usage == stored.assistant, figures
    assert spool_records(spool) == 0, figures


def test_sigterm_with_the_writeback_database_unreachable_spools_for_the_next_start(
    pg: PgCluster, tmp_path: Path
) -> None:
    """The write-back's database is unreachable when SIGTERM arrives: the process spools
    what it could not write and exits within the grace period; the next process started
    on the same spool writes all of it, exactly once."""
    db = pg.database()
    spool = tmp_path / "spool"
    with TcpProxy(pg.port) as proxy:
        env = service_env(
            url_text(db), spool, writeback_url=url_text(via(db, proxy.port), "postgresql")
        )
        with serving(env, tmp_path / "serve.log") as service:
            ids = create_conversations(service.base_url, 4)
            proxy.down()
            with ChatLoad([service.base_url], ids, max_turns=10) as load:
                load.wait()
            pending = assistant_without_usage(db)
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            code = service.process.wait(GRACE_S)
            took = time.monotonic() - signalled
        spooled = spool_records(spool)
        assert pending == 40 and spooled == pending, (
            f"exit code {code} after {took:.1f} s: {pending} messages without usage, "
            f"{spooled} records spooled"
        )
        proxy.up()
        with serving(env, tmp_path / "serve2.log"):
            caught_up = wait_for(
                lambda: assistant_without_usage(db) == 0, 60, 0.2, "the spool was replayed"
            )
        stored = stored_turns(db)
    figures = (
        f"SIGTERM with the write-back database unreachable: {summarize(load.requests)}; "
        f"{pending} messages without usage; exit code {code} after {took:.1f} s with "
        f"{spooled} records spooled; the next process wrote them {caught_up:.1f} s after "
        f"start; {stored.with_usage} of {stored.assistant} exact, data lost: "
        f"{stored.assistant - stored.with_usage}"
    )
    print(figures)
    assert stored.problems == [], figures + "\n" + "\n".join(stored.problems)
    assert spool_records(spool) == 0, figures
