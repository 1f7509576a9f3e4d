"""Streaming a turn to a client that leaves in the middle: spans end in the context that
opened them (no "Failed to detach context"), and the assistant message is stored with what
was known when the client left: the text streamed so far, and the usage if the provider had
reported it (else NULL, never 0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.engine import URL

from chatter_otel import workflow_span
from chatter_otel.testing import FakeOpenAIServer, capture_telemetry
from tests._pg import free_port
from tests._pg_cluster import url_text
from tests._service_processes import ServiceProcess, service_env, serving
from tests.test_writeback_support import engine_for, wait_until

DETACH_ERROR = "Failed to detach context"


async def test_a_generator_closed_from_another_task_ends_its_span_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def turn() -> AsyncIterator[str]:
        async with workflow_span("chat"):
            yield "first delta"
            yield "never read"

    with capture_telemetry() as captured:
        stream = turn()
        assert await stream.__anext__() == "first delta"
        # What the event loop does with a generator its reader abandoned: aclose() in a
        # task of its own, i.e. in another contextvars.Context.
        await asyncio.create_task(stream.aclose())  # type: ignore[attr-defined]
        span = captured.span("invoke_workflow chat")
    assert span.end_time is not None
    assert DETACH_ERROR not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


WORDS = ["one ", "two ", "three ", "four ", "five ", "six "]


def _guide_app(saved: list[str]) -> FastAPI:
    """The README's streaming pattern: the workflow span inside the SSE generator, the
    message stored in a ``finally`` shielded from the disconnect's cancellation."""
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            text = ""
            try:
                async with workflow_span("chat"):
                    for word in WORDS:
                        await asyncio.sleep(0.2)  # the model generating
                        text += word
                        yield f"data: {word}\n\n"
            finally:
                with anyio.CancelScope(shield=True):
                    await asyncio.sleep(0.05)  # the app's own insert, awaiting its database
                    saved.append(text)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextlib.contextmanager
def _uvicorn(app: FastAPI) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout=30)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_readme_pattern_stores_the_message_when_the_client_leaves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved: list[str] = []
    with capture_telemetry() as captured, _uvicorn(_guide_app(saved)) as base_url:
        with (
            httpx.Client(base_url=base_url, timeout=30) as client,
            client.stream("GET", "/stream") as response,
        ):
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            assert [next(lines), next(lines)] == ["data: one ", "data: two "]
        assert wait_until(lambda: saved != [], timeout=10)
        assert wait_until(lambda: len(captured.spans()) == 1, timeout=10)
        span = captured.span("invoke_workflow chat")
    assert saved[0].startswith("one two ") and saved[0] != "".join(WORDS)
    assert span.end_time is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """Chunks 0.3 s apart: the client reads two deltas and leaves long before usage."""
    with FakeOpenAIServer(chunk_interval_s=0.3) as fake:
        yield fake


@contextlib.contextmanager
def _service(pg_url: URL, fake: FakeOpenAIServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = service_env(
        url_text(pg_url),
        tmp_path / "spool",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=f"{fake.base_url}",
        CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL="0.2",
    )
    with serving(env, tmp_path / "serve.log") as process:
        yield process


@pytest.fixture
def service(pg_url: URL, fake_openai: FakeOpenAIServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    with _service(pg_url, fake_openai, tmp_path) as process:
        yield process


@pytest.fixture
def stalling_service(
    pg_url: URL, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, FakeOpenAIServer]]:
    """The provider sends the whole answer and its usage, then stalls before ``[DONE]``."""
    with (
        FakeOpenAIServer(hold_after_usage=True) as fake,
        _service(pg_url, fake, tmp_path) as process,
    ):
        yield process, fake


def _conversation(client: httpx.Client) -> str:
    user = client.post("/api/v1/users", json={"username": "ann", "email": "ann@example.com"})
    conv = client.post(
        "/api/v1/conversations",
        json={"user_id": user.json()["id"], "title": "t", "llm_provider": "openai"},
    )
    return str(conv.json()["id"])


ERROR_LINE = re.compile(r"^\S+ \[(?:error|critical)\s*\]")


def _errors_since_the_stream(log: str) -> list[str]:
    """Error lines of the service log from the streamed request on (the access line is
    written as the response starts, before the client leaves)."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "/messages/stream HTTP" in line)
    return [line for line in lines[start:] if ERROR_LINE.match(line)]


def _totals(url: URL, cid: str) -> tuple[Any, ...]:
    engine = engine_for(url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT total_tokens, total_cost FROM conversations WHERE id = :cid"),
            {"cid": cid},
        ).one()
    engine.dispose()
    return tuple(row)


def _assistant_row(url: URL, cid: str) -> dict[str, Any] | None:
    engine = engine_for(url)
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT content, error_message, prompt_tokens, completion_tokens, "
                    "total_tokens, cost, response_time_ms, extra_metadata FROM messages "
                    "WHERE conversation_id = :cid AND role = 'ASSISTANT'"
                ),
                {"cid": cid},
            )
            .mappings()
            .one_or_none()
        )
    engine.dispose()
    return dict(row) if row is not None else None


def _written_back(url: URL, cid: str, timeout: float = 30.0) -> dict[str, Any]:
    """The assistant row once the write-back has processed its turn's spans."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _assistant_row(url, cid)
        if row is not None and row["response_time_ms"] is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no written-back assistant row for {cid}: {_assistant_row(url, cid)}")


def test_a_client_leaving_mid_stream_leaves_the_message_stored_without_usage(
    service: ServiceProcess, pg_url: URL
) -> None:
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        cid = _conversation(client)
        deltas: list[str] = []
        with client.stream(
            "POST",
            f"/api/v1/conversations/{cid}/messages/stream",
            json={"content": "tell me about seven otters in a river"},
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    deltas.append(line)
                if len(deltas) == 2:
                    break  # leaving the block closes the connection mid-stream

    row = _written_back(pg_url, cid)
    assert [row[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost")] == [
        None
    ] * 4
    assert row["extra_metadata"]["usage_missing"] is True
    assert row["content"].startswith("Echo: tell")
    assert row["content"] != "Echo: tell me about seven otters in a river"
    assert row["error_message"].startswith("ClientDisconnected:")
    code, _seconds = service.terminate()
    assert code == -signal.SIGTERM  # uvicorn stops, then re-raises the signal
    log = service.log.read_text()
    assert DETACH_ERROR not in log
    assert _errors_since_the_stream(log) == []


PROMPT = "tell me about seven otters in a river"
# The fake provider's count: 8 words + 3 for the one message; "Echo: ..." is 9 words.
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 9
COST = PROMPT_TOKENS * Decimal("0.00000015") + COMPLETION_TOKENS * Decimal("0.0000006")


def test_a_client_leaving_after_the_usage_arrived_leaves_that_usage_stored(
    stalling_service: tuple[ServiceProcess, FakeOpenAIServer], pg_url: URL
) -> None:
    """The service relays the provider's usage as an SSE ``usage`` event once LangChain has
    it: the client leaves on that event, so the usage had arrived, with no timing guess."""
    service, fake = stalling_service
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        cid = _conversation(client)
        events: list[tuple[str, Any]] = []
        with client.stream(
            "POST", f"/api/v1/conversations/{cid}/messages/stream", json={"content": PROMPT}
        ) as response:
            assert response.status_code == 200
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
                    if name == "usage":
                        break  # leaving the block closes the connection
    assert fake.abandoned.wait(30)  # the service gave up the stalled provider stream

    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    assert events[-1] == ("usage", usage)
    assert "".join(d["content"] for n, d in events if n == "delta") == f"Echo: {PROMPT}"
    row = _written_back(pg_url, cid)
    assert {k: row[k] for k in usage} == usage
    assert Decimal(str(row["cost"])) == COST
    assert "usage_missing" not in row["extra_metadata"]
    assert row["content"] == f"Echo: {PROMPT}"
    assert row["error_message"].startswith("ClientDisconnected:")
    total_tokens, total_cost = _totals(pg_url, cid)
    assert total_tokens == PROMPT_TOKENS + COMPLETION_TOKENS
    assert Decimal(str(total_cost)) == COST
    code, _seconds = service.terminate()
    assert code == -signal.SIGTERM
    log = service.log.read_text()
    assert DETACH_ERROR not in log
    assert _errors_since_the_stream(log) == []
