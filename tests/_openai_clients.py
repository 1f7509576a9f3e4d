"""What the test_fake_openai_* modules share: openai clients on the fake server (closed by
the ``_close_clients`` fixture of conftest.py), a first message and a calculator tool."""

from __future__ import annotations

import httpx
import openai
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)

from chatter_otel.testing._fake_openai import FakeOpenAIServer

BROKEN_STREAM = (openai.APIConnectionError, httpx.RemoteProtocolError)
"""A stream cut mid-body: openai >= 2 wraps httpx's error, openai 1.x (the release the lowest
supported langchain-openai uses) lets it through."""

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there world"}]


_clients: list[openai.OpenAI] = []


def close_clients() -> None:
    while _clients:
        _clients.pop().close()


def client(server: FakeOpenAIServer) -> openai.OpenAI:
    # No retries: 429 and 5xx would otherwise be retried with back-off.
    _clients.append(openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0))
    return _clients[-1]


CALCULATOR_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
