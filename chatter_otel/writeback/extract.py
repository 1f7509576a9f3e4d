"""Pure functions from a finished span to what the write-back needs of it.

Usage is read from every convention instrumentations emit; per field the first present wins:

* input: ``gen_ai.usage.input_tokens``, ``gen_ai.usage.prompt_tokens`` (legacy, OpenLLMetry),
  ``llm.token_count.prompt`` (OpenInference);
* output: ``gen_ai.usage.output_tokens``, ``gen_ai.usage.completion_tokens``,
  ``llm.token_count.completion``;
* total: input + output when both are known (the GenAI definition: input includes cached
  tokens), else ``gen_ai.usage.total_tokens`` or ``llm.token_count.total``;
* model: ``gen_ai.response.model``, ``gen_ai.request.model``, ``llm.model_name``;
* provider: ``gen_ai.provider.name``, ``gen_ai.system``, ``llm.provider``, ``llm.system``;
* finish reason: the first of ``gen_ai.response.finish_reasons``; cost: ``gen_ai.usage.cost``;
* call identity: ``chatter.call.id`` (the same on every span of one provider call).

Every value is validated before it can reach SQL (see :mod:`.validation`; ids are ULIDs). A
value that fails is dropped with a reason the caller counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan

from chatter_otel import conventions as c
from chatter_otel.usage import MAX_TOKENS, Usage
from chatter_otel.writeback.records import clean_text, is_ulid
from chatter_otel.writeback.validation import (
    R_CALL_ID,
    R_CONVERSATION_ID,
    R_MESSAGE_ID,
    R_TIMES,
    R_TOKENS_TOO_LARGE,
    R_USER_ID,
    Invalid,
    Reject,
    cost_value,
    text_value,
    token_count,
)

INPUT_KEYS: Final = (
    c.GEN_AI_USAGE_INPUT_TOKENS,
    c.LEGACY_GEN_AI_USAGE_PROMPT_TOKENS,
    c.OI_TOKEN_COUNT_PROMPT,
)
OUTPUT_KEYS: Final = (
    c.GEN_AI_USAGE_OUTPUT_TOKENS,
    c.LEGACY_GEN_AI_USAGE_COMPLETION_TOKENS,
    c.OI_TOKEN_COUNT_COMPLETION,
)
TOTAL_KEYS: Final = (c.LEGACY_GEN_AI_USAGE_TOTAL_TOKENS, c.OI_TOKEN_COUNT_TOTAL)
CACHE_READ_KEYS: Final = (
    c.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    c.OI_TOKEN_COUNT_PROMPT_CACHE_READ,
)
CACHE_WRITE_KEYS: Final = (
    c.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    c.OI_TOKEN_COUNT_PROMPT_CACHE_WRITE,
)
REASONING_KEYS: Final = (
    c.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    c.OI_TOKEN_COUNT_COMPLETION_REASONING,
)
MODEL_KEYS: Final = (c.GEN_AI_RESPONSE_MODEL, c.GEN_AI_REQUEST_MODEL, c.OI_LLM_MODEL_NAME)
PROVIDER_KEYS: Final = (
    c.GEN_AI_PROVIDER_NAME,
    c.LEGACY_GEN_AI_SYSTEM,
    c.OI_LLM_PROVIDER,
    c.OI_LLM_SYSTEM,
)
# chatter-otel writes its own cost attribute; others' gen_ai.usage.cost is read too.
COST_KEYS: Final = (c.CHATTER_USAGE_COST, c.GEN_AI_USAGE_COST)
USAGE_KEYS: Final = frozenset((*INPUT_KEYS, *OUTPUT_KEYS, *TOTAL_KEYS, *COST_KEYS))
"""A span carrying any of these is an LLM call with usage (a roll-up if it has such children)."""
RELEVANT_KEYS: Final = USAGE_KEYS | {c.CHATTER_MESSAGE_ID, c.CHATTER_MESSAGE_UNBOUND}
MAX_CALL_ID: Final = 128
"""Longest ``chatter.call.id`` accepted (ours are 32 hex digits)."""


@dataclass(slots=True)
class Call:
    """One span carrying LLM usage, validated."""

    span_id: int
    end_ns: int
    valid: bool
    """False when its usage was rejected: it still hides roll-ups above it, adds nothing."""
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    model: str | None
    provider: str | None
    finish_reason: str | None
    cost: Decimal | None = None
    """From ``gen_ai.usage.cost``; ``None`` means "price it"."""
    genai: bool = False
    """Usage in the current GenAI convention (``gen_ai.usage.input_tokens``/``output_tokens``)."""
    call_id: str | None = None
    """``chatter.call.id``: spans with the same id are one provider call, counted once."""

    @property
    def reported(self) -> bool:
        """Input or output tokens are known (what pricing needs)."""
        return self.input_tokens is not None or self.output_tokens is not None

    def usage(self) -> Usage:
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )


@dataclass(slots=True)
class Owner:
    """A span carrying ``chatter.message.id``: it owns the LLM usage of its subtree."""

    span_id: int
    message_id: str | None
    """``None`` when the attribute was not a ULID (the subtree is still owned, and its usage
    counted as unowned), or while an unbound owner waits for its ``bind_message``."""
    conversation_id: str | None
    start_ns: int
    end_ns: int
    unbound: bool = False
    """Carries ``chatter.message.unbound``: its message id is given by a bind span."""
    user_id: str | None = None
    """From ``chatter.user.id``: the message's conversation must belong to this user."""


def attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes as a plain dict when possible.

    ``ReadableSpan.attributes`` wraps the SDK's ``BoundedAttributes`` in a mappingproxy, so
    every lookup and iteration goes through Python-level ``Mapping`` methods. The wrapped
    dict is frozen once the span has ended (``_immutable``), so it is read directly; any other
    shape (another SDK version, a hand-made ReadableSpan) goes through the public property.
    """
    raw = getattr(span, "_attributes", None)
    inner = getattr(raw, "_dict", None)
    if type(inner) is dict and getattr(raw, "_immutable", False):
        return inner
    if type(raw) is dict:
        return raw
    attrs = span.attributes
    return dict(attrs) if attrs is not None else {}


def is_relevant(attrs: Mapping[str, Any]) -> bool:
    """Cheap test: does the span carry usage or a message id at all?"""
    return not RELEVANT_KEYS.isdisjoint(attrs)


def has_usage(attrs: Mapping[str, Any]) -> bool:
    return not USAGE_KEYS.isdisjoint(attrs)


def _first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> object:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def _finish_reason(value: object) -> object:
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


_NO_USAGE: Final = (None, None, None, None, None, None)


def _count(value: object) -> int | None:
    # The common case (a plain int in range) without a function call per check.
    if value is None:
        return None
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return token_count(value)


def read_call(
    span: ReadableSpan,
    attrs: Mapping[str, Any],
    reject: Reject,
    limits: tuple[int, int, int],
) -> Call:
    """The usage, cost, model, provider and finish reason of an LLM span.

    ``limits`` are the model, provider and finish-reason column lengths. Runs once per LLM
    span on the assembler thread, hence the inlined lookups.
    """
    context = span.context
    span_id = context.span_id if context is not None else 0
    end_ns = span.end_time or 0
    get = attrs.get
    genai = c.GEN_AI_USAGE_INPUT_TOKENS in attrs or c.GEN_AI_USAGE_OUTPUT_TOKENS in attrs
    call_id = call_id_of(attrs, reject)
    model = text_value(_first(attrs, MODEL_KEYS), limits[0], reject)
    provider = text_value(_first(attrs, PROVIDER_KEYS), limits[1], reject)
    raw_finish = get(c.GEN_AI_RESPONSE_FINISH_REASONS)
    finish = None
    if raw_finish is not None:
        finish = text_value(_finish_reason(raw_finish), limits[2], reject)
    try:
        value = get(c.GEN_AI_USAGE_INPUT_TOKENS)
        if value is None:
            value = get(c.LEGACY_GEN_AI_USAGE_PROMPT_TOKENS)
            if value is None:
                value = get(c.OI_TOKEN_COUNT_PROMPT)
        input_tokens = _count(value)
        value = get(c.GEN_AI_USAGE_OUTPUT_TOKENS)
        if value is None:
            value = get(c.LEGACY_GEN_AI_USAGE_COMPLETION_TOKENS)
            if value is None:
                value = get(c.OI_TOKEN_COUNT_COMPLETION)
        output_tokens = _count(value)
        total: int | None
        if input_tokens is not None and output_tokens is not None:
            # The GenAI definition (input includes cached tokens); a reported total that
            # disagrees is not trusted over its parts.
            total = input_tokens + output_tokens
        else:
            total = _count(_first(attrs, TOTAL_KEYS))
            if total is None and (input_tokens is not None or output_tokens is not None):
                total = (input_tokens or 0) + (output_tokens or 0)
        cache_read = _count(_first(attrs, CACHE_READ_KEYS))
        cache_write = _count(_first(attrs, CACHE_WRITE_KEYS))
        reasoning = _count(_first(attrs, REASONING_KEYS))
    except Invalid as exc:
        reject(exc.reason)
        return Call(
            span_id, end_ns, False, *_NO_USAGE, model, provider, finish, None, genai, call_id
        )
    if total is not None and total > MAX_TOKENS:
        reject(R_TOKENS_TOO_LARGE)
        return Call(
            span_id, end_ns, False, *_NO_USAGE, model, provider, finish, None, genai, call_id
        )
    cost: Decimal | None = None
    raw_cost = _first(attrs, COST_KEYS)
    if raw_cost is not None:
        try:
            cost = cost_value(raw_cost)
        except Invalid as exc:
            reject(exc.reason)  # priced from the tokens instead, like a span without cost
    return Call(
        span_id,
        end_ns,
        True,
        input_tokens,
        output_tokens,
        total,
        cache_read,
        cache_write,
        reasoning,
        model,
        provider,
        finish,
        cost,
        genai,
        call_id,
    )


def call_id_of(attrs: Mapping[str, Any], reject: Reject) -> str | None:
    """``chatter.call.id`` when it is a short clean string; anything else is no identity."""
    value = attrs.get(c.CHATTER_CALL_ID)
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= MAX_CALL_ID and clean_text(value):
        return value
    reject(R_CALL_ID)
    return None


def is_owner(attrs: Mapping[str, Any]) -> bool:
    """Owns the usage below it: carries a message id, or waits for one (unbound)."""
    if c.CHATTER_MESSAGE_BIND in attrs:
        return False
    return c.CHATTER_MESSAGE_ID in attrs or attrs.get(c.CHATTER_MESSAGE_UNBOUND) is True


def is_bind(attrs: Mapping[str, Any]) -> bool:
    """The span ``bind_message`` emits (its parent is the turn it names the message of)."""
    return attrs.get(c.CHATTER_MESSAGE_BIND) is True


def _ulid_attr(attrs: Mapping[str, Any], key: str, reason: str, reject: Reject) -> str | None:
    """A ULID attribute, ``None`` when absent or refused (then counted under ``reason``)."""
    raw = attrs.get(key)
    if raw is None:
        return None
    if is_ulid(raw):
        return str(raw)
    reject(reason)
    return None


def read_ids(attrs: Mapping[str, Any], reject: Reject) -> tuple[str | None, str | None]:
    """Validated ``chatter.message.id`` and ``chatter.conversation.id`` (``None`` if refused)."""
    return (
        _ulid_attr(attrs, c.CHATTER_MESSAGE_ID, R_MESSAGE_ID, reject),
        _ulid_attr(attrs, c.CHATTER_CONVERSATION_ID, R_CONVERSATION_ID, reject),
    )


def read_owner(span: ReadableSpan, attrs: Mapping[str, Any], reject: Reject) -> Owner:
    context = span.context
    message_id, conversation_id = read_ids(attrs, reject)
    unbound = c.CHATTER_MESSAGE_ID not in attrs
    user_id = _ulid_attr(attrs, c.CHATTER_USER_ID, R_USER_ID, reject)
    start, end = span.start_time or 0, span.end_time or 0
    if start <= 0 or end < start:
        reject(R_TIMES)
        start = 0  # no response time; the end (if any) still dates the record
    return Owner(
        span_id=context.span_id if context is not None else 0,
        message_id=message_id,
        conversation_id=conversation_id,
        start_ns=start,
        end_ns=end,
        unbound=unbound,
        user_id=user_id,
    )
