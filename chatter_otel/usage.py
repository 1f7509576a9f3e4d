"""Token usage of one LLM call, as the provider reported it.

``None`` means "not reported": the GenAI conventions forbid inventing a 0, and the database
keeps NULL for unknown usage. Subsets (cache reads and writes within input, reasoning within
output) are carried separately and never added on top of the totals.
"""

from __future__ import annotations

from dataclasses import dataclass


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
