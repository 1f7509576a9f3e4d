"""The fake OpenAI server, driven by the real openai client: server-sent events, usage chunks,
streamed tool calls, interrupted and held streams.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from chatter_otel.testing._fake_openai import FakeOpenAIServer
from tests._openai_clients import BROKEN_STREAM, CALCULATOR_TOOL, HELLO, client

pytestmark = pytest.mark.usefixtures("_close_clients")


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
