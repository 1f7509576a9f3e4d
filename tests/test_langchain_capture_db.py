"""Zero-code LangChain capture end to end on PostgreSQL: each LLM call counted exactly once.

Every combination an application can end up with: the capture alone, with openinference's
LangChain instrumentation, with a hand-wrapped ``model_span`` beside unwrapped calls, and
both; calls made by invoke, stream, batch and gather. The stored message must carry the
exact tokens of its calls, the ledger one counted call per LLM call, and the workflow's
handle the same numbers before the row is written.

Offline tokens (input, output): "Hello there" (5, 5), "Good morning to you" (7, 7),
"One" (4, 4); offline-echo-1 costs $0.50 / $1.50 per million input / output tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatter_otel import model_span, workflow_span
from chatter_otel.service.api import create_app
from chatter_otel.service.chat import ChatService
from chatter_otel.service.llm import OfflineChatModel
from chatter_otel.service.models import Message, MessageRole, new_ulid
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.spans import WorkflowRun
from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from tests._offline_llm import OfflineLLM
from tests.service_client import Api
from tests.test_writeback_support import ledger_name

IN_PRICE, OUT_PRICE = Decimal("0.0000005"), Decimal("0.0000015")


@dataclass
class Service:
    api: Api
    chat: ChatService
    cap: CapturedTelemetry
    url: URL


@pytest.fixture(params=[False, True], ids=["capture", "capture+openinference"])
async def service(request: pytest.FixtureRequest, pg_url: URL) -> AsyncIterator[Service]:
    import httpx

    url = pg_url.render_as_string(hide_password=False)
    with capture_telemetry(
        writeback_url=url,
        writeback_flush_interval_s=0.1,
        capture_langchain=True,
        instrument_langchain=request.param,
    ) as cap:
        app = create_app(ServiceSettings.model_validate({"DATABASE_URL": url}), cap.telemetry)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://chatter.test", timeout=30
            ) as client,
        ):
            yield Service(Api(client), app.state.service, cap, pg_url)


def _row(url: URL, message_id: str) -> tuple[Any, ...]:
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT prompt_tokens, completion_tokens, total_tokens, cost FROM messages "
                "WHERE id = :id"
            ),
            {"id": message_id},
        ).one()
        ledger = ledger_name(url)
        calls = conn.execute(
            text(f"SELECT sum(calls) FROM {ledger} WHERE message_id = :id"), {"id": message_id}
        ).scalar_one()
    engine.dispose()
    return (*row, calls)


async def _turn(service: Service, body: Callable[[], Awaitable[None]]) -> tuple[WorkflowRun, str]:
    """A workflow the test scripts, then its assistant message row, as an app would."""
    user = await service.api.user()
    cid = await service.api.conversation(user)
    message_id = new_ulid()
    async with workflow_span(
        "chat", conversation_id=cid, message_id=message_id, user_id=user
    ) as run:
        await body()
    await service.chat.add_message(
        Message(id=message_id, conversation_id=cid, role=MessageRole.ASSISTANT, content="ok")
    )
    assert service.cap.telemetry.force_flush(10_000)
    return run, message_id


def _expect(
    service: Service, run: WorkflowRun, message_id: str, tokens: tuple[int, int], calls: int
) -> None:
    prompt, completion = tokens
    cost = prompt * IN_PRICE + completion * OUT_PRICE
    stored = _row(service.url, message_id)
    assert stored[:3] == (prompt, completion, prompt + completion)
    assert Decimal(str(stored[3])) == cost
    assert stored[4] == calls
    # What the app could return at once is what the write-back stored.
    assert (run.usage.input_tokens, run.usage.output_tokens, run.usage.total_tokens) == stored[:3]
    assert run.cost == cost and run.calls == calls


async def test_every_call_style_counts_once(service: Service) -> None:
    llm = OfflineChatModel()

    async def body() -> None:
        await llm.ainvoke("Hello there")
        assert [chunk async for chunk in llm.astream("Good morning to you")]
        inputs: list[Any] = ["One", "Hello there"]
        await llm.abatch(inputs)
        # Sync code in worker threads: invoke, stream, batch.
        await asyncio.to_thread(llm.invoke, "One")
        await asyncio.to_thread(lambda: list(llm.stream("Hello there")))
        await asyncio.to_thread(llm.batch, ["One", "Good morning to you"])

    run, message_id = await _turn(service, body)
    tokens = 5 + 7 + (4 + 5) + 4 + 5 + (4 + 7)
    _expect(service, run, message_id, (tokens, tokens), calls=8)


async def test_parallel_calls_count_apart(service: Service) -> None:
    llm = OfflineChatModel()

    async def body() -> None:
        await asyncio.gather(
            llm.ainvoke("Hello there"), llm.ainvoke("Hello there"), llm.ainvoke("One")
        )

    run, message_id = await _turn(service, body)
    _expect(service, run, message_id, (5 + 5 + 4, 5 + 5 + 4), calls=3)


async def test_hand_wrapped_calls_beside_unwrapped_ones_count_once(service: Service) -> None:
    llm = OfflineChatModel()

    async def body() -> None:
        async with model_span(llm) as call:  # hand-wrapped LangChain call: adopted
            call.record(await llm.ainvoke("Hello there"))
        await llm.ainvoke("One")  # unwrapped, beside it
        async with model_span(provider="offline", model="offline-echo-1") as call:
            # a call not made through LangChain, recorded by hand
            usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
            call.record(AIMessage(content="x", usage_metadata=usage))

    run, message_id = await _turn(service, body)
    _expect(service, run, message_id, (5 + 4 + 3, 5 + 4 + 2), calls=3)


async def test_hand_wrapped_parallel_calls_count_apart(service: Service) -> None:
    llm = OfflineChatModel()

    async def wrapped(text: str) -> None:
        async with model_span(llm) as call:
            call.record(await llm.ainvoke(text))

    async def body() -> None:
        await asyncio.gather(wrapped("Hello there"), wrapped("Hello there"), llm.ainvoke("One"))

    run, message_id = await _turn(service, body)
    _expect(service, run, message_id, (14, 14), calls=3)


async def test_completion_model_calls_count_once(service: Service) -> None:
    """Plain (``BaseLLM``) calls in every style, one of them hand-wrapped: the row carries
    each call's tokens once (tests/_offline_llm.py)."""
    llm = OfflineLLM()

    async def body() -> None:
        await llm.ainvoke("Hello there")
        assert [chunk async for chunk in llm.astream("Good morning to you")]
        await asyncio.to_thread(llm.invoke, "One")
        async with model_span(llm) as call:  # adopted, as a chat model call would be
            await llm.ainvoke("One")
        assert call.response is not None

    run, message_id = await _turn(service, body)
    tokens = 5 + 7 + 4 + 4
    _expect(service, run, message_id, (tokens, tokens), calls=4)


async def test_a_completion_batch_reporting_its_usage_once_counts_it_once(
    service: Service,
) -> None:
    """One completions request for two prompts reports one usage: LangChain hands it to the
    first prompt's run; the second run is a call without usage."""

    async def body() -> None:
        await OfflineLLM().abatch(["One", "Hello there"])

    run, message_id = await _turn(service, body)
    stored = _row(service.url, message_id)
    assert stored[:3] == (9, 9, 18)
    assert Decimal(str(stored[3])) == 9 * IN_PRICE + 9 * OUT_PRICE
    assert stored[4] == 1  # calls with usage in the ledger
    assert (run.usage.input_tokens, run.usage.output_tokens, run.calls) == (9, 9, 2)


async def test_service_turns_count_once_and_answer_with_their_usage(service: Service) -> None:
    cid = await service.api.conversation()
    plain = (await service.api.say(cid, "Hello there")).json()
    tool = (await service.api.say(cid, "Please calculate 12*7")).json()
    events = await service.api.stream(cid, "Good morning to you")
    streamed = next(data for name, data in events if name == "message")
    # The usage the model reported, relayed as it arrived, is what the message shows.
    usage = [data for name, data in events if name == "usage"]
    assert usage == [
        {k: streamed[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    ]
    assert service.cap.telemetry.force_flush(10_000)
    for answer in (plain, tool, streamed):
        stored = _row(service.url, answer["id"])
        assert (
            answer["prompt_tokens"],
            answer["completion_tokens"],
            answer["total_tokens"],
        ) == stored[:3]
        assert answer["cost"] == pytest.approx(float(stored[3]), abs=1e-15)
    # Each turn sees the conversation so far: "Hello there" 5, "You said: Hello there" 8,
    # "Please calculate 12*7" 8; the tool call round adds 3 (call) + 4 ("84"); then
    # "The result is 84." 8 and "Good morning to you" 7.
    assert _counted(service.url, plain["id"]) == (5, 5, 10, 1)
    assert _counted(service.url, tool["id"]) == (21 + 28, 11 + 5, 65, 2)
    assert _counted(service.url, streamed["id"]) == (36, 7, 43, 1)


def _counted(url: URL, message_id: str) -> tuple[Any, ...]:
    """Tokens (input, output, total) and counted calls of a stored message."""
    prompt, completion, total, _cost, calls = _row(url, message_id)
    return prompt, completion, total, calls
