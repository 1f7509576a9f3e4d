"""The fault tests' exactness checks: what the database holds against usage recomputed here.

Every expected figure is recomputed from each model call's own usage and summed over the
calls of its turn, never taken from a figure the system under test produced: for the
service's turns, from the offline model's rules (its calls re-derived from the stored
history, content and tool calls); for planned turns, from the plan. A conversation's
expected totals are the sum of its messages' expected usage, so a message stored wrong
shows in its conversation too even when the conversation equals the stored messages.
Contains no tests itself (see tests/test_fault_checker.py for the checks of the checker).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Tracer
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.test_writeback_support import (
    ECHO,
    Seeded,
    aggregates_exact,
    engine_for,
    genai_attrs,
    owner_attrs,
    price,
    simple_turn,
    span,
)

LEDGER = "chatter_otel.chatter_otel_writeback_ledger"
ECHO_MODEL = "offline-echo-1"
HISTORY_LIMIT = 20
"""chatter_otel.service.chat.HISTORY_LIMIT: messages the offline model sees per turn."""
PER_MESSAGE = 3
"""chatter_otel.service.llm.PER_MESSAGE_TOKENS (not imported here: it loads LangChain)."""
COST_TOLERANCE = Decimal("1e-12")
"""Costs are stored as floats: a relative error of 1e-12 is rounding, more is a wrong cost."""

Usage = tuple[int, int, int, Decimal]
"""(prompt, completion, total tokens, cost)."""
SEQUENTIAL = "sequential"
PARALLEL = "parallel"
Turn = tuple[str, str, list[tuple[int, int]], str]
"""(message id, conversation id, each call's (input, output) tokens, SEQUENTIAL or PARALLEL)."""


def usage_of(calls: Sequence[tuple[int, int]]) -> Usage:
    """A turn's usage: each call priced on its own, everything summed over the calls."""
    return (
        sum(a for a, _ in calls),
        sum(b for _, b in calls),
        sum(a + b for a, b in calls),
        sum((price(a, b) for a, b in calls), Decimal(0)),
    )


def _show(usage: Usage) -> str:
    return "({}, {}, {}, {})".format(*usage)


def _cost_ok(stored: Any, want: Decimal) -> bool:
    return stored is not None and abs(Decimal(str(stored)) - want) <= COST_TOLERANCE * max(
        Decimal(1), want
    )


# --- planned turns (span-level fault tests) ------------------------------------------------


def multi_call_plan(rows: Seeded) -> list[Turn]:
    """One turn per seeded message, in three shapes by position: one call; two sequential
    calls (a tool-calling turn); three parallel calls, two of them with the same usage
    (parallel calls must count apart)."""
    turns: list[Turn] = []
    for cid, mids in rows.messages.items():
        for index, mid in enumerate(mids):
            first = (index + 2, index % 5 + 1)
            if index % 3 == 0:
                turns.append((mid, cid, [first], SEQUENTIAL))
            elif index % 3 == 1:
                turns.append((mid, cid, [first, (11, index % 3)], SEQUENTIAL))
            else:
                turns.append((mid, cid, [(5, 2), (5, 2), first], PARALLEL))
    return turns


def emit_turn(tracer: Tracer, turn: Sequence[Any]) -> None:
    """The spans of one planned turn: calls one after the other (as ``simple_turn``), or
    all started before any ends, siblings under the turn's span."""
    mid, cid, calls = turn[0], turn[1], [tuple(call) for call in turn[2]]
    if len(turn) < 4 or turn[3] == SEQUENTIAL:
        simple_turn(tracer, mid, cid, calls)
        return
    with span(tracer, "invoke_workflow chatter", owner_attrs(mid, cid)):
        started = [
            tracer.start_span(f"chat {ECHO}", attributes=genai_attrs(a, b)) for a, b in calls
        ]
        for call_span in reversed(started):
            call_span.end()


def _stored(url: URL) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            messages = conn.execute(
                text(
                    "SELECT id, prompt_tokens, completion_tokens, total_tokens, cost FROM messages"
                )
            ).all()
            conversations = conn.execute(
                text("SELECT id, total_tokens, total_cost FROM conversations")
            ).all()
    finally:
        engine.dispose()
    return {r[0]: tuple(r[1:]) for r in messages}, {r[0]: tuple(r[1:]) for r in conversations}


def planned_usage_problems(
    url: URL, turns: Sequence[Turn], *, all_written: bool = True
) -> list[str]:
    """Every planned message against its calls, every conversation against its messages'
    planned usage; empty when exact.

    ``all_written=False`` (a process was killed): a message may have no usage at all, and
    its conversation's expected totals leave it out; a message with usage must have exactly
    its turn's."""
    messages, conversations = _stored(url)
    problems: list[str] = []
    want_tokens: dict[str, int] = {}
    want_cost: dict[str, Decimal] = {}
    for mid, cid, calls, _shape in turns:
        want = usage_of(calls)
        prompt, completion, total, cost = messages[mid]
        want_tokens.setdefault(cid, 0)
        want_cost.setdefault(cid, Decimal(0))
        if total is None and prompt is None and completion is None and cost is None:
            if all_written:
                problems.append(f"message {mid}: no usage, its calls {calls} make {_show(want)}")
            continue
        if (prompt, completion, total) != want[:3] or not _cost_ok(cost, want[3]):
            problems.append(
                f"message {mid}: stored ({prompt}, {completion}, {total}, {cost}), "
                f"its calls {calls} make {_show(want)}"
            )
        want_tokens[cid] += want[2]
        want_cost[cid] += want[3]
    for cid, tokens in want_tokens.items():
        total, cost = conversations[cid]
        if total != tokens or not _cost_ok(cost, want_cost[cid]):
            problems.append(
                f"conversation {cid}: stored ({total}, {cost}), its messages' calls make "
                f"({tokens}, {want_cost[cid]})"
            )
    return problems


# --- the service's turns (process-level fault tests) ----------------------------------------


def offline_calls(
    seen: Sequence[str], content: str, tool_calls: Sequence[Mapping[str, Any]] | None
) -> list[tuple[int, int]]:
    """The offline model's calls of one turn, recomputed from its rules (see
    ``OfflineChatModel._reply``): each call's prompt is every message it saw (``seen``, then
    the tool rounds so far: an assistant message without text and the tool's answer), its
    completion the tool call's arguments or, in the last call, the answer."""
    from chatter_otel.service.llm import PER_MESSAGE_TOKENS, count_tokens  # LangChain: lazily

    prompt = sum(count_tokens(c) + PER_MESSAGE_TOKENS for c in seen)
    calls = []
    for tool_call in tool_calls or ():
        calls.append((prompt, count_tokens(str(json.loads(tool_call["arguments"])))))
        prompt += PER_MESSAGE_TOKENS + count_tokens(str(tool_call["result"])) + PER_MESSAGE_TOKENS
    calls.append((prompt, count_tokens(content)))
    return calls


@dataclass
class StoredTurns:
    """What the database says about every chat turn, checked against the offline model."""

    assistant: int = 0
    """Assistant messages stored (without error)."""
    with_usage: int = 0
    user: int = 0
    multi_call: int = 0
    """Assistant messages of turns with several model calls (tool calls), checked per call."""
    missing_usage: list[str] = field(default_factory=list)
    wrong_usage: list[str] = field(default_factory=list)
    ledger_problems: list[str] = field(default_factory=list)
    aggregates: list[tuple[Any, ...]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    @property
    def problems(self) -> list[str]:
        return [
            *(f"no usage: {m}" for m in self.missing_usage[:10]),
            *self.wrong_usage[:10],
            *self.ledger_problems[:10],
            *(f"conversation totals differ from its messages: {a}" for a in self.aggregates[:10]),
        ]


_ROWS = text(
    "SELECT m.id, m.conversation_id, m.role, m.content, m.sequence_number, m.error_message, "
    "m.prompt_tokens, m.completion_tokens, m.total_tokens, m.cost, m.model_used, "
    "m.provider_used, m.tool_calls FROM messages m ORDER BY m.conversation_id, "
    "m.sequence_number"
)


def _ledger(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": LEDGER}).scalar()
    if exists is None:
        return {}
    rows = conn.execute(
        text(f"SELECT message_id, status, total_tokens FROM {LEDGER} ORDER BY message_id")
    ).all()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(tuple(row))
    return out


def stored_turns(url: URL, *, concurrent: Collection[str] = ()) -> StoredTurns:
    """Checks every assistant message against the offline model's calls, recomputed.

    A conversation's turns that ran one after the other saw the stored messages before
    them as history, so every call's prompt is recomputed exactly. In ``concurrent``
    conversations (several turns at once) the history is unknown: only the completions are
    recomputed, and the prompt must hold at least one message per call.
    """
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(_ROWS).all()
            ledger = _ledger(conn)
    finally:
        engine.dispose()
    report = StoredTurns(aggregates=aggregates_exact(url))
    history: list[Any] = []
    conversation = None
    for row in rows:
        mid, cid, role, content, _seq, error, prompt, completion, total, cost = row[:10]
        model, provider, tool_calls = row[10:]
        if cid != conversation:
            conversation, history = cid, []
        role = getattr(role, "name", role)
        if role == "USER":
            report.user += 1
        if role == "ASSISTANT" and error is None:
            report.assistant += 1
            report.ids.add(mid)
            sequential = cid not in concurrent
            calls = offline_calls(history[-HISTORY_LIMIT:], content, tool_calls)
            report.multi_call += len(calls) > 1
            want_prompt, want_completion, _, _ = usage_of(calls)
            if total is None:
                report.missing_usage.append(mid)
            else:
                report.with_usage += 1
                if sequential:
                    prompt_ok = prompt == want_prompt
                    want_cost = usage_of(calls)[3]
                else:
                    prompt_ok = (prompt or 0) > PER_MESSAGE * len(calls)
                    want_cost = price(prompt or 0, want_completion)
                if not (
                    prompt_ok
                    and completion == want_completion
                    and total == (prompt or 0) + want_completion
                    and _cost_ok(cost, want_cost)
                    and model == ECHO_MODEL
                    and provider == "offline"
                ):
                    report.wrong_usage.append(
                        f"message {mid}: stored ({prompt}, {completion}, {total}, {cost}, "
                        f"{model}, {provider}), the model's calls "
                        f"{calls if sequential else [c[1] for c in calls]} (cost {want_cost})"
                    )
                entries = ledger.get(mid, [])
                if len(entries) != 1 or entries[0][1] != "applied" or entries[0][2] != total:
                    report.ledger_problems.append(f"message {mid}: ledger rows {entries}")
        if role in ("USER", "ASSISTANT") and error is None:
            history.append(content)
    return report


def message_usage(url: URL) -> dict[str, tuple[int | None, float | None]]:
    """Every message's (total_tokens, cost), in one query."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, total_tokens, cost FROM messages")).all()
    finally:
        engine.dispose()
    return {row[0]: (row[1], row[2]) for row in rows}


def assistant_without_usage(url: URL) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM messages WHERE role = 'ASSISTANT' "
                        "AND error_message IS NULL AND total_tokens IS NULL"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()
