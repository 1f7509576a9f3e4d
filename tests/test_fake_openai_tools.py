"""The fake OpenAI server, driven by the real openai client: a calculator tool call for arithmetic,
and the answer to its result.
"""

from __future__ import annotations

import json

import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from chatter_otel.testing._fake_openai import FakeOpenAIServer
from tests._openai_clients import CALCULATOR_TOOL, client

pytestmark = pytest.mark.usefixtures("_close_clients")


def test_arithmetic_request_with_a_calculator_tool_gets_a_tool_call(
    server: FakeOpenAIServer,
) -> None:
    response = client(server).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "calculate 12*7"}],
        tools=[CALCULATOR_TOOL],
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == (
        "calculator",
        '{"expression": "12*7"}',
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == 3  # name + 2 words of arguments


def test_question_form_arithmetic_keeps_the_expression_as_written(
    server: FakeOpenAIServer,
) -> None:
    response = client(server).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What is 3 + 4?"}],
        tools=[CALCULATOR_TOOL],
    )
    assert response.choices[0].message.tool_calls is not None
    call = response.choices[0].message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert json.loads(call.function.arguments) == {"expression": "3 + 4"}


def test_arithmetic_without_a_calculator_tool_is_echoed(server: FakeOpenAIServer) -> None:
    response = client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "calculate 12*7"}]
    )
    assert response.choices[0].message.content == "Echo: calculate 12*7"
    assert response.choices[0].finish_reason == "stop"


def test_tool_choice_none_suppresses_the_tool_call(server: FakeOpenAIServer) -> None:
    response = client(server).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "calculate 12*7"}],
        tools=[CALCULATOR_TOOL],
        tool_choice="none",
    )
    assert response.choices[0].message.content == "Echo: calculate 12*7"


def test_tool_result_is_answered_with_the_result(server: FakeOpenAIServer) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "calculate 12*7"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "84"},
    ]
    response = client(server).chat.completions.create(
        model="m",
        messages=messages,
        tools=[CALCULATOR_TOOL],
    )
    assert response.choices[0].message.content == "The result is 84."
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == 12  # (2 + 3) + (0 + 3) + (1 + 3)
