"""Configuration as apps hold it: the write-back database passed in code, one start-up line
saying where usage goes (or why it does not), and ``check-config`` showing what the library
itself will do, apart from the reference service's own defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.engine import URL

from chatter_otel import ConfigError, Telemetry, TelemetryConfig, _runtime, setup_telemetry
from chatter_otel.cli import main
from tests.test_writeback_support import message, seed, simple_turn, wait_until

NO_URL_LINE = (
    "write-back off: no database URL (pass setup_telemetry(writeback_url=...) "
    "or set CHATTER_OTEL_WRITEBACK_URL / DATABASE_URL)"
)


@pytest.fixture
def start(caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    """setup_telemetry on private providers with an empty environment (as an app whose
    settings come from a .env file has it); shut down afterwards."""
    caplog.set_level(logging.INFO, logger="chatter_otel")
    started: list[Telemetry] = []

    def _start(environ: dict[str, str] | None = None, **kwargs: Any) -> Telemetry:
        telemetry = setup_telemetry(
            TelemetryConfig.from_env(environ or {}),
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(),
            set_global=False,
            configure_logs=False,
            **kwargs,
        )
        started.append(telemetry)
        return telemetry

    yield _start
    for telemetry in started:
        telemetry.shutdown()


def _info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "chatter_otel" and r.levelno == logging.INFO
    ]


def test_writeback_url_passed_in_code_fills_the_message_row(pg_url: URL, start: Any) -> None:
    seeded = seed(pg_url)
    cid = seeded.conversations[0]
    mid = seeded.messages[cid][0]
    telemetry = start(writeback_url=pg_url.set(drivername="postgresql+asyncpg"))
    assert telemetry.tracer_provider is not None
    simple_turn(telemetry.tracer_provider.get_tracer("app"), mid, cid, [(11, 7), (5, 3)])
    telemetry.force_flush()
    assert wait_until(lambda: message(pg_url, mid)["total_tokens"] is not None)
    row = message(pg_url, mid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (16, 10, 26)


def test_start_up_logs_one_line_with_the_database_password_masked(
    pg_url: URL, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_url.set(drivername="postgresql+asyncpg", password="s3cret")
    start(writeback_url=url.render_as_string(hide_password=False))
    assert _info_lines(caplog) == [
        f"write-back on: postgresql+asyncpg://postgres:***@127.0.0.1:{url.port}/{url.database}"
    ]
    assert "s3cret" not in caplog.text


def test_start_up_says_why_the_writeback_is_off_without_a_url(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = start()
    assert telemetry.writeback is None
    assert _info_lines(caplog) == [NO_URL_LINE]


def test_start_up_says_the_writeback_was_switched_off(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = start(
        {"CHATTER_OTEL_WRITEBACK": "false", "DATABASE_URL": "postgresql://u:pw@db/chatter"}
    )
    assert telemetry.writeback is None
    assert _info_lines(caplog) == ["write-back off: CHATTER_OTEL_WRITEBACK=false"]


def test_known_models_from_the_environment_reach_the_metric_labels(start: Any) -> None:
    start({"CHATTER_OTEL_KNOWN_MODELS": "in-house,tuned-7b"})
    runtime = _runtime.get()
    assert runtime.known_models == frozenset({"in-house", "tuned-7b"})
    assert runtime.model_label("vllm", "tuned-7b") == "tuned-7b"
    assert runtime.model_label("vllm", "tuned-8b") == "_OTHER"


def test_a_bad_url_in_code_is_one_line_without_its_password(start: Any) -> None:
    with pytest.raises(ConfigError) as info:
        start(writeback_url="mysql://chatter:hunter2@db/chatter")
    assert str(info.value) == (
        "invalid writeback_url='mysql://***@db/chatter': expected postgresql://, "
        "postgresql+asyncpg://, postgresql+psycopg://, sqlite:///PATH, sqlite+aiosqlite:///PATH"
    )


def test_check_config_without_a_url_shows_the_writeback_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CHATTER_OTEL_WRITEBACK_URL", raising=False)
    assert main(["check-config"]) == 0
    library, service = capsys.readouterr().out.split(
        "reference service (chatter-otel serve, demo):"
    )
    assert NO_URL_LINE in library.splitlines()
    assert "sqlite" not in library
    assert "  serve/demo write-back on: sqlite:///./chatter-otel.db" in service.splitlines()


def test_check_config_shows_where_the_writeback_goes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CHATTER_OTEL_WRITEBACK_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://chatter:hunter2@db:5432/chatter")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "write-back on: postgresql+asyncpg://chatter:***@db:5432/chatter" in out.splitlines()
    assert "hunter2" not in out


def _app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


def test_setup_with_the_app_instruments_it_in_the_same_line(start: Any) -> None:
    from fastapi.testclient import TestClient

    app = _app()
    start(app=app)
    response = TestClient(app).get("/ping")
    assert response.status_code == 200
    assert response.headers["traceresponse"].startswith("00-")


def test_an_app_instrumented_by_setup_and_again_by_hand_is_instrumented_once(start: Any) -> None:
    from chatter_otel.telemetry import TraceResponseMiddleware

    app = _app()
    start(app=app).instrument_app(app)
    assert [m.cls for m in app.user_middleware].count(TraceResponseMiddleware) == 1
