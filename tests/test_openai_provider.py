"""The ``openai`` provider: the real langchain-openai client against a local fake server.

Fake server usage: prompt = words of each message + 3 per message; completion = words of
the reply. gpt-4o-mini is priced by genai-prices at $0.15 / $0.60 per million tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import langchain_openai.chat_models.base
import pytest

from chatter_otel import conventions as c
from chatter_otel.testing import CapturedTelemetry, FakeOpenAIServer, capture_telemetry
from tests.service_client import Api, running_service

WRAPS = hasattr(langchain_openai.chat_models.base, "OpenAIAPIError")
"""langchain-openai 1.x raises its own error classes; 0.3.x lets the client's through."""

API_KEY = "sk-test-must-never-leak-123"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry() as captured:
        yield captured


@pytest.fixture
async def api(tmp_path: Path, cap: CapturedTelemetry, fake: FakeOpenAIServer) -> AsyncIterator[Api]:
    async with running_service(
        f"sqlite:///{tmp_path}/o.db",
        cap.telemetry,
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=fake.base_url,
        CHATTER_LLM_MAX_RETRIES=0,
    ) as api:
        yield api


async def test_openai_turn_records_the_reported_usage_and_cost(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation(llm_provider="openai")
    r = await api.say(cid, "hello there")
    assert r.status_code == 201
    assert r.json()["content"] == "Echo: hello there"
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert attrs[c.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[c.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini"
    assert (attrs[c.GEN_AI_USAGE_INPUT_TOKENS], attrs[c.GEN_AI_USAGE_OUTPUT_TOKENS]) == (5, 3)
    assert attrs[c.CHATTER_USAGE_COST] == pytest.approx(5 * 0.15e-6 + 3 * 0.6e-6, abs=1e-15)
    assert attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


async def test_openai_call_carries_the_completion_id_and_openai_attributes(
    api: Api, cap: CapturedTelemetry
) -> None:
    cid = await api.conversation(llm_provider="openai")
    await api.say(cid, "hello there")
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    # The provider's completion id, not LangChain's run id (lc_run--...).
    assert str(attrs[c.GEN_AI_RESPONSE_ID]).startswith("chatcmpl-")
    assert attrs[c.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert attrs[c.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] == "fp_fake0001"
    assert attrs[c.OPENAI_API_TYPE] == "chat_completions"


async def test_openai_tool_call_round_trip(api: Api, cap: CapturedTelemetry) -> None:
    cid = await api.conversation(llm_provider="openai")
    r = await api.say(cid, "please calculate 6*7")
    assert r.json()["content"] == "The result is 42."
    names = [s.name for s in cap.spans() if s.name.startswith(("chat gpt", "execute_tool"))]
    assert names == ["chat gpt-4o-mini", "execute_tool calculator", "chat gpt-4o-mini"]


async def test_openai_stream_asks_for_usage_and_records_it(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer
) -> None:
    cid = await api.conversation(llm_provider="openai")
    events = await api.stream(cid, "hello big world")
    assert events[-1][0] == "message"
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert (attrs[c.GEN_AI_USAGE_INPUT_TOKENS], attrs[c.GEN_AI_USAGE_OUTPUT_TOKENS]) == (6, 4)


async def test_cached_prompt_tokens_are_reported_as_a_subset(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer
) -> None:
    fake.cached_tokens = 4
    cid = await api.conversation(llm_provider="openai")
    await api.say(cid, "hello there")
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert attrs[c.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert attrs[c.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 4
    # 1 uncached at $0.15/M, 4 cached at $0.075/M, 3 output at $0.60/M
    assert attrs[c.CHATTER_USAGE_COST] == pytest.approx(
        1 * 0.15e-6 + 4 * 0.075e-6 + 3 * 0.6e-6, abs=1e-15
    )


async def test_interrupted_stream_has_no_usage_and_fails_the_turn(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer
) -> None:
    fake.interrupt_stream_after = 2
    cid = await api.conversation(llm_provider="openai")
    events = await api.stream(cid, "hello big world")
    assert events[-1][0] == "error"
    attrs = cap.span("chat gpt-4o-mini").attributes or {}
    assert not [k for k in attrs if k.startswith("gen_ai.usage.")]
    assert attrs[c.ERROR_TYPE] == ("OpenAIConnectionError" if WRAPS else "RemoteProtocolError")


async def test_provider_error_status_is_a_502(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer
) -> None:
    fake.fail_with_status = 500
    cid = await api.conversation(llm_provider="openai")
    r = await api.say(cid, "hello")
    assert r.status_code == 502
    expected = "OpenAIAPIError" if WRAPS else "InternalServerError"
    assert cap.span("chat gpt-4o-mini").attributes[c.ERROR_TYPE] == expected  # type: ignore[index]


async def test_api_key_never_appears_in_spans_or_metrics(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer
) -> None:
    cid = await api.conversation(llm_provider="openai")
    await api.say(cid, "please calculate 6*7")
    assert fake.headers[-1]["authorization"] == f"Bearer {API_KEY}"
    dump: list[Any] = []
    for span in cap.spans():
        dump.extend((span.attributes or {}).values())
        dump.extend(str(dict(e.attributes or {})) for e in span.events)
        dump.append(span.resource.attributes)
    dump.append(cap.reader.get_metrics_data().to_json())  # type: ignore[union-attr]
    assert API_KEY not in str(dump)
