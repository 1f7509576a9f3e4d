"""The fake OpenAI server, driven by the real openai client and by ChatOpenAI.

Usage numbers follow the documented rule: prompt_tokens = words of every message + 3 per
message; completion_tokens = words of the reply (+ reasoning_tokens).
"""

from __future__ import annotations

import http.client
import inspect
import json
import threading
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import version

import httpx
import langchain_openai.chat_models.base
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)
from pydantic import SecretStr

from chatter_otel.testing._fake_openai import FakeOpenAIServer

LANGCHAIN_1 = int(version("langchain-core").split(".")[0]) >= 1
BROKEN_STREAM = (openai.APIConnectionError, httpx.RemoteProtocolError)
"""A stream cut mid-body: openai >= 2 wraps httpx's error, openai 1.x (the release the lowest
supported langchain-openai uses) lets it through."""

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there world"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(server: FakeOpenAIServer) -> openai.OpenAI:
    # No retries: 429 and 5xx would otherwise be retried with back-off.
    _clients.append(openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0))
    return _clients[-1]


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


# --- plain completions --------------------------------------------------------------------


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


# --- tools --------------------------------------------------------------------------------


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


# --- streaming ----------------------------------------------------------------------------


def test_stream_sends_role_then_words_then_finish_then_usage(server: FakeOpenAIServer) -> None:
    chunks = list(
        client(server).chat.completions.create(
            model="m",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [(c.choices[0].delta.role, c.choices[0].delta.content) for c in chunks[:-2]]
    assert deltas == [
        ("assistant", ""),
        (None, "Echo:"),
        (None, " hello"),
        (None, " there"),
        (None, " world"),
    ]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 4)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_is_server_sent_events_ending_with_done(server: FakeOpenAIServer) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
        text = response.read().decode()
        content_type = response.headers["content-type"]
    events = text.split("\n\n")
    assert content_type == "text/event-stream; charset=utf-8"
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert [json.loads(e[6:])["object"] for e in events[:-2]] == ["chat.completion.chunk"] * 6


def test_stream_without_include_usage_has_no_usage_chunk(server: FakeOpenAIServer) -> None:
    chunks = list(client(server).chat.completions.create(model="m", messages=HELLO, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_omit_usage_drops_the_usage_chunk(server: FakeOpenAIServer) -> None:
    server.omit_usage = True
    chunks = list(
        client(server).chat.completions.create(
            model="m",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_streamed_tool_call_arrives_as_argument_fragments(server: FakeOpenAIServer) -> None:
    chunks = list(
        client(server).chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "calculate 12*7"}],
            tools=[CALCULATOR_TOOL],
            stream=True,
        )
    )
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert calls[0][0].function is not None
    assert calls[0][0].function.name == "calculator"
    assert calls[0][0].id is not None
    arguments = "".join(call[0].function.arguments or "" for call in calls if call[0].function)
    assert arguments == '{"expression": "12*7"}'
    assert len(calls) == 4  # header + 3 fragments of up to 8 characters
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_interrupted_stream_raises_after_the_given_chunks(server: FakeOpenAIServer) -> None:
    server.interrupt_stream_after = 3
    received = []
    stream = client(server).chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    with pytest.raises(BROKEN_STREAM):
        for chunk in stream:
            received.append(chunk)
    assert [c.choices[0].delta.content for c in received] == ["", "Echo:", " hello"]
    assert all(c.usage is None for c in received)


def test_interrupt_after_more_chunks_than_sent_still_withholds_usage(
    server: FakeOpenAIServer,
) -> None:
    server.interrupt_stream_after = 100
    received = []
    stream = client(server).chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    with pytest.raises(BROKEN_STREAM):
        for chunk in stream:
            received.append(chunk)
    assert received[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in received)


def test_hold_after_usage_stalls_before_done_until_the_client_hangs_up(
    server: FakeOpenAIServer,
) -> None:
    server.hold_after_usage = True
    stream = client(server).chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    received = []
    for chunk in stream:
        received.append(chunk)
        if chunk.usage is not None:
            break  # the server now sends nothing more: reading on would wait
    assert [c.choices[0].delta.content for c in received[1:5]] == [
        "Echo:",
        " hello",
        " there",
        " world",
    ]
    assert received[-1].usage is not None
    assert (received[-1].usage.prompt_tokens, received[-1].usage.completion_tokens) == (6, 4)
    assert not server.abandoned.is_set()
    stream.close()
    assert server.abandoned.wait(5)


def test_stop_releases_a_held_stream_without_marking_it_abandoned() -> None:
    with FakeOpenAIServer(hold_after_usage=True) as fake:
        stream = client(fake).chat.completions.create(
            model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        assert next(c for c in stream if c.usage is not None).usage is not None
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 5
        stream.close()
    assert not fake.abandoned.is_set()


# --- recording, errors, lifecycle ---------------------------------------------------------


def test_requests_record_body_and_headers(server: FakeOpenAIServer) -> None:
    client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        temperature=0.5,
    )
    assert server.requests == [{"model": "gpt-4o-mini", "messages": HELLO, "temperature": 0.5}]
    assert server.headers[0]["authorization"] == "Bearer sk-test"


def test_repr_never_shows_headers(server: FakeOpenAIServer) -> None:
    client(server).chat.completions.create(model="m", messages=HELLO)
    assert repr(server) == f"FakeOpenAIServer(port={server.port}, requests=1)"


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
        (403, openai.PermissionDeniedError, "permission_error"),
        (404, openai.NotFoundError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_fail_with_status_raises_the_openai_error_class(
    server: FakeOpenAIServer, status: int, error_class: type[openai.APIStatusError], error_type: str
) -> None:
    server.fail_with_status = status
    with pytest.raises(error_class) as raised:
        client(server).chat.completions.create(model="m", messages=HELLO)
    assert raised.value.status_code == status
    assert raised.value.type == error_type
    # openai 1.x quotes the whole error body in the message, later releases only its text.
    assert raised.value.message.startswith(f"Error code: {status} - ")
    assert f"Fake OpenAI server set to fail with HTTP {status}." in raised.value.message


def test_failed_requests_are_still_recorded(server: FakeOpenAIServer) -> None:
    server.fail_with_status = 500
    with pytest.raises(openai.InternalServerError):
        client(server).chat.completions.create(model="m", messages=HELLO)
    assert len(server.requests) == 1


def test_missing_model_is_a_bad_request(server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions", json={"messages": HELLO})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "you must provide a model parameter",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }


def test_unknown_path_is_not_found(server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: POST /v1/embeddings."


def test_models_endpoint_lists_the_configured_models() -> None:
    with FakeOpenAIServer(models=("gpt-4o-mini", "offline-echo-1")) as server:
        ids = [m.id for m in client(server).models.list()]
    assert ids == ["gpt-4o-mini", "offline-echo-1"]


def test_latency_delays_the_answer() -> None:
    with FakeOpenAIServer(latency_s=0.2) as server:
        started = time.perf_counter()
        client(server).chat.completions.create(model="m", messages=HELLO)
        elapsed = time.perf_counter() - started
    assert 0.2 <= elapsed < 0.8


def test_base_url_is_loopback_with_a_free_port(server: FakeOpenAIServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.port > 0


def test_stop_closes_idle_keep_alive_connections_and_the_port() -> None:
    server = FakeOpenAIServer().start()
    port = server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    connection.request("GET", "/v1/models")
    assert connection.getresponse().read()  # the connection stays open (keep-alive)
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 1.0
    assert [t.name for t in threading.enumerate() if t.name == f"fake-openai-{port}"] == []
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/v1/models")
    connection.close()


def test_stop_does_not_wait_out_the_latency() -> None:
    server = FakeOpenAIServer(latency_s=30).start()
    worker = threading.Thread(
        target=lambda: httpx.post(
            f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}
        ),
        daemon=True,
    )
    worker.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.perf_counter()
    server.stop()
    worker.join(5)
    assert time.perf_counter() - started < 1.0


def test_port_and_base_url_need_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAIServer().base_url


# --- LangChain ChatOpenAI -----------------------------------------------------------------


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
