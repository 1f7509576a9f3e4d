"""What a flush that cannot complete says: its log line must name what it still waits for.

A spool file being replayed is no longer among the spool's own files (it has been claimed),
so a flush timing out during a long replay used to report "0 span(s) queued, 0 record(s) to
write, 0 waiting for their message row, 0 spool file(s)": a timeout with nothing to wait for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests._pg_cluster import via
from tests._tcp_proxy import TcpProxy
from tests.test_writeback_support import engine_for, message, seed, simple_turn, wait_until

Factory = Callable[..., Any]


def test_a_flush_timing_out_during_a_replay_says_a_file_is_being_replayed(
    pg_url: URL, make_writeback: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    rows = seed(pg_url, conversations=1, messages=3)
    cid = rows.conversations[0]
    with TcpProxy(pg_url.port or 5432) as proxy:
        url = via(pg_url, proxy.port)
        proxy.down()
        down = make_writeback(url, connect_timeout=1)
        for index, mid in enumerate(rows.messages[cid]):
            simple_turn(down.tracer, mid, cid, [(index + 1, 2)])
        down.provider.shutdown()  # the database is unreachable: all three are spooled
        assert down.processor.stats.spooled == 3
        proxy.up()
        blocker = engine_for(pg_url).connect()
        try:
            # Reads pass, the replay's UPDATE waits: the file stays claimed, mid-replay.
            blocker.execute(text("LOCK TABLE messages IN SHARE MODE"))
            up = make_writeback(url)
            assert wait_until(lambda: up.processor.stats.replayed == 3, timeout=10)
            with caplog.at_level(logging.WARNING, logger="chatter_otel"):
                assert up.processor.force_flush(500) is False
            assert up.processor.last_flush_failure == "timed out after 0.5 s"
            assert "0 spool file(s), one more being replayed" in caplog.text, caplog.text
        finally:
            blocker.rollback()
            blocker.close()
        assert up.provider.force_flush(10_000)
    assert [message(pg_url, mid)["total_tokens"] for mid in rows.messages[cid]] == [3, 4, 5]
