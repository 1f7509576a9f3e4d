"""The write-ahead journal: what it keeps on disk, and when it lets go of it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from chatter_otel.writeback.journal import Journal
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import FIELDS, TurnRecord
from chatter_otel.writeback.spool import Spool
from chatter_otel.writeback.spool_dir import parse_header
from chatter_otel.writeback.statements import LEDGER_TYPES
from chatter_otel.writeback.store import ledger_table
from tests.test_writeback_support import sample_record

LIMITS = (100, 100, 100)
RECORD = sample_record()


def _record(index: int) -> TurnRecord:
    return replace(RECORD, span_id=f"{index:016x}")


def _on_disk(directory: Path) -> list[TurnRecord]:
    return [
        TurnRecord.from_json(line, max_lengths=LIMITS)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if parse_header(line.encode()) is None  # the line binding the file to its database
    ]


def _journal(directory: Path) -> Journal:
    return Journal(Spool(directory, seal_after=float("inf")), rotate_after=0.0)


def test_records_are_on_disk_until_settled(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    first, second = _record(1), _record(2)
    assert journal.write([first])
    assert journal.write([second])  # the first file is sealed, the second one started
    assert _on_disk(tmp_path) == [first, second]
    journal.settle([first])
    assert _on_disk(tmp_path) == [second]
    journal.settle([second])
    assert _on_disk(tmp_path) == []
    assert journal.unsettled == 0


def test_a_file_waits_for_its_last_record(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    records = [_record(i) for i in range(3)]
    journal.write(records)
    journal.write([_record(9)])
    journal.settle(records[:2])
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert journal.unsettled == 2


def test_a_record_written_again_moves_to_the_newer_file(tmp_path: Path) -> None:
    """A record waiting for its message row is appended again, so its old file can go."""
    journal = _journal(tmp_path)
    waiting = _record(1)
    journal.write([waiting])
    journal.write([waiting])
    assert _on_disk(tmp_path) == [waiting]
    assert journal.unsettled == 1


def test_close_keeps_unsettled_records_for_the_next_start(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write([_record(1)])
    journal.close(settled_all=False)
    assert _on_disk(tmp_path) == [_record(1)]


def test_close_deletes_everything_once_settled(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write([_record(1)])
    journal.write([_record(2)])
    journal.close(settled_all=True)
    assert list(tmp_path.iterdir()) == []
    assert journal.write([_record(3)]) is False  # a writer stuck past shutdown
    assert list(tmp_path.iterdir()) == []


def test_the_record_layout_is_defined_once() -> None:
    """Every field of a record is in the layout once; the ledger's columns are the layout's
    (all but ``user_id``, checked on write only) plus its own two; the SQL types of a
    ledger row are the layout's; the spool's JSON keys are the layout's names (an optional
    field only when set)."""
    assert sorted(f.name for f in FIELDS) == sorted(TurnRecord.__dataclass_fields__)
    table = ledger_table(WritebackMapping())
    kept = [f.column for f in FIELDS if f.column is not None]
    assert [f.name for f in FIELDS if f.column is None] == ["user_id"]
    assert [col.name for col in table.columns] == [*kept[:3], "status", *kept[3:], "applied_at"]
    assert list(LEDGER_TYPES) == [*kept[:3], "status", *kept[3:]]
    assert [LEDGER_TYPES[f.column] for f in FIELDS if f.column is not None] == [
        f.sql for f in FIELDS if f.column is not None
    ]
    assert list(json.loads(RECORD.to_json())) == ["v", *[f.name for f in FIELDS if not f.optional]]
    with_user = replace(RECORD, user_id="01J00000000000000000000001")
    assert list(json.loads(with_user.to_json())) == ["v", *[f.name for f in FIELDS]]
    assert TurnRecord.from_json(with_user.to_json(), max_lengths=LIMITS) == with_user
    assert [col.name for col in table.primary_key] == ["trace_id", "span_id"]
    nullable = {col.name for col in table.columns if col.nullable}
    assert nullable == {
        "conversation_id",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "model",
        "provider",
        "finish_reason",
        "last_call_end_ns",
        "response_time_ms",
    }
