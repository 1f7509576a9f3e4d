"""The fake OpenAI server driven by LangChain's ChatOpenAI: usage metadata, streams, tool
calls and errors as a LangChain application sees them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from importlib.metadata import version

import langchain_openai.chat_models.base
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from chatter_otel.testing._fake_openai import FakeOpenAIServer
from tests._openai_clients import BROKEN_STREAM

LANGCHAIN_1 = int(version("langchain-core").split(".")[0]) >= 1


def chat_model(server: FakeOpenAIServer) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=server.base_url,
        api_key=SecretStr("sk-test"),
        stream_usage=True,
        max_retries=0,
    )


def aggregate(chunks: Iterable[object]) -> AIMessageChunk:
    """What a caller gets by adding up a ChatOpenAI stream."""
    total: AIMessageChunk | None = None
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 12*7."""
    left, right = expression.split("*")
    return str(int(left) * int(right))


def test_chat_openai_invoke_reports_exact_usage_metadata() -> None:
    with FakeOpenAIServer(cached_tokens=2, reasoning_tokens=1) as server:
        message = chat_model(server).invoke("hello there world")
    assert message.content == "Echo: hello there world"
    assert message.usage_metadata == {
        "input_tokens": 6,
        "output_tokens": 5,
        "total_tokens": 11,
        "input_token_details": {"cache_read": 2},
        "output_token_details": {"reasoning": 1},
    }
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == "gpt-4o-mini"


@pytest.mark.skipif(
    "cache_write_tokens" not in inspect.getsource(langchain_openai.chat_models.base),
    reason="this langchain-openai release does not read cache_write_tokens (0.3.x)",
)
def test_chat_openai_reads_cache_write_tokens_as_cache_creation() -> None:
    with FakeOpenAIServer(cached_tokens=2, cache_write_tokens=3) as server:
        message = chat_model(server).invoke("hello there world")
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_token_details"] == {
        "cache_read": 2,
        "cache_creation": 3,
    }


def test_chat_openai_stream_has_usage_only_after_the_finish_chunk(
    server: FakeOpenAIServer,
) -> None:
    chunks = list(chat_model(server).stream("hello there world"))
    # role, 4 words, finish, usage, then (langchain-core 1.x) LangChain's own empty closing chunk
    assert len(chunks) == 7 + LANGCHAIN_1
    assert [i for i, c in enumerate(chunks) if c.response_metadata.get("finish_reason")] == [5]
    assert [i for i, c in enumerate(chunks) if c.usage_metadata is not None] == [6]
    total = aggregate(chunks)
    assert total.content == "Echo: hello there world"
    assert total.usage_metadata == {
        "input_tokens": 6,
        "output_tokens": 4,
        "total_tokens": 10,
        "input_token_details": {"cache_read": 0},
        "output_token_details": {"reasoning": 0},
    }


def test_chat_openai_with_stream_usage_asks_for_usage(server: FakeOpenAIServer) -> None:
    list(chat_model(server).stream("hello"))
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


def test_chat_openai_tool_call_round_trip(server: FakeOpenAIServer) -> None:
    model = chat_model(server).bind_tools([calculator])
    question = HumanMessage("calculate 12*7")
    call_message = model.invoke([question])
    assert [(c["name"], c["args"]) for c in call_message.tool_calls] == [
        ("calculator", {"expression": "12*7"})
    ]
    tool_call = call_message.tool_calls[0]
    result = calculator.invoke(tool_call)
    assert isinstance(result, ToolMessage)
    answer = model.invoke([question, call_message, result])
    assert answer.content == "The result is 84."
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 12
    assert server.requests[1]["messages"][2] == {
        "role": "tool",
        "tool_call_id": tool_call["id"],
        "content": "84",
    }


def test_chat_openai_streamed_tool_call_aggregates(server: FakeOpenAIServer) -> None:
    chunks = list(chat_model(server).bind_tools([calculator]).stream("what is 3 + 4?"))
    total = aggregate(chunks)
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [
        ("calculator", {"expression": "3 + 4"})
    ]
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert total.usage_metadata is not None
    # 5 = 1 for the name + 4 words of '{"expression": "3 + 4"}'
    assert (total.usage_metadata["input_tokens"], total.usage_metadata["output_tokens"]) == (
        8,
        5,
    )


def test_chat_openai_error_status_raises_the_openai_error_class(
    server: FakeOpenAIServer,
) -> None:
    server.fail_with_status = 500
    with pytest.raises(openai.InternalServerError):
        chat_model(server).invoke("hello")


def test_chat_openai_interrupted_stream_raises_without_usage(server: FakeOpenAIServer) -> None:
    server.interrupt_stream_after = 3
    received: list[AIMessageChunk] = []
    with pytest.raises(BROKEN_STREAM):
        for chunk in chat_model(server).stream("hello there world"):
            received.append(chunk)
    assert len(received) == 3
    assert all(c.usage_metadata is None for c in received)


def test_chat_openai_without_usage_has_no_usage_metadata(server: FakeOpenAIServer) -> None:
    server.omit_usage = True
    assert chat_model(server).invoke("hello").usage_metadata is None
