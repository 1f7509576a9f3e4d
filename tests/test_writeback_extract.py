"""Write-back pieces without a database: validation, the mapping, records and the spool."""

from __future__ import annotations

import json
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from chatter_otel.config import ConfigError
from chatter_otel.service.models import new_ulid
from chatter_otel.usage import MAX_TOKENS
from chatter_otel.writeback import TurnRecord, WritebackMapping, validation
from chatter_otel.writeback.records import INT32_MAX, is_ulid
from chatter_otel.writeback.spool import Spool
from tests.test_writeback_support import sample_record

LIMITS = (100, 50, 50)

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
    validation.R_TOKENS_TYPE,
    validation.R_TOKENS_NEGATIVE,
    validation.R_TOKENS_TOO_LARGE,
    validation.R_TOKENS_NOT_FINITE,
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
        assert validation.token_count(value) == int(value)
        assert type(validation.token_count(value)) is int
    else:
        with pytest.raises(validation.Invalid) as info:
            validation.token_count(value)
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
        assert validation.cost_value(value) == Decimal(repr(value))
    else:
        with pytest.raises(validation.Invalid):
            validation.cost_value(value)


@given(st.one_of(st.text(), anything), st.integers(min_value=1, max_value=120))
def test_text_is_clean_and_fits_its_column(value: Any, limit: int) -> None:
    reasons: list[str] = []
    text = validation.text_value(value, limit, reasons.append)
    if text is not None:
        assert 0 < len(text) <= limit
        text.encode("utf-8")
        assert all(ch.isprintable() or ch == " " or ch.isspace() for ch in text)
        assert not any(ch in text for ch in "\x00\n\r\t\x1b")
    assert reasons in ([], [validation.R_TEXT])


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
    return sample_record(new_ulid())


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
