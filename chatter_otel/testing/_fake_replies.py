"""What the fake OpenAI server answers (see ``_fake_openai`` for the rules), and its framing
as a chat completion or as the SSE chunks of a stream, in the order the real API sends them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any, Final

_ARITHMETIC: Final = re.compile(
    r"\b(?:calculate|compute|what\s+is|what's)\s+(?P<expr>[\d\s.+\-*/()%^]*\d[\d\s.+\-*/()%^]*)",
    re.IGNORECASE,
)
_OPERATOR: Final = re.compile(r"[+\-*/%^]")
PER_MESSAGE_TOKENS: Final = 3
_ARGUMENT_FRAGMENT: Final = 8  # characters per streamed tool-argument delta


class Reply:
    """What the assistant answers, before it is framed as JSON or SSE."""

    def __init__(self, text: str | None = None, tool_call: tuple[str, str] | None = None) -> None:
        self.text = text
        self.tool_call = tool_call  # (name, JSON arguments)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"

    @property
    def words(self) -> int:
        if self.tool_call:
            return 1 + len(self.tool_call[1].split())
        return len((self.text or "").split())


class Completion:
    """One answer, framed as the non-streamed response or as SSE chunks."""

    def __init__(
        self,
        *,
        id: str,
        created: int,
        model: str,
        reply: Reply,
        tool_call_id: str,
        usage: dict[str, Any] | None,
    ) -> None:
        self.id = id
        self.created = created
        self.model = model
        self.reply = reply
        self.tool_call_id = tool_call_id
        self.usage = usage

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake0001",
            "service_tier": "default",
        }

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.reply.text,
            "refusal": None,
            "annotations": [],
        }
        if self.reply.tool_call:
            name, arguments = self.reply.tool_call
            message["tool_calls"] = [
                {
                    "id": self.tool_call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ]
        payload = self._envelope("chat.completion")
        payload["choices"] = [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": self.reply.finish_reason,
            }
        ]
        if self.usage is not None:
            payload["usage"] = self.usage
        return payload

    def chunks(self, include_usage: bool) -> Iterator[tuple[bool, dict[str, Any]]]:
        """(is the usage chunk, chunk) in the order the real API sends them."""

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            payload = self._envelope("chat.completion.chunk")
            payload["choices"] = [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ]
            if include_usage:
                payload["usage"] = None
            return payload

        if self.reply.tool_call:
            name, arguments = self.reply.tool_call
            yield (
                False,
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": self.tool_call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    }
                ),
            )
            for start in range(0, len(arguments), _ARGUMENT_FRAGMENT):
                fragment = arguments[start : start + _ARGUMENT_FRAGMENT]
                yield (
                    False,
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                )
        else:
            yield False, chunk({"role": "assistant", "content": "", "refusal": None})
            for index, word in enumerate((self.reply.text or "").split(" ")):
                yield False, chunk({"content": word if index == 0 else " " + word})
        yield False, chunk({}, self.reply.finish_reason)
        if include_usage and self.usage is not None:
            payload = self._envelope("chat.completion.chunk")
            payload["choices"] = []
            payload["usage"] = self.usage
            yield True, payload


def reply_to(messages: list[Any], tools: Any, tool_choice: Any) -> Reply:
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        return Reply(text=f"The result is {_text(last)}.")
    user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {}
    )
    text = _text(user)
    match = _ARITHMETIC.search(text)
    if match and tool_choice != "none" and _offers(tools, "calculator"):
        expression = match["expr"].strip().rstrip(".").strip()
        if _OPERATOR.search(expression):
            return Reply(tool_call=("calculator", json.dumps({"expression": expression})))
    return Reply(text=f"Echo: {text}".strip())


def _offers(tools: Any, name: str) -> bool:
    if not isinstance(tools, list):
        return False
    return any(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and t["function"].get("name") == name
        for t in tools
    )


def _text(message: Any) -> str:
    """Text of a message: string content, or its text parts joined by spaces."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def words(message: Any) -> int:
    return len(_text(message).split())


def token(seed: str, length: int) -> str:
    # Deterministic ids shaped like the real ones.
    return hashlib.sha256(seed.encode()).hexdigest()[:length]
