"""Where the write-back writes: Chatter's table and column names, overridable one by one.

Every name ends up inside SQL text (identifiers cannot be bound parameters), so each one is
checked at construction to be a plain SQL identifier and is quoted by the dialect when used.
The processor updates only the two mapped tables; its own bookkeeping lives in the ledger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Final

IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_LENGTH: Final = 10_000


@dataclass(frozen=True, slots=True)
class WritebackMapping:
    """Table and column names (Chatter's by default) and the varchar lengths of the text columns."""

    messages_table: str = "messages"
    message_id: str = "id"
    message_conversation_id: str = "conversation_id"
    message_prompt_tokens: str = "prompt_tokens"
    message_completion_tokens: str = "completion_tokens"
    message_total_tokens: str = "total_tokens"
    message_cost: str = "cost"
    message_provider: str = "provider_used"
    message_model: str = "model_used"
    message_finish_reason: str = "finish_reason"
    message_response_time_ms: str = "response_time_ms"
    message_extra_metadata: str = "extra_metadata"
    message_created_at: str = "created_at"

    conversations_table: str = "conversations"
    conversation_id: str = "id"
    conversation_user_id: str = "user_id"
    conversation_total_tokens: str = "total_tokens"
    conversation_total_cost: str = "total_cost"
    conversation_message_count: str = "message_count"
    conversation_last_message_at: str = "last_message_at"

    ledger_table: str = "chatter_otel_writeback_ledger"
    """The processor's own table (created if missing): one row per applied owner span."""
    ledger_schema: str = "chatter_otel"
    """PostgreSQL schema of the ledger (created if missing): the application's migrations
    never see it. Not used on SQLite."""

    model_max_length: int = 100
    provider_max_length: int = 50
    finish_reason_max_length: int = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"WritebackMapping.{f.name} must be an integer, got {value!r}")
                if not 1 <= value <= _MAX_LENGTH:
                    raise ValueError(
                        f"WritebackMapping.{f.name} must be between 1 and {_MAX_LENGTH}, "
                        f"got {value}"
                    )
                continue
            if not isinstance(value, str) or IDENTIFIER.fullmatch(value) is None:
                raise ValueError(
                    f"WritebackMapping.{f.name} must be a plain SQL identifier "
                    f"(letters, digits, underscore; not starting with a digit; at most 63 "
                    f"characters), got {value!r}"
                )
        tables = {
            self.messages_table.lower(),
            self.conversations_table.lower(),
            self.ledger_table.lower(),
        }
        if len(tables) != 3:
            raise ValueError(
                "WritebackMapping: messages_table, conversations_table and ledger_table "
                "must be three different tables"
            )
