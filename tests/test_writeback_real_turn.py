"""A real LangGraph turn with openinference and the write-back both on: each call counted once.

openinference parents its LLM span on the graph node's CHAIN span, so our ``chat`` span and
its LLM span for the same call are siblings, not nested; the write-back must still count
the call once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from tests.service_client import Api, running_service


@pytest.fixture
async def api(db_url: URL) -> AsyncIterator[tuple[Api, CapturedTelemetry]]:
    url = db_url.render_as_string(hide_password=False)
    with capture_telemetry(
        writeback_url=url, writeback_flush_interval_s=0.1, instrument_langchain=True
    ) as cap:
        async with running_service(url, cap.telemetry) as api:
            yield api, cap


def _row(url: URL, message_id: str) -> tuple[object, ...]:
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT prompt_tokens, completion_tokens, total_tokens, cost, model_used, "
                "provider_used, finish_reason FROM messages WHERE id = :id"
            ),
            {"id": message_id},
        ).one()
    engine.dispose()
    return tuple(row)


async def test_tool_turn_with_openinference_is_counted_once(
    api: tuple[Api, CapturedTelemetry], db_url: URL
) -> None:
    client, cap = api
    cid = await client.conversation()
    message = (await client.say(cid, "Please calculate 12*7")).json()
    assert cap.telemetry.force_flush(10_000)
    llm_spans = [
        s for s in cap.spans() if (s.attributes or {}).get("openinference.span.kind") == "LLM"
    ]
    assert len(llm_spans) == 2  # openinference saw both calls too
    # two calls: 8 + 15 input, 11 + 5 output (see test_spans.py)
    prompt, completion, total, cost, model, provider, finish = _row(db_url, message["id"])
    assert (prompt, completion, total) == (23, 16, 39)
    assert Decimal(str(cost)) == Decimal("0.0000355")  # 23 * 0.5e-6 + 16 * 1.5e-6
    assert (model, provider, finish) == ("offline-echo-1", "offline", "stop")
