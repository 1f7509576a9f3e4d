"""``chatter-otel demo``: scripted conversations through the service, in process.

It drives the real HTTP API (httpx over ASGI), then flushes telemetry and prints what the
write-back stored, so a newcomer sees tokens and cost land in Chatter's own rows. Anything that
stops it (the database going away, an unexpected answer) is reported in one line and the
command exits non-zero; a flush that cannot complete names the records it waits for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from ulid import ULID

from chatter_otel.config import TelemetryConfig
from chatter_otel.service.api import create_app
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.telemetry import setup_telemetry

# (username, conversation options, [(content, streamed, expected to fail)])
SCRIPT: list[tuple[str, dict[str, Any], list[tuple[str, bool, bool]]]] = [
    (
        "alice",
        {"title": "Arithmetic help"},
        [
            ("Hello, what can you do?", False, False),
            ("Please calculate 12*7", False, False),
            ("Tell me a short story about otters", True, False),
        ],
    ),
    (
        "bob",
        {"title": "Quick maths", "system_prompt": "You are terse."},
        [("What is (3+4)/2", False, False), ("Thanks a lot", True, False)],
    ),
    (
        "carol",
        {"title": "Unpriced model", "llm_model": "offline-unpriced-1"},
        [("Hi from a model nobody priced", False, False), ("Now fail please #fail", False, True)],
    ),
]


class DemoStopped(Exception):
    """The demo cannot go on; the message is the one line the user sees."""


async def _api(client: httpx.AsyncClient, method: str, url: str, what: str, **kw: Any) -> Any:
    """The JSON answer of one API call, or ``DemoStopped`` naming the call and the answer."""
    r = await client.request(method, url, **kw)
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise DemoStopped(f"{what}: HTTP {r.status_code}: {str(detail)[:200]}")
    return r.json()


def _flush_failure(telemetry: Any, elapsed: float) -> str:
    """Why the flush failed: the records still waiting for a message row, by name."""
    waiting = getattr(telemetry.writeback, "waiting_records", None)
    records = waiting() if callable(waiting) else []
    if records:
        named = ", ".join(f"message {r.message_id} (trace {r.trace_id})" for r in records[:3])
        more = f" and {len(records) - 3} more" if len(records) > 3 else ""
        return (
            f"telemetry not flushed: {len(records)} record(s) wait for a message row that "
            f"does not exist: {named}{more}"
        )
    return f"telemetry did not flush within {elapsed:.1f} s"


async def _turn(client: httpx.AsyncClient, cid: str, content: str, streamed: bool) -> int:
    if not streamed:
        r = await client.post(f"/api/v1/conversations/{cid}/messages", json={"content": content})
        return r.status_code
    async with client.stream(
        "POST", f"/api/v1/conversations/{cid}/messages/stream", json={"content": content}
    ) as r:
        body = "".join([chunk async for chunk in r.aiter_text()])
    return r.status_code if "event: message" in body else 502


def _print(
    console: Console, conversations: list[dict[str, Any]], messages: dict[str, list[dict[str, Any]]]
) -> None:
    for conv in conversations:
        console.print(
            f"conversation {conv['id']}  title={conv['title']!r} messages={conv['message_count']} "
            f"total_tokens={conv['total_tokens']} total_cost=${conv['total_cost']:.8f}"
        )
        table = Table(show_header=True, header_style="bold")
        for col in (
            "seq",
            "role",
            "prompt",
            "completion",
            "total",
            "cost $",
            "model",
            "finish",
            "ms",
            "note",
        ):
            table.add_column(col)
        for m in messages[conv["id"]]:
            note = m["error_message"] or (
                "unpriced" if (m["extra_metadata"] or {}).get("cost_unpriced") else ""
            )
            table.add_row(
                str(m["sequence_number"]),
                m["role"],
                *(
                    ("" if m[k] is None else str(m[k]))
                    for k in ("prompt_tokens", "completion_tokens", "total_tokens")
                ),
                "" if m["cost"] is None else f"{m['cost']:.8f}",
                m["model_used"] or "",
                m["finish_reason"] or "",
                "" if m["response_time_ms"] is None else str(m["response_time_ms"]),
                note[:40],
            )
        console.print(table)


async def run_demo(
    config: TelemetryConfig, settings: ServiceSettings, turns: int | None = None
) -> int:
    console = Console(width=max(Console().width, 150))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    telemetry = setup_telemetry(config)
    app = create_app(settings, telemetry)
    failures: list[str] = []
    run = str(ULID())[-8:].lower()
    try:
        conversations, messages = await _run(
            app=app,
            telemetry=telemetry,
            turns=turns,
            console=console,
            run=run,
            failures=failures,
        )
        _print(console, conversations, messages)
        _check(conversations, messages, failures)
    except DemoStopped as exc:
        failures.append(str(exc))
    except (httpx.HTTPError, OSError, SQLAlchemyError) as exc:
        failures.append(
            f"the database or the service is unavailable: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        )
    finally:
        telemetry.shutdown()
    for failure in failures:
        console.print(f"[red]FAILED[/red] {failure}")
    if failures:
        return 1
    console.print("demo ok: every assistant message carries its tokens and cost")
    return 0


async def _run(
    *,
    app: Any,
    telemetry: Any,
    turns: int | None,
    console: Console,
    run: str,
    failures: list[str],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://chatter.local", timeout=60
        ) as client,
    ):
        conversation_ids: list[str] = []
        for username, options, script in SCRIPT:
            user = await _api(
                client,
                "POST",
                "/api/v1/users",
                f"creating user {username}",
                json={"username": f"{username}-{run}", "email": f"{username}-{run}@example.com"},
            )
            conv = await _api(
                client,
                "POST",
                "/api/v1/conversations",
                f"creating {username}'s conversation",
                json={"user_id": user["id"], **options},
            )
            conversation_ids.append(conv["id"])
            for content, streamed, should_fail in script:
                status = await _turn(client, conv["id"], content, streamed)
                if (status >= 400) != should_fail:
                    failures.append(f"turn {content!r} answered {status}")
        if turns:
            with Progress(console=console) as progress:
                task = progress.add_task("chat turns", total=turns)
                for i in range(turns):
                    status = await _turn(
                        client, conversation_ids[0], f"Turn {i}: calculate {i}+1", i % 5 == 4
                    )
                    if status >= 400:
                        failures.append(f"extra turn {i} answered {status}")
                    progress.advance(task)
        started = time.monotonic()
        if not telemetry.force_flush(30_000):
            failures.append(_flush_failure(telemetry, time.monotonic() - started))
        conversations: list[dict[str, Any]] = []
        messages: dict[str, list[dict[str, Any]]] = {}
        for cid in conversation_ids:
            conversations.append(
                await _api(client, "GET", f"/api/v1/conversations/{cid}", f"reading {cid}")
            )
            messages[cid] = await _api(
                client,
                "GET",
                f"/api/v1/conversations/{cid}/messages?limit=500",
                f"reading the messages of {cid}",
            )
        return conversations, messages


def _check(
    conversations: list[dict[str, Any]],
    messages: dict[str, list[dict[str, Any]]],
    failures: list[str],
) -> None:
    for conv in conversations:
        rows = messages[conv["id"]]
        if conv["message_count"] != len(rows):
            failures.append(
                f"conversation {conv['id']}: message_count {conv['message_count']} != {len(rows)}"
            )
        if conv["total_tokens"] != sum(m["total_tokens"] or 0 for m in rows):
            failures.append(f"conversation {conv['id']}: total_tokens does not add up")
        for m in rows:
            if (
                m["role"] == "ASSISTANT"
                and m["error_message"] is None
                and m["total_tokens"] is None
            ):
                failures.append(f"message {m['id']}: usage was not written back")
