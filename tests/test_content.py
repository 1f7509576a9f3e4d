"""Captured messages in the conventions' JSON form, whatever shape the app's messages have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from chatter_otel.content import input_messages_json, json_value, output_messages_json

DATA = Path(__file__).parent / "data" / "semconv"
INPUT = jsonschema.Draft202012Validator(
    json.loads((DATA / "gen-ai-input-messages.json").read_text(encoding="utf-8"))
)
OUTPUT = jsonschema.Draft202012Validator(
    json.loads((DATA / "gen-ai-output-messages.json").read_text(encoding="utf-8"))
)


def _input(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(input_messages_json(messages))
    INPUT.validate(out)
    return out


def test_langchain_messages_map_to_the_conventions_roles_and_parts() -> None:
    messages = [
        SystemMessage("be brief"),
        HumanMessage("what is 6*7?"),
        AIMessage("", tool_calls=[{"name": "calc", "args": {"x": "6*7"}, "id": "call_1"}]),
        ToolMessage("42", tool_call_id="call_1"),
    ]
    assert _input(messages) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "what is 6*7?"}]},
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": "call_1", "name": "calc", "arguments": {"x": "6*7"}}
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "42"}],
        },
    ]


def test_openai_style_dicts_are_accepted() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}, "type": "function"}
            ],
        },
    ]
    assert _input(messages) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {"a": 1}}],
        },
    ]


def test_output_message_has_the_schemas_finish_reason() -> None:
    tool_call = AIMessage("", tool_calls=[{"name": "calc", "args": {}, "id": "c"}])
    cases = [
        (AIMessage("done"), "stop", "stop"),
        (AIMessage("cut"), "length", "length"),
        (AIMessage("done"), "end_turn", "stop"),
        (tool_call, "tool_calls", "tool_call"),
        (tool_call, None, "tool_call"),
        (AIMessage(""), None, "error"),  # a stream that ended without a finish reason
    ]
    for message, raw, expected in cases:
        out = json.loads(output_messages_json(message, raw))
        OUTPUT.validate(out)
        assert [(m["role"], m["finish_reason"]) for m in out] == [("assistant", expected)]


def test_tool_values_are_json() -> None:
    assert json_value({"expression": "6*7"}) == '{"expression": "6*7"}'
    assert json_value("42") == "42"
    assert json_value("not json") == '"not json"'
