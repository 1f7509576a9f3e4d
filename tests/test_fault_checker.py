"""The fault tests' exactness checker (tests/_exactness.py) checked itself: on turns of several
model calls it recomputes message and conversation usage from each call's own usage, and a
stored value one token off is reported, even where the conversation equals its messages.

Values are written straight into the rows (as a write-back with a bug would leave them).
"""

from __future__ import annotations

import json
from decimal import Decimal

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from sqlalchemy import text
from sqlalchemy.engine import URL

from chatter_otel.service.llm import OfflineChatModel
from chatter_otel.service.tools import TOOLS
from tests._exactness import (
    PARALLEL,
    SEQUENTIAL,
    Turn,
    multi_call_plan,
    offline_calls,
    planned_usage_problems,
    usage_of,
)
from tests.test_writeback_support import aggregates_exact, engine_for, price, seed


def _plan(url: URL) -> list[Turn]:
    """One conversation: a turn of one call, of two sequential calls, of three parallel."""
    turns = multi_call_plan(seed(url, conversations=1, messages=3))
    assert [(len(t[2]), t[3]) for t in turns] == [(1, SEQUENTIAL), (2, SEQUENTIAL), (3, PARALLEL)]
    return turns


def _store(url: URL, turns: list[Turn], *, message_off: int = 0, conversation_off: int = 0) -> None:
    """Each message's usage as its calls make it (the two-call turn's prompt and total
    ``message_off`` tokens more), the conversation the sum of its messages plus
    ``conversation_off`` tokens."""
    engine = engine_for(url)
    tokens, cost = 0, Decimal(0)
    with engine.begin() as conn:
        for mid, _cid, calls, _shape in turns:
            prompt, completion, total, amount = usage_of(calls)
            if len(calls) == 2:
                prompt, total = prompt + message_off, total + message_off
            tokens, cost = tokens + total, cost + amount
            conn.execute(
                text(
                    "UPDATE messages SET prompt_tokens = :p, completion_tokens = :c, "
                    "total_tokens = :t, cost = :cost WHERE id = :id"
                ),
                {"p": prompt, "c": completion, "t": total, "cost": float(amount), "id": mid},
            )
        conn.execute(
            text(
                "UPDATE conversations SET total_tokens = :t, total_cost = :cost, "
                "message_count = 3, last_message_at = "
                "(SELECT MAX(created_at) FROM messages WHERE conversation_id = :id) WHERE id = :id"
            ),
            {"t": tokens + conversation_off, "cost": float(cost), "id": turns[0][1]},
        )
    engine.dispose()


def test_a_turn_usage_is_the_sum_over_its_calls_each_priced_on_its_own() -> None:
    assert usage_of([(5, 2), (5, 2), (4, 3)]) == (14, 7, 21, price(5, 2) * 2 + price(4, 3))


def test_exact_multi_call_turns_pass(pg_url: URL) -> None:
    turns = _plan(pg_url)
    _store(pg_url, turns)
    assert planned_usage_problems(pg_url, turns) == []


def test_a_message_one_token_off_is_reported_with_its_conversation(pg_url: URL) -> None:
    """The conversation equals its (wrong) messages, as a write-back recomputing it from
    them leaves it: the old check, conversation against messages, saw nothing."""
    turns = _plan(pg_url)
    _store(pg_url, turns, message_off=1)
    mid, cid, calls, _ = turns[1]
    assert aggregates_exact(pg_url) == []
    assert (calls, usage_of(calls)) == ([(3, 2), (11, 1)], (14, 3, 17, Decimal("0.0000115")))
    assert planned_usage_problems(pg_url, turns) == [
        f"message {mid}: stored (15, 3, 18, 1.15e-05), its calls [(3, 2), (11, 1)] make "
        "(14, 3, 17, 0.0000115)",
        f"conversation {cid}: stored (42, 3.15e-05), its messages' calls make (41, 0.0000315)",
    ]


def test_a_conversation_one_token_off_is_reported(pg_url: URL) -> None:
    turns = _plan(pg_url)
    _store(pg_url, turns, conversation_off=1)
    problems = planned_usage_problems(pg_url, turns)
    assert [p.split(":")[0] for p in problems] == [f"conversation {turns[0][1]}"]


def test_a_parallel_turn_counted_as_one_call_is_reported(pg_url: URL) -> None:
    """Two parallel calls of equal usage stored as one (7 tokens short)."""
    turns = _plan(pg_url)
    _store(pg_url, turns)
    mid = turns[2][0]
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE messages SET prompt_tokens = prompt_tokens - 5, "
                "completion_tokens = completion_tokens - 2, total_tokens = total_tokens - 7 "
                "WHERE id = :id"
            ),
            {"id": mid},
        )
    engine.dispose()
    problems = planned_usage_problems(pg_url, turns)
    assert [p.split(":")[0] for p in problems] == [f"message {mid}"]


def test_a_message_without_usage_is_reported_unless_a_crash_allows_it(pg_url: URL) -> None:
    """After a hard kill a turn may have no usage at all: then its conversation's expected
    totals leave it out, and holding them is exact."""
    turns = _plan(pg_url)
    _store(pg_url, turns[:2])
    mid = turns[2][0]
    assert [p.split(":")[0] for p in planned_usage_problems(pg_url, turns)] == [f"message {mid}"]
    assert planned_usage_problems(pg_url, turns, all_written=False) == []


def test_the_service_tool_turn_is_recomputed_call_by_call_as_the_offline_model_counts() -> None:
    """The offline model's own two calls of a calculator turn, against the checker's
    recomputation from what the database keeps (history, answer, tool calls)."""
    model = OfflineChatModel()
    tools = [convert_to_openai_tool(t) for t in TOOLS.values()]
    history: list[BaseMessage] = [HumanMessage("hello"), HumanMessage("compute 2 * 7")]
    first = model._reply(history, tools)
    tool_call = first.tool_calls[0]
    result = str(TOOLS["calculator"].invoke(tool_call["args"]))
    answer = ToolMessage(content=result, tool_call_id=tool_call["id"])
    second = model._reply([*history, first, answer], tools)
    reported = [
        (m.usage_metadata["input_tokens"], m.usage_metadata["output_tokens"])
        for m in (first, second)
        if m.usage_metadata is not None
    ]
    stored_tool_calls = [{"arguments": json.dumps(tool_call["args"]), "result": result}]
    recomputed = offline_calls(["hello", "compute 2 * 7"], str(second.content), stored_tool_calls)
    assert recomputed == reported == [(11, 11), (18, 5)]
