"""The fake OpenAI server, driven by the real openai client: plain completions, their usage and
the knobs that shape it.

Usage numbers follow the documented rule: prompt_tokens = words of every message + 3 per
message; completion_tokens = words of the reply (+ reasoning_tokens).
"""

from __future__ import annotations

import httpx
import pytest
from openai.types.chat import (
    ChatCompletionMessageParam,
)

from chatter_otel.testing._fake_openai import FakeOpenAIServer
from tests._openai_clients import HELLO, client

pytestmark = pytest.mark.usefixtures("_close_clients")


def test_completion_echoes_the_last_user_message(server: FakeOpenAIServer) -> None:
    response = client(server).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert response.choices[0].message.content == "Echo: hello there world"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == "stop"


def test_completion_looks_like_the_real_api(server: FakeOpenAIServer) -> None:
    response = client(server).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == "gpt-4o-mini"
    assert response.system_fingerprint == "fp_fake0001"
    assert isinstance(response.created, int)


def test_usage_counts_words_plus_three_per_message(server: FakeOpenAIServer) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there world"},
    ]
    response = client(server).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 12,  # (3 + 3) + (3 + 3)
        "completion_tokens": 4,  # "Echo: hello there world"
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_cached_and_reasoning_tokens_are_configurable() -> None:
    with FakeOpenAIServer(cached_tokens=4, reasoning_tokens=2) as server:
        response = client(server).chat.completions.create(model="m", messages=HELLO)
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 6,
        "completion_tokens": 6,  # 4 words + 2 reasoning
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


def test_cached_tokens_never_exceed_the_prompt() -> None:
    with FakeOpenAIServer(cached_tokens=1000) as server:
        response = client(server).chat.completions.create(model="m", messages=HELLO)
    assert response.usage is not None
    assert response.usage.prompt_tokens_details is not None
    assert response.usage.prompt_tokens_details.cached_tokens == 6


def test_cache_write_tokens_are_sent_when_configured() -> None:
    with FakeOpenAIServer(cached_tokens=2, cache_write_tokens=3) as server:
        httpx_response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": HELLO},
            headers={"Authorization": "Bearer sk-test"},
        )
    details = httpx_response.json()["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 2, "cache_write_tokens": 3}


def test_response_model_replaces_the_echoed_model() -> None:
    with FakeOpenAIServer(response_model="gpt-4o-mini-2024-07-18") as server:
        response = client(server).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert response.model == "gpt-4o-mini-2024-07-18"


def test_omit_usage_leaves_usage_out(server: FakeOpenAIServer) -> None:
    server.omit_usage = True
    response = client(server).chat.completions.create(model="m", messages=HELLO)
    assert response.usage is None


def test_list_content_parts_count_as_text(server: FakeOpenAIServer) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "hi you"}]}
    ]
    response = client(server).chat.completions.create(model="m", messages=messages)
    assert response.choices[0].message.content == "Echo: hi you"
    assert response.usage is not None
    assert response.usage.prompt_tokens == 5
