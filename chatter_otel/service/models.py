"""Chatter's tables, column for column as ``shared/reference/chatter-schema.md`` gives them.

The write-back is only proven if it runs against the real shape: native upper-case enums,
``json`` (not ``jsonb``) columns, ULID string keys and the same check constraints.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from ulid import ULID


def new_ulid() -> str:
    """A fresh ULID as Chatter stores it: 26 Crockford base32 characters."""
    return str(ULID())


class ConversationStatus(enum.Enum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    DELETED = "deleted"


class MessageRole(enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class Base(DeclarativeBase):
    pass


class _Timestamps:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )


class User(_Timestamps, Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    username: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)


class Conversation(_Timestamps, Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    user_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("users.id"), nullable=False, index=True
    )
    profile_id: Mapped[str | None] = mapped_column(String(26), nullable=True, index=True)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[ConversationStatus] = mapped_column(
        SAEnum(ConversationStatus, name="conversationstatus"),
        nullable=False,
        default=ConversationStatus.ACTIVE,
        index=True,
    )
    llm_provider: Mapped[str | None] = mapped_column(String(50), nullable=True)
    llm_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    context_window: Mapped[int] = mapped_column(Integer, nullable=False, default=4096)
    memory_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    memory_strategy: Mapped[str | None] = mapped_column(String(50), nullable=True)
    enable_retrieval: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    retrieval_limit: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    retrieval_score_threshold: Mapped[float] = mapped_column(Float, nullable=False, default=0.7)
    message_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_cost: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    tags: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    extra_metadata: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    workflow_config: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        CheckConstraint("temperature >= 0 AND temperature <= 2", name="check_temperature_range"),
        CheckConstraint("max_tokens > 0", name="check_max_tokens_positive"),
        CheckConstraint("context_window > 0", name="check_context_window_positive"),
        CheckConstraint("retrieval_limit > 0", name="check_retrieval_limit_positive"),
        CheckConstraint(
            "retrieval_score_threshold >= 0 AND retrieval_score_threshold <= 1",
            name="check_score_threshold_range",
        ),
        CheckConstraint("message_count >= 0", name="check_message_count_non_negative"),
        CheckConstraint("total_tokens >= 0", name="check_total_tokens_non_negative"),
        CheckConstraint("total_cost >= 0", name="check_total_cost_non_negative"),
        CheckConstraint("title != ''", name="check_title_not_empty"),
        Index("idx_conversations_user_status", "user_id", "status"),
        Index("idx_conversations_user_created", "user_id", "created_at"),
    )


class Message(_Timestamps, Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    conversation_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("conversations.id"), nullable=False, index=True
    )
    role: Mapped[MessageRole] = mapped_column(
        SAEnum(MessageRole, name="messagerole"), nullable=False, index=True
    )
    content: Mapped[str] = mapped_column(Text, nullable=False)
    tool_calls: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    tool_call_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_used: Mapped[str | None] = mapped_column(String(100), nullable=True)
    provider_used: Mapped[str | None] = mapped_column(String(50), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(50), nullable=True)
    response_time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    retrieved_documents: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    context_used: Mapped[str | None] = mapped_column(Text, nullable=True)
    extra_metadata: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    sequence_number: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)
    rating_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (
        CheckConstraint("prompt_tokens >= 0", name="check_prompt_tokens_non_negative"),
        CheckConstraint("completion_tokens >= 0", name="check_completion_tokens_non_negative"),
        CheckConstraint("total_tokens >= 0", name="check_total_tokens_non_negative"),
        CheckConstraint("response_time_ms >= 0", name="check_response_time_non_negative"),
        CheckConstraint("cost >= 0", name="check_cost_non_negative"),
        CheckConstraint("retry_count >= 0", name="check_retry_count_non_negative"),
        CheckConstraint("sequence_number >= 0", name="check_sequence_number_non_negative"),
        CheckConstraint("rating >= 0 AND rating <= 5", name="check_rating_range"),
        CheckConstraint("rating_count >= 0", name="check_rating_count_non_negative"),
        UniqueConstraint("conversation_id", "sequence_number", name="uq_conversation_sequence"),
        Index("idx_messages_conversation_sequence", "conversation_id", "sequence_number"),
        Index("idx_messages_conversation_role", "conversation_id", "role"),
    )
