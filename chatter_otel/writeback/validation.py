"""The values a span may hand to SQL, validated; anything else is refused with a reason.

Token counts are integers in ``[0, MAX_TOKENS]`` (integral floats are accepted, booleans are
not), a cost is a finite number in ``[0, MAX_COST]``, and text is free of control characters
and cut to its column length. A refused value raises :class:`Invalid` or is reported through
``reject(reason)``; the reasons are the ``reason`` attribute of the rejected metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Final

from chatter_otel.usage import MAX_TOKENS
from chatter_otel.writeback.records import MAX_COST, clean_text

# Rejection reasons (the ``reason`` attribute of the rejected metric).
R_TOKENS_TYPE: Final = "tokens_not_integer"
R_TOKENS_NEGATIVE: Final = "tokens_negative"
R_TOKENS_TOO_LARGE: Final = "tokens_too_large"
R_TOKENS_NOT_FINITE: Final = "tokens_not_finite"
R_COST: Final = "cost_invalid"
R_MESSAGE_ID: Final = "message_id_invalid"
R_CONVERSATION_ID: Final = "conversation_id_invalid"
R_USER_ID: Final = "user_id_invalid"
R_TEXT: Final = "text_invalid"
R_TIMES: Final = "span_times_invalid"
R_CALL_ID: Final = "call_id_invalid"

Reject = Callable[[str], None]


class Invalid(Exception):
    """A value refused, with the reason the caller counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def token_count(value: object) -> int:
    """A validated token count, or ``Invalid`` with the reason."""
    if isinstance(value, bool):
        raise Invalid(R_TOKENS_TYPE)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(R_TOKENS_NOT_FINITE)
        if not value.is_integer():
            raise Invalid(R_TOKENS_TYPE)
        if value < 0:
            raise Invalid(R_TOKENS_NEGATIVE)
        if value > MAX_TOKENS:
            raise Invalid(R_TOKENS_TOO_LARGE)
        number = int(value)
    else:
        raise Invalid(R_TOKENS_TYPE)
    if number < 0:
        raise Invalid(R_TOKENS_NEGATIVE)
    if number > MAX_TOKENS:
        raise Invalid(R_TOKENS_TOO_LARGE)
    return number


def cost_value(value: object) -> Decimal:
    """A validated cost in USD, or ``Invalid``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(R_COST)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(R_COST)
    # repr() is the shortest decimal that round-trips: 0.1 stays 0.1, not 0.1000000000000000055.
    amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not Decimal(0) <= amount <= MAX_COST:
        raise Invalid(R_COST)
    return amount


_TEXT_CACHE: dict[tuple[str, int], str | None] = {}
_TEXT_CACHE_SIZE: Final = 4096
"""Model, provider and finish-reason strings repeat: each is validated once (bounded)."""


def text_value(value: object, limit: int, reject: Reject) -> str | None:
    """Text for a varchar column: trimmed, control characters refused, cut to ``limit``."""
    if value is None:
        return None
    if not isinstance(value, str):
        reject(R_TEXT)
        return None
    key = (value, limit)
    cached = _TEXT_CACHE.get(key, _MISSING)
    if cached is not _MISSING:
        if cached is None and value.strip():
            reject(R_TEXT)  # refused the first time too: counted every time
        return cached  # type: ignore[return-value]
    text = _text_value(value, limit)
    if len(value) <= 4 * limit:  # junk of any length must not fill the cache
        if len(_TEXT_CACHE) >= _TEXT_CACHE_SIZE:
            _TEXT_CACHE.clear()
        _TEXT_CACHE[key] = text
    if text is None and value.strip():
        reject(R_TEXT)
    return text


_MISSING: Final = object()


def _text_value(value: str, limit: int) -> str | None:
    text = value.strip()
    if not text:
        return None
    if len(text) > 4 * limit:
        # Far beyond the column: not a name, do not spend time on it.
        text = text[: 4 * limit]
    if not clean_text(text):
        return None
    return text[:limit].rstrip() or None
