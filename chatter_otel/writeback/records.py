"""The compact records the write-back works with once spans have been read.

A :class:`TurnRecord` is everything one owner span (a span carrying ``chatter.message.id``)
contributes to its message: it is what the store writes, what the spool persists as one
JSON line, and what the ledger keeps (keyed by trace id and span id) so that applying it
twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

KIND_TURN: Final = "turn"
"""The record of an owner span: the usage of its subtree at the time it ended."""
KIND_LATE: Final = "late"
"""The record of one LLM span that ended after its owner had been written."""

MAX_COST: Final = Decimal(10**6)
"""Largest cost in USD accepted for one call or one turn."""
INT32_MAX: Final = 2**31 - 1
"""The message columns are SQL ``integer``: sums above this are rejected, never truncated."""

_HEX = frozenset("0123456789abcdef")


def _same(value: Any) -> Any:
    return value


_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz")


def is_ulid(value: object) -> bool:
    """``value`` is a 26-character Crockford base32 ULID string (what Chatter uses as keys).

    The same acceptance as ``ulid.ULID.from_str`` (case-insensitive, at most 128 bits: the
    first character is 0-7), without building the object: this runs once per owner span.
    """
    return (
        isinstance(value, str)
        and len(value) == 26
        and value[0] in "01234567"
        and _CROCKFORD.issuperset(value)
    )


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and _HEX.issuperset(value)


@dataclass(slots=True)
class TurnRecord:
    """What one owner span (or one late LLM span) adds to one message."""

    trace_id: str
    """32 lower-case hex digits."""
    span_id: str
    """16 lower-case hex digits: the owner span, or the late LLM span for ``kind="late"``."""
    message_id: str
    conversation_id: str | None
    """From ``chatter.conversation.id`` when the span had it; the message row decides."""
    kind: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: Decimal | None
    cost_unpriced: bool
    """Some counted call reported usage that no price covers: the message cost stays NULL."""
    usage_missing: bool
    """No counted call reported usage (the tokens stay NULL)."""
    calls: int
    model: str | None
    provider: str | None
    finish_reason: str | None
    last_call_end_ns: int | None
    response_time_ms: int | None
    end_ns: int
    """When the owner span ended (ns since the epoch): the origin of the message time-to-live."""
    user_id: str | None = None
    """From ``chatter.user.id`` when the owner span had it: the message's conversation must
    belong to this user, or the record is rejected."""

    def to_json(self) -> str:
        data: dict[str, Any] = {"v": 1}
        for spec in FIELDS:
            value = getattr(self, spec.name)
            if value is None and spec.optional:
                continue
            data[spec.name] = None if value is None else spec.encode(value)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, line: str, *, max_lengths: tuple[int, int, int]) -> TurnRecord:
        """Parses and re-validates a spooled line: a spool file is input like any other.

        ``max_lengths`` are the model, provider and finish-reason column lengths.
        Raises ``ValueError`` on anything malformed.
        """
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a version 1 record")
        values: dict[str, Any] = {}
        for spec in FIELDS:
            value = data.get(spec.name) if spec.optional else data[spec.name]
            values[spec.name] = None if value is None else spec.decode(value)
        record = cls(**values)
        record.validate(max_lengths)
        return record

    def validate(self, max_lengths: tuple[int, int, int]) -> None:
        """Raises ``ValueError`` unless every field is in range for the database."""
        if not _is_hex(self.trace_id, 32) or not _is_hex(self.span_id, 16):
            raise ValueError("bad trace or span id")
        if not is_ulid(self.message_id):
            raise ValueError("bad message id")
        if self.conversation_id is not None and not is_ulid(self.conversation_id):
            raise ValueError("bad conversation id")
        if self.user_id is not None and not is_ulid(self.user_id):
            raise ValueError("bad user id")
        if self.kind not in (KIND_TURN, KIND_LATE):
            raise ValueError("bad kind")
        for count in (self.prompt_tokens, self.completion_tokens, self.total_tokens):
            if count is not None and not _int_in(count, 0, INT32_MAX):
                raise ValueError("bad token count")
        if self.cost is not None and not (
            self.cost.is_finite() and Decimal(0) <= self.cost <= MAX_COST
        ):
            raise ValueError("bad cost")
        for flag in (self.cost_unpriced, self.usage_missing):
            if not isinstance(flag, bool):
                raise ValueError("bad flag")
        if not _int_in(self.calls, 0, INT32_MAX):
            raise ValueError("bad call count")
        for text, limit in zip(
            (self.model, self.provider, self.finish_reason), max_lengths, strict=True
        ):
            if text is not None and (
                not isinstance(text, str) or not 0 < len(text) <= limit or not clean_text(text)
            ):
                raise ValueError("bad text")
        if self.last_call_end_ns is not None and not _int_in(self.last_call_end_ns, 0, 2**63 - 1):
            raise ValueError("bad end time")
        if self.response_time_ms is not None and not _int_in(self.response_time_ms, 0, INT32_MAX):
            raise ValueError("bad response time")
        if not _int_in(self.end_ns, 0, 2**63 - 1):
            raise ValueError("bad end time")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of :class:`TurnRecord`: its ledger column and its JSON (spool) form.

    The single definition of the record layout: ``ledger.ledger_table()`` makes the ledger's
    columns from it, ``ledger.ledger_params()`` and ``statements.LEDGER_TYPES`` (the
    ``json_to_recordset`` types) come from it,
    and :meth:`TurnRecord.to_json` / :meth:`TurnRecord.from_json` encode and decode with it.
    """

    name: str
    """The attribute of :class:`TurnRecord`, and the key in its JSON form."""
    column: str | None
    """The ledger column; None for a field the ledger does not keep (checked on write only)."""
    sql: str
    """``varchar``, ``bigint``, ``integer`` or ``boolean``: the column's type."""
    nullable: bool
    length: int | str | None = None
    """``varchar`` length: a number, or the :class:`~.mapping.WritebackMapping` attribute
    that holds it (the message columns the text is copied into)."""
    encode: Callable[[Any], Any] = _same
    """Python value (not None) to its JSON and SQL parameter form."""
    decode: Callable[[Any], Any] = _same
    """JSON form (not None) back to the Python value."""
    key: bool = False
    """Part of the ledger's primary key (a record is applied once per trace and span id)."""
    optional: bool = False
    """Left out of the JSON form when None, and None when absent (spool files written before
    the field existed still read)."""


FIELDS: Final[tuple[FieldSpec, ...]] = (
    FieldSpec("trace_id", "trace_id", "varchar", False, 32, key=True),
    FieldSpec("span_id", "span_id", "varchar", False, 16, key=True),
    FieldSpec("kind", "kind", "varchar", False, 8),
    FieldSpec("message_id", "message_id", "varchar", False, 26),
    FieldSpec("conversation_id", "conversation_id", "varchar", True, 26),
    FieldSpec("prompt_tokens", "prompt_tokens", "bigint", True),
    FieldSpec("completion_tokens", "completion_tokens", "bigint", True),
    FieldSpec("total_tokens", "total_tokens", "bigint", True),
    # Exact decimal text (summed in Python, never as a float).
    FieldSpec("cost", "cost", "varchar", True, 64, encode=str, decode=lambda v: _decimal(v)),
    FieldSpec("cost_unpriced", "cost_unpriced", "boolean", False),
    FieldSpec("usage_missing", "usage_missing", "boolean", False),
    FieldSpec("calls", "calls", "integer", False),
    FieldSpec("model", "model", "varchar", True, "model_max_length"),
    FieldSpec("provider", "provider", "varchar", True, "provider_max_length"),
    FieldSpec("finish_reason", "finish_reason", "varchar", True, "finish_reason_max_length"),
    FieldSpec("last_call_end_ns", "last_call_end_ns", "bigint", True),
    FieldSpec("response_time_ms", "response_time_ms", "integer", True),
    FieldSpec("end_ns", "span_end_ns", "bigint", False),
    FieldSpec("user_id", None, "varchar", True, 26, optional=True),
)
"""Every field of :class:`TurnRecord`, in ledger column order."""


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("cost must be a string")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError("bad cost") from None


def clean_text(text: str) -> bool:
    """No control characters and valid UTF-8 (lone surrogates would break the driver)."""
    if not text.isprintable():
        # isprintable() is also False for ordinary spaces other than " " (e.g. NBSP):
        # only refuse what is really a control, format or unencodable character.
        for ch in text:
            if ch == " " or ch.isprintable():
                continue
            if ch.isspace() and ch not in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85":
                continue
            return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
