"""The reference service's tables match Chatter's schema, column by column, on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL

from chatter_otel.service.models import Base

CONVERSATIONS = {
    "id": ("character varying", 26, "NO"),
    "user_id": ("character varying", 26, "NO"),
    "profile_id": ("character varying", 26, "YES"),
    "title": ("character varying", 255, "NO"),
    "description": ("text", None, "YES"),
    "status": ("USER-DEFINED", None, "NO"),
    "llm_provider": ("character varying", 50, "YES"),
    "llm_model": ("character varying", 100, "YES"),
    "temperature": ("double precision", None, "YES"),
    "max_tokens": ("integer", None, "YES"),
    "system_prompt": ("text", None, "YES"),
    "context_window": ("integer", None, "NO"),
    "memory_enabled": ("boolean", None, "NO"),
    "memory_strategy": ("character varying", 50, "YES"),
    "enable_retrieval": ("boolean", None, "NO"),
    "retrieval_limit": ("integer", None, "NO"),
    "retrieval_score_threshold": ("double precision", None, "NO"),
    "message_count": ("integer", None, "NO"),
    "total_tokens": ("integer", None, "NO"),
    "total_cost": ("double precision", None, "NO"),
    "tags": ("json", None, "YES"),
    "extra_metadata": ("json", None, "YES"),
    "workflow_config": ("json", None, "YES"),
    "last_message_at": ("timestamp with time zone", None, "YES"),
    "created_at": ("timestamp with time zone", None, "NO"),
    "updated_at": ("timestamp with time zone", None, "NO"),
}

MESSAGES = {
    "id": ("character varying", 26, "NO"),
    "conversation_id": ("character varying", 26, "NO"),
    "role": ("USER-DEFINED", None, "NO"),
    "content": ("text", None, "NO"),
    "tool_calls": ("json", None, "YES"),
    "tool_call_id": ("character varying", 255, "YES"),
    "prompt_tokens": ("integer", None, "YES"),
    "completion_tokens": ("integer", None, "YES"),
    "total_tokens": ("integer", None, "YES"),
    "model_used": ("character varying", 100, "YES"),
    "provider_used": ("character varying", 50, "YES"),
    "finish_reason": ("character varying", 50, "YES"),
    "response_time_ms": ("integer", None, "YES"),
    "cost": ("double precision", None, "YES"),
    "error_message": ("text", None, "YES"),
    "retry_count": ("integer", None, "NO"),
    "retrieved_documents": ("json", None, "YES"),
    "context_used": ("text", None, "YES"),
    "extra_metadata": ("json", None, "YES"),
    "sequence_number": ("integer", None, "NO"),
    "rating": ("double precision", None, "YES"),
    "rating_count": ("integer", None, "NO"),
    "created_at": ("timestamp with time zone", None, "NO"),
    "updated_at": ("timestamp with time zone", None, "NO"),
}


def _columns(url: URL, table: str) -> dict[str, tuple[str, int | None, str]]:
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT column_name, data_type, character_maximum_length, is_nullable "
                "FROM information_schema.columns WHERE table_name = :t"
            ),
            {"t": table},
        ).all()
    engine.dispose()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_conversations_columns_match_reference(pg_url: URL) -> None:
    assert _columns(pg_url, "conversations") == CONVERSATIONS


def test_messages_columns_match_reference(pg_url: URL) -> None:
    assert _columns(pg_url, "messages") == MESSAGES


def test_enums_store_upper_case_names(pg_url: URL) -> None:
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        labels = conn.execute(
            text(
                "SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t "
                "ON t.oid = e.enumtypid ORDER BY t.typname, e.enumsortorder"
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in labels] == [
        ("conversationstatus", "ACTIVE"),
        ("conversationstatus", "ARCHIVED"),
        ("conversationstatus", "DELETED"),
        ("messagerole", "USER"),
        ("messagerole", "ASSISTANT"),
        ("messagerole", "SYSTEM"),
        ("messagerole", "TOOL"),
    ]


def test_server_defaults_and_constraints(pg_url: URL) -> None:
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    insp = inspect(engine)
    msg_checks = {c["name"] for c in insp.get_check_constraints("messages")}
    conv_checks = {c["name"] for c in insp.get_check_constraints("conversations")}
    uniques = insp.get_unique_constraints("messages")
    fks = insp.get_foreign_keys("messages")
    defaults = {c["name"]: c["default"] for c in insp.get_columns("messages")}
    engine.dispose()
    assert len(msg_checks) == 9
    assert len(conv_checks) == 9
    assert [u["column_names"] for u in uniques] == [["conversation_id", "sequence_number"]]
    assert fks[0]["referred_table"] == "conversations"
    assert fks[0]["options"] == {}
    assert defaults["created_at"] == "now()"
    assert defaults["updated_at"] == "now()"
