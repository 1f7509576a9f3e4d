"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: hostile
strings are bound or refused, bad token counts, costs and ids are rejected and counted.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests._writeback_db import Factory, close, flush
from tests.test_writeback_support import (
    aggregates_exact,
    build,
    genai_attrs,
    message,
    node,
    openinference_attrs,
    owner_attrs,
    price,
    seed,
)


def test_hostile_strings_are_bound_or_refused(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=3)
    cid = rows.conversations[0]
    injected, control, long_name = rows.messages[cid]
    t = make()
    sql = "x'); DROP TABLE messages; --"
    quoted = "p\"'\\"
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(injected, cid),
            node("chat", genai_attrs(1, 1, model=sql, provider=quoted)),
        ),
        node(
            "wf",
            owner_attrs(control, cid),
            node("chat", genai_attrs(1, 1, model="bad\x00name", provider="\ud800")),
        ),
        node(
            "wf",
            owner_attrs(long_name, cid),
            node("chat", genai_attrs(1, 1, model="m" * 5000, finish="f" * 51)),
        ),
    )
    assert flush(t)
    assert message(db_url, injected)["model_used"] == sql
    assert message(db_url, injected)["provider_used"] == "p\"'\\"
    row = message(db_url, control)
    assert (row["model_used"], row["provider_used"], row["total_tokens"]) == (None, None, 2)
    row = message(db_url, long_name)
    assert row["model_used"] == "m" * 100 and row["finish_reason"] == "f" * 50
    assert t.processor.stats.rejected["text_invalid"] == 2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "tokens_negative"),
        (float("nan"), "tokens_not_finite"),
        (float("inf"), "tokens_not_finite"),
        ("12", "tokens_not_integer"),
        (True, "tokens_not_integer"),
        (1.5, "tokens_not_integer"),
        (10**9 + 1, "tokens_too_large"),
        (2**63 - 1, "tokens_too_large"),
    ],
)
def test_bad_token_counts_are_rejected(db_url: URL, make: Factory, value: Any, reason: str) -> None:
    rows = seed(db_url, messages=1)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    t = make()
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(mid, cid),
            # The rejected span still hides the roll-up role: its inner call counts once.
            node("chat bad", genai_attrs(value, 5), node("inner", openinference_attrs(3, 3))),
            node("chat good", genai_attrs(7, 1)),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert row["total_tokens"] == 14  # the inner call (6) and the good call (8)
    assert t.processor.stats.rejected == {reason: 1}
    assert aggregates_exact(db_url) == []


def test_bad_costs_and_ids_are_rejected(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, messages=2)
    cid = rows.conversations[0]
    mid, other = rows.messages[cid]
    t = make()
    build(
        t.tracer,
        node(
            "wf",
            owner_attrs(mid, "not-a-ulid"),
            node("chat", genai_attrs(10, 10, cost=-1.0)),
            node("chat", genai_attrs(10, 10, cost=float("nan"))),
        ),
    )
    for bad_id in ("not-a-ulid", other.lower() + "x", "8" + other[1:], "' OR 1=1 --", 42):
        build(t.tracer, node("wf", owner_attrs(bad_id, cid), node("chat", genai_attrs(9, 9))))
    # An owner with a bad id still owns its subtree: its usage is not given to an outer owner.
    build(
        t.tracer,
        node(
            "outer",
            owner_attrs(other, cid),
            node("inner", owner_attrs("bad"), node("chat", genai_attrs(1000, 1000))),
        ),
    )
    assert flush(t)
    row = message(db_url, mid)
    assert row["total_tokens"] == 40
    assert close(row["cost"], price(20, 20))  # priced instead of the refused span values
    assert message(db_url, other)["total_tokens"] is None
    rejected = t.processor.stats.rejected
    assert rejected == {"conversation_id_invalid": 1, "cost_invalid": 2, "message_id_invalid": 6}
    assert aggregates_exact(db_url) == []
