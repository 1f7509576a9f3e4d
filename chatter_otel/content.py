"""Captured prompts and completions in the GenAI conventions' JSON form.

Only used when content capture is on. ``gen_ai.input.messages`` and
``gen_ai.output.messages`` follow ``gen-ai-input-messages.json`` and
``gen-ai-output-messages.json`` (semantic conventions v1.41.1): roles ``system``, ``user``,
``assistant``, ``tool``; a message is a list of ``parts`` (``text``, ``tool_call``,
``tool_call_response``); every output message has a ``finish_reason``. LangChain messages and
plain ``{"role", "content"}`` dicts are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from chatter_otel import conventions as c

# LangChain message types (``BaseMessage.type``) and OpenAI-style roles -> convention roles.
_ROLES: Final[Mapping[str, str]] = {
    "human": c.ROLE_USER,
    "user": c.ROLE_USER,
    "ai": c.ROLE_ASSISTANT,
    "AIMessageChunk": c.ROLE_ASSISTANT,
    "assistant": c.ROLE_ASSISTANT,
    "system": c.ROLE_SYSTEM,
    "developer": c.ROLE_SYSTEM,
    "tool": c.ROLE_TOOL,
    "ToolMessageChunk": c.ROLE_TOOL,
    "function": c.ROLE_TOOL,
}

# Provider finish reasons -> the schema's FinishReason values; others pass through as is.
_FINISH: Final[Mapping[str, str]] = {
    "stop": c.FINISH_STOP,
    "end_turn": c.FINISH_STOP,
    "stop_sequence": c.FINISH_STOP,
    "length": c.FINISH_LENGTH,
    "max_tokens": c.FINISH_LENGTH,
    "content_filter": c.FINISH_CONTENT_FILTER,
    "tool_calls": c.FINISH_TOOL_CALL,
    "tool_use": c.FINISH_TOOL_CALL,
    "function_call": c.FINISH_TOOL_CALL,
    "error": c.FINISH_ERROR,
}


def input_messages_json(messages: Sequence[Any]) -> str:
    """``gen_ai.input.messages`` for a prompt (a sequence of messages)."""
    return _dumps([_message(m) for m in messages])


def output_messages_json(message: Any, finish_reason: str | None) -> str:
    """``gen_ai.output.messages`` for one response message (one choice)."""
    out = _message(message)
    out["role"] = c.ROLE_ASSISTANT
    out["finish_reason"] = finish_reason_value(finish_reason, out["parts"])
    return _dumps([out])


def finish_reason_value(raw: str | None, parts: Sequence[Mapping[str, Any]] = ()) -> str:
    """The schema's finish reason for a provider's; a response cut short without one is
    an ``error`` unless it asked for tools."""
    if raw:
        return _FINISH.get(raw, raw)
    if any(p.get("type") == c.PART_TOOL_CALL for p in parts):
        return c.FINISH_TOOL_CALL
    return c.FINISH_ERROR


def json_value(value: Any) -> str:
    """A tool's arguments or result as a JSON string (structured where it can be)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return _dumps(value)
        return value
    return _dumps(value)


def _message(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        raw_role = message.get("role") or message.get("type")
        content = message.get("content")
        tool_calls = message.get("tool_calls") or ()
        tool_call_id = message.get("tool_call_id")
        name = message.get("name")
    else:
        raw_role = getattr(message, "type", None)
        content = getattr(message, "content", None)
        tool_calls = getattr(message, "tool_calls", None) or ()
        tool_call_id = getattr(message, "tool_call_id", None)
        name = getattr(message, "name", None)
    role = _ROLES.get(str(raw_role), str(raw_role) if raw_role else c.ROLE_USER)
    parts: list[dict[str, Any]] = []
    if role == c.ROLE_TOOL:
        parts.append(
            {"type": c.PART_TOOL_CALL_RESPONSE, "id": tool_call_id, "response": _text(content)}
        )
    else:
        parts.extend(_text_parts(content))
    for call in tool_calls:
        parts.append(_tool_call(call))
    out: dict[str, Any] = {"role": role, "parts": parts}
    if isinstance(name, str) and name and role != c.ROLE_TOOL:
        out["name"] = name
    return out


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": c.PART_TEXT, "content": content}]
    if isinstance(content, Sequence):
        parts: list[dict[str, Any]] = []
        for block in content:
            if isinstance(block, str):
                parts.append({"type": c.PART_TEXT, "content": block})
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append({"type": c.PART_TEXT, "content": str(block.get("text", ""))})
            elif isinstance(block, Mapping) and isinstance(block.get("type"), str):
                # Images, audio, reasoning...: kept as the schema's generic part.
                parts.append({"type": str(block["type"])})
        return parts
    return [{"type": c.PART_TEXT, "content": str(content)}]


def _tool_call(call: Any) -> dict[str, Any]:
    get = call.get if isinstance(call, Mapping) else lambda k, d=None: getattr(call, k, d)
    args = get("args", None)
    if args is None:  # OpenAI-style {"function": {"name", "arguments"}}
        function = get("function", None) or {}
        args = _parsed(function.get("arguments")) if isinstance(function, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
    else:
        name = get("name", None)
    return {
        "type": c.PART_TOOL_CALL,
        "id": get("id", None),
        "name": str(name or ""),
        "arguments": args,
    }


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = _text_parts(content)
    return "".join(str(p.get("content", "")) for p in parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
