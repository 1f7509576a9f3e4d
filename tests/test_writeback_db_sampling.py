"""Write-back end to end, real SDK spans in and Chatter rows out, on SQLite and PostgreSQL: sampled
traces still give exact totals, because the write-back records every span.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import sampling as sdk_sampling
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy.engine import URL

from chatter_otel import conventions as c
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import AlwaysRecordSampler
from tests._writeback_db import Factory, flush
from tests.test_writeback_support import (
    aggregates_exact,
    conversation,
    message,
    seed,
    simple_turn,
)


def test_one_percent_sampling_keeps_every_total_exact(db_url: URL, make: Factory) -> None:
    rows = seed(db_url, conversations=4, messages=50)
    t = make(sampler=AlwaysRecordSampler(ParentBased(TraceIdRatioBased(0.01))))
    expected: dict[str, int] = {}
    for cid, mids in rows.messages.items():
        expected[cid] = 0
        for index, mid in enumerate(mids):
            calls = [(index + 1, 2), (5, index % 7)]
            simple_turn(t.tracer, mid, cid, calls, nested_openinference=index % 2 == 0)
            expected[cid] += sum(a + b for a, b in calls)
    assert flush(t)
    exported = t.exported.get_finished_spans()
    assert len({s.context.trace_id for s in exported if s.context}) < 20  # ~2 of 200 turns
    assert all(s.context is not None and s.context.trace_flags.sampled for s in exported)
    assert t.processor.stats.spans_seen == 200 * 5 + 100 * 2
    for cid in rows.conversations:
        assert conversation(db_url, cid)["total_tokens"] == expected[cid]
        assert conversation(db_url, cid)["message_count"] == 50
    for mid in rows.all_messages:
        assert message(db_url, mid)["total_tokens"] is not None
    assert aggregates_exact(db_url) == []


def test_sdk_always_record_sampler_drops_start_attributes() -> None:
    """Why the write-back ships its own AlwaysRecordSampler (see its module docstring).

    If this fails, the SDK keeps the attributes of RECORD_ONLY spans now and
    setup_telemetry could use the SDK's sampler again.
    """
    from opentelemetry.sdk.trace import TracerProvider

    if not hasattr(sdk_sampling, "AlwaysRecordSampler"):
        pytest.skip(
            "this opentelemetry-sdk release has no AlwaysRecordSampler (the lowest does not)"
        )
    attrs = {c.CHATTER_MESSAGE_ID: new_ulid()}
    sdk = TracerProvider(sampler=sdk_sampling.AlwaysRecordSampler(sdk_sampling.ALWAYS_OFF))
    ours = TracerProvider(sampler=AlwaysRecordSampler(sdk_sampling.ALWAYS_OFF))
    lost = sdk.get_tracer("t").start_span("s", attributes=attrs)
    kept = ours.get_tracer("t").start_span("s", attributes=attrs)
    assert lost.is_recording() and kept.is_recording()
    assert not lost.get_span_context().trace_flags.sampled
    assert not kept.get_span_context().trace_flags.sampled
    assert dict(lost.attributes or {}) == {}  # type: ignore[attr-defined]
    assert dict(kept.attributes or {}) == attrs  # type: ignore[attr-defined]
    sampled = ours.get_tracer("t").start_span("s", attributes=attrs)  # root says sample
    assert (
        AlwaysRecordSampler(sdk_sampling.ALWAYS_ON)
        .should_sample(None, 1, "s", attributes=attrs)
        .decision
        is sdk_sampling.Decision.RECORD_AND_SAMPLE
    )
    for s in (lost, kept, sampled):
        s.end()
