"""``chatter-otel demo``: exact on a healthy database, one line and a non-zero exit otherwise."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatter_otel import workflow_span
from chatter_otel.config import TelemetryConfig
from chatter_otel.demo import _flush_failure, run_demo
from chatter_otel.service.models import new_ulid
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.testing import capture_telemetry
from tests._pg import throwaway_server
from tests.test_writeback_support import create_schema


def _config(url: str) -> TelemetryConfig:
    return TelemetryConfig(
        traces_exporters=("none",),
        metrics_exporters=("none",),
        logs_exporters=("none",),
        writeback_url=url,
        writeback_flush_interval_s=0.1,
    )


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
def test_a_database_outage_near_the_end_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
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
        code = asyncio.run(
            run_demo(_config(url), ServiceSettings.model_validate({"DATABASE_URL": url}), turns=200)
        )
        stopper.join()
    out = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out.out + out.err
    assert "KeyError" not in out.out + out.err
    stopped = [line for line in out.out.splitlines() if line.startswith("FAILED")]
    assert stopped[-1].startswith("FAILED reading ")
    assert "HTTP 503" in stopped[-1]
