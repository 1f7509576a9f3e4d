"""Write-back pieces without a database: validation, the mapping, records and the assembler."""

from __future__ import annotations

import json
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from ulid import ULID

from chatter_otel import conventions as c
from chatter_otel.config import ConfigError
from chatter_otel.pricing import Pricing
from chatter_otel.service.models import new_ulid
from chatter_otel.usage import MAX_TOKENS
from chatter_otel.writeback import TurnRecord, WritebackMapping, extract
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.records import INT32_MAX, is_ulid
from chatter_otel.writeback.spool import Spool
from chatter_otel.writeback.stats import Counters

LIMITS = (100, 50, 50)
PRICING = Pricing()
TRACE = 0x0AF7651916CD43DD8448EB211C80319C

# --- mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "messages; DROP TABLE x", 'a"b', "naïve", "a" * 64, "a b", "a-b", "t.c"],
)
def test_mapping_refuses_anything_but_plain_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="plain SQL identifier"):
        WritebackMapping(messages_table=name)
    with pytest.raises(ValueError, match="message_model"):
        WritebackMapping(message_model=name)


def test_mapping_defaults_and_limits() -> None:
    m = WritebackMapping()
    assert (m.messages_table, m.conversations_table, m.message_model) == (
        "messages",
        "conversations",
        "model_used",
    )
    assert WritebackMapping(ledger_table="_ledger_" + "x" * 55).ledger_table.startswith("_l")
    with pytest.raises(ValueError, match="different tables"):
        WritebackMapping(ledger_table="Messages")
    with pytest.raises(ValueError, match="between 1 and"):
        WritebackMapping(model_max_length=0)
    with pytest.raises(ValueError, match="integer"):
        WritebackMapping(model_max_length=True)


# --- values -----------------------------------------------------------------------------------

REASONS = {
    extract.R_TOKENS_TYPE,
    extract.R_TOKENS_NEGATIVE,
    extract.R_TOKENS_TOO_LARGE,
    extract.R_TOKENS_NOT_FINITE,
}

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
)


@given(anything)
def test_token_count_accepts_exactly_the_integers_in_range(value: Any) -> None:
    in_range = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and float(value).is_integer()
        and 0 <= value <= MAX_TOKENS
    )
    if in_range:
        assert extract.token_count(value) == int(value)
        assert type(extract.token_count(value)) is int
    else:
        with pytest.raises(extract._Invalid) as info:
            extract.token_count(value)
        assert info.value.reason in REASONS


@given(anything)
def test_cost_accepts_finite_non_negative_bounded_numbers(value: Any) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and 0 <= value <= 10**6
    )
    if ok:
        assert extract.cost_value(value) == Decimal(repr(value))
    else:
        with pytest.raises(extract._Invalid):
            extract.cost_value(value)


@given(st.one_of(st.text(), anything), st.integers(min_value=1, max_value=120))
def test_text_is_clean_and_fits_its_column(value: Any, limit: int) -> None:
    reasons: list[str] = []
    text = extract.text_value(value, limit, reasons.append)
    if text is not None:
        assert 0 < len(text) <= limit
        text.encode("utf-8")
        assert all(ch.isprintable() or ch == " " or ch.isspace() for ch in text)
        assert not any(ch in text for ch in "\x00\n\r\t\x1b")
    assert reasons in ([], [extract.R_TEXT])


@given(st.text(max_size=30))
def test_ulid_check_agrees_with_python_ulid(value: str) -> None:
    try:
        ULID.from_str(value)
        expected = len(value) == 26
    except ValueError:
        expected = False
    assert is_ulid(value) == expected


def test_ulid_check_accepts_generated_ids() -> None:
    for _ in range(1000):
        assert is_ulid(new_ulid())
    assert not is_ulid(42)
    assert not is_ulid("8" + new_ulid()[1:])  # more than 128 bits


@given(
    st.builds(
        TurnRecord,
        trace_id=st.text("0123456789abcdef", min_size=32, max_size=32),
        span_id=st.text("0123456789abcdef", min_size=16, max_size=16),
        message_id=st.builds(new_ulid),
        conversation_id=st.none() | st.builds(new_ulid),
        kind=st.sampled_from(["turn", "late"]),
        prompt_tokens=st.none() | st.integers(0, INT32_MAX),
        completion_tokens=st.none() | st.integers(0, INT32_MAX),
        total_tokens=st.none() | st.integers(0, INT32_MAX),
        cost=st.none() | st.decimals(0, 10**6, allow_nan=False, places=12),
        cost_unpriced=st.booleans(),
        usage_missing=st.booleans(),
        calls=st.integers(0, 100),
        model=st.none() | st.text("abc-é 1.", min_size=1, max_size=100).map(str.strip).filter(bool),
        provider=st.none() | st.sampled_from(["openai", "anthropic", "ö"]),
        finish_reason=st.none() | st.just("stop"),
        last_call_end_ns=st.none() | st.integers(0, 2**63 - 1),
        response_time_ms=st.none() | st.integers(0, INT32_MAX),
        end_ns=st.integers(0, 2**63 - 1),
    )
)
def test_records_survive_the_spool_format(record: TurnRecord) -> None:
    line = record.to_json()
    assert "\n" not in line
    assert TurnRecord.from_json(line, max_lengths=LIMITS) == record


def test_spool_lines_are_validated() -> None:
    record = _record()
    good = json.loads(record.to_json())
    for key, bad in [
        ("trace_id", "X" * 32),
        ("message_id", "nope"),
        ("prompt_tokens", -1),
        ("prompt_tokens", True),
        ("total_tokens", 2**31),
        ("cost", "NaN"),
        ("cost", "-1"),
        ("cost", 1.5),
        ("model", "a\x00b"),
        ("model", "m" * 101),
        ("kind", "other"),
        ("usage_missing", 1),
    ]:
        with pytest.raises(ValueError):
            TurnRecord.from_json(json.dumps({**good, key: bad}), max_lengths=LIMITS)


def _record() -> TurnRecord:
    return TurnRecord(
        trace_id="a" * 32,
        span_id="b" * 16,
        message_id=new_ulid(),
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


# --- the assembler, with hand-made spans ------------------------------------------------------


def make_span(
    span_id: int,
    parent: int | None,
    attrs: dict[str, Any] | None = None,
    *,
    start: int = 1_000_000_000,
    end: int = 2_000_000_000,
    trace_id: int = TRACE,
) -> ReadableSpan:
    return ReadableSpan(
        name=f"s{span_id}",
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=SpanContext(trace_id, parent, is_remote=False) if parent is not None else None,
        attributes=attrs or {},
        start_time=start,
        end_time=end,
    )


def assembler(**kwargs: Any) -> tuple[Assembler, Counters]:
    counters = Counters(None)
    options: dict[str, Any] = {
        "pricing": PRICING,
        "counters": counters,
        "limits": LIMITS,
        "grace": 0.0,
        "trace_ttl": 10.0,
        "done_ttl": 1.0,
        "max_traces": 100,
        "max_spans_per_trace": 1000,
    }
    options.update(kwargs)
    return Assembler(**options), counters


def usage(inp: int, out: int, **extra: Any) -> dict[str, Any]:
    return {c.GEN_AI_USAGE_INPUT_TOKENS: inp, c.GEN_AI_USAGE_OUTPUT_TOKENS: out, **extra}


def test_spans_in_any_order_within_the_grace() -> None:
    mid = new_ulid()
    a, _ = assembler(grace=1.0)
    # Owner first, then the chain span, then the LLM span: all within the grace window.
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)
    a.add(make_span(2, 1), now=0.1)
    a.add(make_span(3, 2, usage(5, 6)), now=0.2)
    assert a.take(0.5) == []
    (record,) = a.take(1.5)
    assert (record.message_id, record.total_tokens, record.response_time_ms) == (mid, 11, 1000)
    assert record.span_id == f"{1:016x}" and record.trace_id == f"{TRACE:032x}"


def test_broken_chains_cycles_and_duplicates_never_raise() -> None:
    mid = new_ulid()
    a, counters = assembler()
    a.add(make_span(7, 7, usage(1, 1)), now=0.0)  # its own parent
    a.add(make_span(8, 9, usage(1, 1)), now=0.0)  # 9 <-> 8 cycle
    a.add(make_span(9, 8), now=0.0)
    a.add(make_span(10, 99, usage(2, 2)), now=0.0)  # parent never seen
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)  # duplicate delivery
    (record,) = a.take(0.1)
    assert record.usage_missing and record.total_tokens is None
    a.expire(100.0)
    stats = counters.snapshot()
    assert stats.duplicates == 1
    assert stats.unowned == 3  # 7, 8 and 10: no chain from them reaches the owner
    assert a.traces == 0


def test_late_span_below_a_counted_call_is_not_counted_twice() -> None:
    mid = new_ulid()
    a, counters = assembler()
    a.add(make_span(2, 1, usage(10, 10)), now=0.0)
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)
    (record,) = a.take(0.1)
    assert record.total_tokens == 20
    # The duplicate inner span of the same call arrives after the owner was written.
    a.add(make_span(3, 2, {c.OI_TOKEN_COUNT_PROMPT: 10, c.OI_TOKEN_COUNT_COMPLETION: 10}), 0.2)
    assert a.take(0.3) == []
    assert counters.snapshot().late_conflicts == 1


def test_late_sibling_call_becomes_its_own_record() -> None:
    mid = new_ulid()
    a, counters = assembler()
    a.add(make_span(2, 1, usage(10, 10)), now=0.0)
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)
    a.take(0.1)
    a.add(make_span(3, 1, usage(1, 2), end=3_000_000_000), now=0.2)
    (late,) = a.take(0.3)
    assert (late.kind, late.span_id, late.total_tokens, late.response_time_ms) == (
        "late",
        f"{3:016x}",
        3,
        None,
    )
    assert counters.snapshot().late == 1


def test_trace_limit_evicts_the_oldest_and_finalizes_its_owner() -> None:
    a, counters = assembler(max_traces=2, grace=100.0)
    mids = [new_ulid() for _ in range(3)]
    for index, mid in enumerate(mids):
        trace_id = TRACE + index
        a.add(make_span(2, 1, usage(1, 1), trace_id=trace_id), now=float(index))
        a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}, trace_id=trace_id), float(index))
    assert a.traces == 2
    (evicted,) = a.take(3.0)  # the oldest owner was finalized when its trace was dropped
    assert evicted.message_id == mids[0] and evicted.total_tokens == 2
    assert [r.message_id for r in a.take(200.0, force=True)] == mids[1:]
    assert counters.snapshot().traces_evicted == 0  # it was complete when dropped


def test_idle_traces_expire_and_unowned_usage_is_counted() -> None:
    a, counters = assembler(trace_ttl=5.0, done_ttl=1.0)
    a.add(make_span(2, 1, usage(1, 1)), now=0.0)  # an LLM call outside any turn
    a.expire(4.0)
    assert a.traces == 1
    a.expire(6.0)
    assert a.traces == 0
    assert counters.snapshot().unowned == 1


values = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
keys = st.sampled_from(sorted(extract.USAGE_KEYS | set(extract.MODEL_KEYS)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(keys, values, max_size=6), min_size=1, max_size=5),
    st.one_of(st.builds(new_ulid), st.text(max_size=30), st.integers()),
    st.permutations(range(6)),
)
def test_arbitrary_attributes_never_raise_and_records_are_database_safe(
    calls: list[dict[str, Any]], message_id: Any, order: list[int]
) -> None:
    a, counters = assembler()
    spans = [make_span(1, None, {c.CHATTER_MESSAGE_ID: message_id})]
    spans += [make_span(10 + i, 1 if i % 2 == 0 else 9 + i, attrs) for i, attrs in enumerate(calls)]
    for index in order:
        if index < len(spans):
            a.add(spans[index], now=0.0)
    records = a.take(1.0, force=True)
    a.expire(1000.0)
    for record in records:
        record.validate(LIMITS)
        assert record.message_id == message_id
    assert len(records) <= 1 + len(calls)
    stats = counters.snapshot()
    assert set(stats.rejected) <= {
        *REASONS,
        extract.R_COST,
        extract.R_TEXT,
        extract.R_MESSAGE_ID,
    }


# --- the spool --------------------------------------------------------------------------------


def _read_all(spool: Spool, reasons: list[str]) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    claim = spool.claim(1e12, created_before=1e12, seal=True)
    while claim is not None:
        while not claim.exhausted:
            chunk, offset = claim.read(2, LIMITS, reasons.append)
            records += chunk
            claim.advance(offset)
        claim.done()
        claim = spool.claim(1e12, created_before=1e12, seal=True)
    return records


def test_spool_files_of_live_writers_are_not_replayed(tmp_path: Path) -> None:
    writer, reader = Spool(tmp_path), Spool(tmp_path)
    first, second = _record(), _record()
    assert writer.append([first, second]) == 2
    assert writer.own_files == 1
    assert reader.claim(1e12, created_before=1e12, seal=True) is None  # locked by its owner
    writer.close()  # its process ended: the lock is gone, the file stays
    reasons: list[str] = []
    assert _read_all(reader, reasons) == [first, second]
    assert reasons == []
    assert list(tmp_path.glob("*")) == []


def test_own_spool_is_replayed_and_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [_record() for _ in range(5)]
    spool.append(records[:3])
    spool.append(records[3:])
    reasons: list[str] = []
    assert _read_all(spool, reasons) == records
    assert spool.own_files == 0 and list(tmp_path.glob("*.jsonl")) == []


def test_torn_and_invalid_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    good = _record()
    dead = tmp_path / "wb-1-dead-000001.jsonl"
    dead.write_text(good.to_json() + "\n" + "{not json}\n" + good.to_json()[:40])
    dead.chmod(0o600)  # a file of ours, private like every spool file
    reasons: list[str] = []
    assert _read_all(Spool(tmp_path), reasons) == [good]
    assert reasons == ["spool_line_invalid", "spool_line_invalid"]


def test_failed_append_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    kept = _record()
    spool.append([kept])
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        spool.append([_record()])  # reported as not written: the caller keeps it
    monkeypatch.setattr(os, "fsync", real_fsync)
    after = _record()
    spool.append([after])
    reasons: list[str] = []
    assert _read_all(spool, reasons) == [kept, after]
    assert reasons == []


def test_unusable_default_spool_directory_falls_back(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # a file where the directory should be: mkdir fails
    spool = Spool(blocked / "spool", fallback=tmp_path / "fallback")
    record = _record()
    assert spool.append([record]) == 1
    assert spool.directory == tmp_path / "fallback"
    reasons: list[str] = []
    assert _read_all(spool, reasons) == [record]
    with pytest.raises(ConfigError, match="Not a directory"):
        Spool(blocked / "spool")  # a configured directory fails loudly, at once


def oi_usage(inp: int, out: int) -> dict[str, Any]:
    return {c.OI_TOKEN_COUNT_PROMPT: inp, c.OI_TOKEN_COUNT_COMPLETION: out}


def test_sibling_duplicates_count_once_also_when_late() -> None:
    """openinference parents its LLM span on the LangGraph node's CHAIN span, so our ``chat``
    span and its span for the same call are siblings; either may end after the owner."""
    mid = new_ulid()
    a, counters = assembler()
    # Call 1: both spans before the owner ends. Call 2 (same tokens, a retry): ours ends
    # late. Call 3: both spans end late, openinference's first.
    a.add(make_span(3, 2, oi_usage(10, 2), start=1_100, end=1_900), now=0.0)
    a.add(make_span(4, 1, usage(10, 2), start=1_000, end=2_000), now=0.0)
    a.add(make_span(6, 2, oi_usage(10, 2), start=3_100, end=3_900), now=0.0)
    a.add(make_span(2, 1), now=0.0)  # the node's CHAIN span
    a.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}, start=500, end=5_000), now=0.0)
    (turn,) = a.take(0.1)
    assert (turn.total_tokens, turn.calls) == (24, 2)  # call 1 once, call 2 via its OI span
    a.add(make_span(5, 1, usage(10, 2), start=3_000, end=9_000), now=0.2)  # ours, call 2
    assert a.take(0.3) == []
    a.add(make_span(8, 2, oi_usage(7, 1), start=9_100, end=9_500), now=0.4)  # call 3, OI
    a.add(make_span(7, 1, usage(7, 1), start=9_000, end=9_900), now=0.5)  # call 3, ours
    (late,) = a.take(0.6)
    assert (late.kind, late.total_tokens) == ("late", 8)
    assert counters.snapshot().rollups_ignored == 3
    # Two real calls with the same tokens are not merged: one-to-one matching.
    a2, _ = assembler()
    a2.add(make_span(3, 1, usage(5, 5), start=1_000, end=2_000), now=0.0)
    a2.add(make_span(4, 1, usage(5, 5), start=1_000, end=2_000), now=0.0)
    a2.add(make_span(5, 2, oi_usage(5, 5), start=1_100, end=1_900), now=0.0)
    a2.add(make_span(2, 1), now=0.0)
    a2.add(make_span(1, None, {c.CHATTER_MESSAGE_ID: mid}), now=0.0)
    (both,) = a2.take(0.1)
    assert both.total_tokens == 20
