"""Helpers for the write-back tests: Chatter rows, span trees and database readback.

Importable from the spawned worker processes of the concurrency test, hence plain
functions with picklable arguments. Contains no tests itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import URL, Engine

from chatter_otel import conventions as c
from chatter_otel.dburl import sync_url
from chatter_otel.service.models import (
    Base,
    Conversation,
    Message,
    MessageRole,
    User,
    new_ulid,
)
from chatter_otel.writeback import TurnRecord, WritebackSpanProcessor

OFFLINE = "offline"
ECHO = "offline-echo-1"
IN_PRICE = Decimal("0.5") / 1_000_000
OUT_PRICE = Decimal("1.5") / 1_000_000


def price(input_tokens: int, output_tokens: int) -> Decimal:
    """What the shipped price table charges for offline-echo-1."""
    return input_tokens * IN_PRICE + output_tokens * OUT_PRICE


def sample_record(message_id: str = "01J00000000000000000000000") -> TurnRecord:
    """One valid turn record (1 + 2 = 3 tokens, $0.001) for spool and journal tests."""
    return TurnRecord(
        trace_id="a" * 32,
        span_id="b" * 16,
        message_id=message_id,
        conversation_id=None,
        kind="turn",
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
        cost=Decimal("0.001"),
        cost_unpriced=False,
        usage_missing=False,
        calls=1,
        model="m",
        provider="p",
        finish_reason="stop",
        last_call_end_ns=5,
        response_time_ms=4,
        end_ns=6,
    )


def engine_for(url: str | URL) -> Engine:
    return create_engine(sync_url(url))


@dataclass
class Seeded:
    user_id: str
    conversations: list[str]
    messages: dict[str, list[str]]
    """Conversation id -> its message ids (assistant messages, in sequence)."""

    @property
    def all_messages(self) -> list[str]:
        return [m for ms in self.messages.values() for m in ms]


def create_schema(url: str | URL) -> None:
    engine = engine_for(url)
    Base.metadata.create_all(engine)
    engine.dispose()


def seed(
    url: str | URL,
    conversations: int = 1,
    messages: int = 1,
    *,
    extra_metadata: Any = None,
    user_messages: int = 0,
) -> Seeded:
    """Chatter rows: one user, ``conversations`` conversations with ``messages`` assistant
    messages each (and ``user_messages`` user messages, without spans)."""
    engine = engine_for(url)
    Base.metadata.create_all(engine)
    user_id = new_ulid()
    conv_ids = [new_ulid() for _ in range(conversations)]
    by_conv: dict[str, list[str]] = {cid: [] for cid in conv_ids}
    rows: list[dict[str, Any]] = []
    for cid in conv_ids:
        seq = 0
        for _ in range(user_messages):
            rows.append(_message_row(cid, seq, MessageRole.USER, extra_metadata))
            seq += 1
        for _ in range(messages):
            row = _message_row(cid, seq, MessageRole.ASSISTANT, extra_metadata)
            by_conv[cid].append(row["id"])
            rows.append(row)
            seq += 1
    with engine.begin() as conn:
        conn.execute(insert(User), [{"id": user_id, "username": user_id, "email": f"{user_id}@x"}])
        conn.execute(
            insert(Conversation),
            [{"id": cid, "user_id": user_id, "title": "t"} for cid in conv_ids],
        )
        if rows:
            conn.execute(insert(Message), rows)
    engine.dispose()
    return Seeded(user_id, conv_ids, by_conv)


def _message_row(cid: str, seq: int, role: MessageRole, meta: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_ulid(),
        "conversation_id": cid,
        "role": role,
        "content": "x",
        "sequence_number": seq,
    }
    if meta is not None:
        row["extra_metadata"] = meta
    return row


def add_message(url: str | URL, conversation_id: str, message_id: str, seq: int) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Message),
            [
                {
                    "id": message_id,
                    "conversation_id": conversation_id,
                    "role": MessageRole.ASSISTANT,
                    "content": "late",
                    "sequence_number": seq,
                }
            ],
        )
    engine.dispose()


MESSAGE_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "provider_used",
    "model_used",
    "finish_reason",
    "response_time_ms",
    "extra_metadata",
)


def message(url: str | URL, message_id: str) -> dict[str, Any]:
    engine = engine_for(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE id = :id"),
            {"id": message_id},
        ).one()
    engine.dispose()
    out = dict(zip(MESSAGE_COLUMNS, row, strict=True))
    meta = out["extra_metadata"]
    if isinstance(meta, str):  # SQLite through text(): JSON comes back as text
        import json

        out["extra_metadata"] = json.loads(meta)
    return out


def conversation(url: str | URL, conversation_id: str) -> dict[str, Any]:
    engine = engine_for(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT total_tokens, total_cost, message_count, last_message_at "
                "FROM conversations WHERE id = :id"
            ),
            {"id": conversation_id},
        ).one()
    engine.dispose()
    names = ("total_tokens", "total_cost", "message_count", "last_message_at")
    return dict(zip(names, row, strict=True))


def aggregates_exact(url: str | URL, *, touched_only: bool = False) -> list[tuple[Any, ...]]:
    """Conversations whose totals differ from their messages (empty when exact).

    ``touched_only``: only conversations the write-back has recomputed at least once.
    """
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.id, c.total_tokens, c.total_cost, c.message_count, c.last_message_at, "
                "COALESCE(SUM(m.total_tokens), 0), COALESCE(SUM(m.cost), 0), COUNT(m.id), "
                "MAX(m.created_at) FROM conversations c LEFT JOIN messages m "
                "ON m.conversation_id = c.id GROUP BY c.id, c.total_tokens, c.total_cost, "
                "c.message_count, c.last_message_at"
            )
        ).all()
    engine.dispose()
    bad = []
    for row in rows:
        _, tokens, cost, count, last, s_tokens, s_cost, s_count, s_last = row
        if touched_only and last is None:
            continue
        if (
            tokens != s_tokens
            or count != s_count
            or abs(float(cost) - float(s_cost)) > 1e-9 * max(1.0, float(s_cost))
            or str(last) != str(s_last)
        ):
            bad.append(tuple(row))
    return bad


def ledger_name(url: str | URL, table: str = "chatter_otel_writeback_ledger") -> str:
    """The ledger's qualified name: in its own schema on PostgreSQL."""
    postgres = engine_for(url).dialect.name == "postgresql"
    return f"chatter_otel.{table}" if postgres else table


def ledger_rows(url: str | URL) -> list[Mapping[str, Any]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {ledger_name(url)}")).mappings().all()
    engine.dispose()
    return [dict(r) for r in rows]


# --- spans --------------------------------------------------------------------------------


@dataclass
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    processor: WritebackSpanProcessor
    exported: InMemorySpanExporter


def tracing(processor: WritebackSpanProcessor, sampler: Sampler | None = None) -> Tracing:
    """A TracerProvider with the processor and an exporter behind a SimpleSpanProcessor."""
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(processor)
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return Tracing(provider, provider.get_tracer("tests"), processor, exported)


def owner_attrs(message_id: Any, conversation_id: Any = None) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {c.CHATTER_MESSAGE_ID: message_id}
    if conversation_id is not None:
        attrs[c.CHATTER_CONVERSATION_ID] = conversation_id
    return attrs


def genai_attrs(
    input_tokens: Any,
    output_tokens: Any,
    *,
    model: str = ECHO,
    provider: str = OFFLINE,
    finish: str | None = "stop",
    cost: Any = None,
) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        c.GEN_AI_OPERATION_NAME: c.OPERATION_CHAT,
        c.GEN_AI_PROVIDER_NAME: provider,
        c.GEN_AI_REQUEST_MODEL: model,
    }
    if input_tokens is not None:
        attrs[c.GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        attrs[c.GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
    if finish is not None:
        attrs[c.GEN_AI_RESPONSE_FINISH_REASONS] = (finish,)
    if cost is not None:
        attrs[c.GEN_AI_USAGE_COST] = cost
    return attrs


def openinference_attrs(
    prompt: int, completion: int, *, model: str = ECHO, provider: str = OFFLINE
) -> dict[str, AttributeValue]:
    return {
        c.OI_SPAN_KIND: c.OI_SPAN_KIND_LLM,
        c.OI_LLM_MODEL_NAME: model,
        c.OI_LLM_PROVIDER: provider,
        c.OI_TOKEN_COUNT_PROMPT: prompt,
        c.OI_TOKEN_COUNT_COMPLETION: completion,
        c.OI_TOKEN_COUNT_TOTAL: prompt + completion,
    }


@contextmanager
def span(
    tracer: Tracer, name: str, attrs: Mapping[str, AttributeValue] | None = None
) -> Iterator[None]:
    with tracer.start_as_current_span(name, attributes=dict(attrs or {})):
        yield


Node = tuple[str, Mapping[str, AttributeValue], "list[Node]"]


def node(name: str, attrs: Mapping[str, AttributeValue] | None = None, *children: Node) -> Node:
    return (name, dict(attrs or {}), list(children))


def build(tracer: Tracer, *trees: Node) -> None:
    """Starts and ends the spans of each tree, children inside their parent."""
    for name, attrs, children in trees:
        with span(tracer, name, attrs):
            build(tracer, *children)


def simple_turn(
    tracer: Tracer,
    message_id: str,
    conversation_id: str | None,
    calls: Sequence[tuple[int, int]],
    *,
    nested_openinference: bool = False,
) -> None:
    """invoke_workflow (owner) > node CHAIN > chat span per call (> openinference LLM span)."""
    build(
        tracer,
        node(
            "invoke_workflow chatter",
            owner_attrs(message_id, conversation_id),
            *(
                node(
                    f"node {index}",
                    {c.OI_SPAN_KIND: "CHAIN"},
                    node(
                        f"chat {ECHO}",
                        genai_attrs(inp, out),
                        *(
                            [node("ChatOpenAI", openinference_attrs(inp, out))]
                            * nested_openinference
                        ),
                    ),
                )
                for index, (inp, out) in enumerate(calls)
            ),
        ),
    )


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
