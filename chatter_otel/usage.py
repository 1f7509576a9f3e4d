"""Token usage of one LLM call, as the provider reported it.

``None`` means "not reported": the GenAI conventions forbid inventing a 0, and the database
keeps NULL for unknown usage. Subsets (cache reads and writes within input, reasoning within
output) are carried separately and never added on top of the totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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


def _count(value: object) -> int | None:
    # bool is an int subclass; a provider never means True as a token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def from_ai_message(message: Any) -> Response:
    """Read a LangChain ``AIMessage`` (or the sum of a stream's chunks).

    ``usage_metadata`` is absent when the provider reported nothing (an interrupted
    stream, a provider without usage); that stays unknown rather than becoming 0.
    """
    raw = getattr(message, "usage_metadata", None) or {}
    input_details = raw.get("input_token_details") or {}
    output_details = raw.get("output_token_details") or {}
    usage = Usage(
        input_tokens=_count(raw.get("input_tokens")),
        output_tokens=_count(raw.get("output_tokens")),
        cache_read_input_tokens=_count(input_details.get("cache_read")),
        cache_creation_input_tokens=_count(input_details.get("cache_creation")),
        reasoning_output_tokens=_count(output_details.get("reasoning")),
    )
    meta = getattr(message, "response_metadata", None) or {}
    model = meta.get("model_name") or meta.get("model")
    finish = meta.get("finish_reason") or meta.get("stop_reason")
    response_id = getattr(message, "id", None)
    return Response(
        usage=usage,
        model=str(model) if model else None,
        finish_reason=str(finish) if finish else None,
        response_id=str(response_id) if response_id else None,
    )


def aggregate_chunks(chunks: Iterable[Any]) -> Any:
    """The single message a stream's chunks add up to (usage arrives on the last one)."""
    total: Any = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    return total
