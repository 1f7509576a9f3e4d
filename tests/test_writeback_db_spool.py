"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: a
database that is unavailable: the spool survives a restart, corrupt lines are skipped and
counted, a record the database cannot hold is isolated.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from tests._pg_cluster import via
from tests._tcp_proxy import TcpProxy
from tests._writeback_db import Factory, flush
from tests.test_writeback_support import (
    aggregates_exact,
    build,
    conversation,
    genai_attrs,
    ledger_rows,
    message,
    node,
    owner_attrs,
    seed,
    simple_turn,
    wait_until,
)


@contextlib.contextmanager
def _outage(db_url: URL, tmp_path: Path) -> Iterator[tuple[str, Callable[[], URL]]]:
    """A URL whose database is unreachable until ``restore()``, which returns the URL to
    read it through afterwards. The same URL before and after, as for a real outage:
    spooled records are bound to the database their URL names."""
    if db_url.get_backend_name() == "sqlite":
        moved = tmp_path / "moved" / "chatter.db"  # its directory does not exist yet

        def restore_file() -> URL:
            moved.parent.mkdir()
            shutil.move(str(db_url.database), moved)
            return make_url(f"sqlite:///{moved}")

        yield f"sqlite:///{moved}", restore_file
        return
    with TcpProxy(db_url.port or 5432) as proxy:
        proxy.down()

        def restore_proxy() -> URL:
            proxy.up()
            return db_url

        yield via(db_url, proxy.port).render_as_string(hide_password=False), restore_proxy


def test_spool_survives_a_restart(db_url: URL, make: Factory, tmp_path: Path) -> None:
    rows = seed(db_url, conversations=3, messages=20)
    with _outage(db_url, tmp_path) as (url, restore):
        down = make(url, max_queue=10, connect_timeout=1)
        expected = 0
        for cid, mids in rows.messages.items():
            for index, mid in enumerate(mids):
                simple_turn(down.tracer, mid, cid, [(index, 1), (1, 1)])
                expected += index + 3
        assert wait_until(
            lambda: down.processor.stats.db_errors > 0 and down.processor.stats.spooled
        )
        assert down.processor.stats.queue_size <= 10 + 500
        down.provider.shutdown()  # database still down: everything ends up in the spool
        stats = down.processor.stats
        assert stats.spooled == 60 and stats.lost == 0 and stats.applied == 0
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) >= 1

        db_url = restore()
        up = make(url)  # same spool directory, database reachable: replays on start
        assert wait_until(lambda: up.processor.stats.applied == 60, timeout=20)
        assert flush(up)
    assert list((tmp_path / "spool").glob("*.jsonl")) == []
    assert sum(conversation(db_url, cid)["total_tokens"] for cid in rows.conversations) == expected
    assert aggregates_exact(db_url) == []


def test_corrupt_spool_lines_are_skipped_and_counted(
    db_url: URL, make: Factory, tmp_path: Path
) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    with _outage(db_url, tmp_path) as (url, restore):
        down = make(url, connect_timeout=1)
        simple_turn(down.tracer, rows.messages[cid][0], cid, [(4, 4)])
        down.provider.shutdown()
        (spooled,) = (tmp_path / "spool").glob("*.jsonl")
        header, good = spooled.read_text().split("\n", 1)
        spooled.write_text(
            header
            + '\n{"v": 1, "trace_id": "nope"}\nnot json\n'
            + good
            + good.replace('"calls":1', '"calls":-1')
        )
        db_url = restore()
        up = make(url)
        assert wait_until(lambda: up.processor.stats.applied == 1)
        assert flush(up)
    assert message(db_url, rows.messages[cid][0])["total_tokens"] == 8
    assert up.processor.stats.rejected == {"spool_line_invalid": 3}


def test_record_the_database_cannot_hold_is_isolated(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=1, messages=4)
    cid = rows.conversations[0]
    a, b, two_owners, one_owner = rows.messages[cid]
    t = make()
    # Each record fits, but the message's two records together exceed its integer column:
    # the database (or the store's check) refuses the batch, bisection isolates the record.
    for _ in range(2):
        calls = [node("chat", genai_attrs(10**9, 0)) for _ in range(2)]
        build(t.tracer, node("wf", owner_attrs(two_owners, cid), *calls))
    # One record whose own sum exceeds the column: refused before it reaches the database.
    calls = [node("chat", genai_attrs(10**9, 0)) for _ in range(3)]
    build(t.tracer, node("wf", owner_attrs(one_owner, cid), *calls))
    simple_turn(t.tracer, a, cid, [(1, 2)])
    simple_turn(t.tracer, b, cid, [(3, 4)])
    assert flush(t)
    assert message(db_url, two_owners)["total_tokens"] == 2 * 10**9
    assert message(db_url, one_owner)["total_tokens"] is None
    assert conversation(db_url, cid)["total_tokens"] == 2 * 10**9 + 10
    assert t.processor.stats.rejected == {"database_refused": 1, "tokens_too_large": 1}
    statuses = sorted(r["status"] for r in ledger_rows(db_url))
    assert statuses == ["applied"] * 4 + ["rejected"]
    assert aggregates_exact(db_url) == []
