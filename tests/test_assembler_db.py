"""Counting by identity, late calls and refused tokens, end to end on PostgreSQL: SDK spans
through the write-back processor into Chatter's rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor
from tests.test_writeback_support import (
    Tracing,
    aggregates_exact,
    conversation,
    genai_attrs,
    message,
    openinference_attrs,
    owner_attrs,
    price,
    seed,
    tracing,
)


@pytest.fixture
def wb(pg_url: URL, tmp_path: Path) -> Iterator[Tracing]:
    processor = WritebackSpanProcessor(
        pg_url,
        pricing=Pricing(),
        flush_interval=0.05,
        late_span_grace=0.05,
        spool_path=tmp_path / "spool",
        backoff=(0.02, 0.2),
    )
    t = tracing(processor)
    yield t
    t.provider.shutdown()


def usage_of(url: URL, message_id: str) -> tuple[object, ...]:
    row = message(url, message_id)
    return (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["cost"])


def test_parallel_calls_with_openinference_siblings_are_stored_exactly(
    pg_url: URL, wb: Tracing
) -> None:
    """A slow call, then a fast one answered first whose span stays open a little: each call
    is our span plus openinference's sibling with the same call id. Stored (21, 21, 42)."""
    rows = seed(pg_url)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    tracer = wb.tracer
    with (
        tracer.start_as_current_span("invoke_workflow chat", attributes=owner_attrs(mid, cid)),
        tracer.start_as_current_span("node model", attributes={c.OI_SPAN_KIND: "CHAIN"}),
    ):
        slow = tracer.start_span("chat slow", attributes={c.CHATTER_CALL_ID: "slow"})
        slow_oi = tracer.start_span("ChatOpenAI", attributes={c.CHATTER_CALL_ID: "slow"})
        fast = tracer.start_span("chat fast", attributes={c.CHATTER_CALL_ID: "fast"})
        fast_oi = tracer.start_span("ChatOpenAI", attributes={c.CHATTER_CALL_ID: "fast"})
        for span, attrs in (
            (fast_oi, openinference_attrs(7, 7)),
            (slow_oi, openinference_attrs(7, 7)),
            (slow, genai_attrs(7, 7)),
            (fast, genai_attrs(7, 7)),
        ):
            span.set_attributes(attrs)
            span.end()
    assert wb.provider.force_flush(20_000)
    assert usage_of(pg_url, mid) == (14, 14, 28, float(price(14, 14)))
    assert conversation(pg_url, cid)["total_tokens"] == 28


def test_a_call_ending_seconds_after_its_turn_reaches_message_and_conversation(
    pg_url: URL, wb: Tracing
) -> None:
    """A background call that ends 3 s after its turn was dropped: the trace state expired
    2 s after it went idle."""
    rows = seed(pg_url)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    tracer = wb.tracer
    with tracer.start_as_current_span("invoke_workflow chat", attributes=owner_attrs(mid, cid)):
        with tracer.start_as_current_span("chat", attributes=genai_attrs(10, 2)):
            pass
        background = tracer.start_span("chat background")
    assert wb.provider.force_flush(20_000)
    assert usage_of(pg_url, mid) == (10, 2, 12, float(price(10, 2)))
    time.sleep(3.0)
    background.set_attributes(genai_attrs(5, 1))
    background.end()
    assert wb.provider.force_flush(20_000)
    assert usage_of(pg_url, mid) == (15, 3, 18, float(price(15, 3)))
    assert conversation(pg_url, cid)["total_tokens"] == 18
    assert aggregates_exact(pg_url) == []
    assert (wb.processor.stats.late, wb.processor.stats.unowned) == (1, 0)


def test_refused_tokens_write_no_cost(pg_url: URL, wb: Tracing) -> None:
    """Three calls of 1e9 tokens: the sum cannot be stored; $1,500 of cost was written."""
    rows = seed(pg_url)
    cid = rows.conversations[0]
    mid = rows.messages[cid][0]
    tracer = wb.tracer
    with tracer.start_as_current_span("invoke_workflow chat", attributes=owner_attrs(mid, cid)):
        for _ in range(3):
            with tracer.start_as_current_span("chat", attributes=genai_attrs(10**9, 0)):
                pass
    assert wb.provider.force_flush(20_000)
    assert usage_of(pg_url, mid) == (None, None, None, None)
    totals = conversation(pg_url, cid)
    assert (totals["total_tokens"], totals["total_cost"]) == (0, 0.0)
    assert wb.processor.stats.rejected == {"tokens_too_large": 1}
