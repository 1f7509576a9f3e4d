"""``chatter-otel demo``: exact on a healthy database, one line and a non-zero exit otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatter_otel import workflow_span
from chatter_otel.demo import _flush_failure
from chatter_otel.service.models import new_ulid
from chatter_otel.testing import capture_telemetry
from tests._pg import throwaway_server
from tests.test_writeback_support import create_schema


def test_a_flush_that_waits_for_a_missing_row_names_the_record(pg_url: URL) -> None:
    create_schema(pg_url)
    missing = new_ulid()
    url = pg_url.render_as_string(hide_password=False)
    with capture_telemetry(writeback_url=url, writeback_flush_interval_s=0.1) as cap:
        with workflow_span("chat", message_id=missing):
            pass
        assert not cap.telemetry.force_flush(5_000)
        line = _flush_failure(cap.telemetry, 0.2)
    assert line.startswith("telemetry not flushed: 1 record(s) wait for a message row")
    assert f"message {missing}" in line


@pytest.mark.slow
def test_a_database_outage_near_the_end_is_one_line_and_exit_1() -> None:
    with throwaway_server() as server:
        url = server.url.render_as_string(hide_password=False)

        def stop_once_turns_are_running() -> None:
            engine = create_engine(server.url)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    with engine.connect() as conn:
                        count = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
                except Exception:
                    count = 0
                if count >= 40:
                    break
                time.sleep(0.05)
            engine.dispose()
            server.stop("immediate")

        stopper = threading.Thread(target=stop_once_turns_are_running)
        stopper.start()
        # In its own process, as a user runs it: the demo installs global OTel providers,
        # which would outlive this test in the suite's process.
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL": "0.1",
        }
        demo = subprocess.run(
            [sys.executable, "-m", "chatter_otel.cli", "demo", "--turns", "200"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        stopper.join()
    assert demo.returncode == 1, demo.stderr[-2000:]
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "KeyError" not in demo.stdout + demo.stderr
    stopped = [line for line in demo.stdout.splitlines() if line.startswith("FAILED")]
    assert stopped[-1].startswith("FAILED reading ")
    assert "HTTP 503" in stopped[-1]
