"""Token usage of one LLM call, as the provider reported it.

``None`` means "not reported": the GenAI conventions forbid inventing a 0, and the database
keeps NULL for unknown usage. Subsets (cache reads and writes within input, reasoning within
output) are carried separately and never added on top of the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    """All input tokens, cached ones included."""
    output_tokens: int | None = None
    """All output tokens, reasoning ones included."""
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None

    @property
    def reported(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None

    @property
    def total_tokens(self) -> int | None:
        if not self.reported:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def __add__(self, other: Usage) -> Usage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            add(self.input_tokens, other.input_tokens),
            add(self.output_tokens, other.output_tokens),
            add(self.cache_read_input_tokens, other.cache_read_input_tokens),
            add(self.cache_creation_input_tokens, other.cache_creation_input_tokens),
            add(self.reasoning_output_tokens, other.reasoning_output_tokens),
        )


@dataclass(frozen=True, slots=True)
class Response:
    """What one LLM response reports besides its text: usage, model, finish reason."""

    usage: Usage
    model: str | None
    finish_reason: str | None
    response_id: str | None
    """The provider's completion id (``chatcmpl-...``), not LangChain's run id."""
    service_tier: str | None = None
    system_fingerprint: str | None = None
    api_type: str | None = None
    """``chat_completions`` or ``responses`` for OpenAI, when the response shows which."""


MAX_TOKENS = 10**9
"""No single LLM call reports a billion tokens; larger numbers are corrupt, not usage."""


def _count(value: object) -> int | None:
    # bool is an int subclass; a provider never means True as a token count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return None
    return value


def from_ai_message(message: Any) -> Response:
    """Read a LangChain ``AIMessage`` (or the sum of a stream's chunks).

    ``usage_metadata`` is absent when the provider reported nothing (an interrupted
    stream, a provider without usage); that stays unknown rather than becoming 0.
    """
    raw = _mapping(getattr(message, "usage_metadata", None))
    input_details = _mapping(raw.get("input_token_details"))
    output_details = _mapping(raw.get("output_token_details"))
    usage = Usage(
        input_tokens=_count(raw.get("input_tokens")),
        output_tokens=_count(raw.get("output_tokens")),
        cache_read_input_tokens=_count(input_details.get("cache_read")),
        cache_creation_input_tokens=_count(input_details.get("cache_creation")),
        reasoning_output_tokens=_count(output_details.get("reasoning")),
    )
    meta = _mapping(getattr(message, "response_metadata", None))
    # LangChain stamps its own run id (``lc_run--...``) on messages that lack one; the
    # provider's completion id is in the metadata when the integration keeps it.
    message_id = _text(getattr(message, "id", None))
    if message_id is not None and message_id.startswith(_LC_RUN_PREFIX):
        message_id = None
    response_id = _text(meta.get("id")) or message_id
    return Response(
        usage=usage,
        model=_text(meta.get("model_name")) or _text(meta.get("model")),
        finish_reason=_text(meta.get("finish_reason")) or _text(meta.get("stop_reason")),
        response_id=response_id,
        service_tier=_text(meta.get("service_tier")),
        system_fingerprint=_text(meta.get("system_fingerprint")),
        api_type=_api_type(meta, response_id),
    )


_LC_RUN_PREFIX: Final = "lc_run-"
_API_TYPES: Final[Mapping[str, str]] = {
    "chat.completion": "chat_completions",
    "chat.completion.chunk": "chat_completions",
    "response": "responses",
}


def _api_type(meta: Mapping[str, Any], response_id: str | None) -> str | None:
    """Which OpenAI API answered: from the response's ``object`` or its id's prefix."""
    kind = meta.get("object")
    if isinstance(kind, str) and kind in _API_TYPES:
        return _API_TYPES[kind]
    if response_id is not None:
        if response_id.startswith("chatcmpl-"):
            return "chat_completions"
        if response_id.startswith("resp_"):
            return "responses"
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object, limit: int = 200) -> str | None:
    """A short identifier-like string, or None: model names and finish reasons only."""
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        return None
    return value


def aggregate_chunks(chunks: Iterable[Any]) -> Any:
    """The single message a stream's chunks add up to (usage arrives on the last one)."""
    total: Any = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    return total
