"""The ledger's layout (one row per applied record) and what a message gets from its rows."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.engine import URL, Connection

from chatter_otel.writeback.dberrors import is_refusal
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import FIELDS, INT32_MAX, KIND_TURN, FieldSpec, TurnRecord
from chatter_otel.writeback.statements import STATUS_AFTER

META_TRACE_ID: Final = "trace_id"
META_SPAN_ID: Final = "span_id"
META_COST_UNPRICED: Final = "cost_unpriced"
META_USAGE_MISSING: Final = "usage_missing"
MARKERS: Final = (META_COST_UNPRICED, META_USAGE_MISSING)

logger = logging.getLogger("chatter_otel.writeback")


_SQL_TYPES: Final = {"bigint": BigInteger, "integer": Integer, "boolean": Boolean}


def _column(spec: FieldSpec, mapping: WritebackMapping) -> Column[Any]:
    if spec.sql == "varchar":
        length = spec.length if isinstance(spec.length, int) else getattr(mapping, str(spec.length))
        kind: Any = String(length)
    else:
        kind = _SQL_TYPES[spec.sql]
    return Column(spec.column, kind, primary_key=spec.key, nullable=spec.nullable)


class TokenOverflow(Exception):
    """A message's token sum exceeds its integer column: the record is refused."""


def ledger_table(
    mapping: WritebackMapping, metadata: MetaData | None = None, *, schema: str | None = None
) -> Table:
    """The ledger's definition: one row per applied record, keyed by trace and span id.

    On PostgreSQL it lives in its own schema (``mapping.ledger_schema``), so the
    application's migrations (Alembic autogenerate compares the default schema only) never
    see it. Its columns are the record's fields (:data:`~.records.FIELDS`) plus status and
    time."""
    name = mapping.ledger_table
    columns: list[Column[Any]] = []
    for spec in FIELDS:
        if spec.column is None:
            continue
        columns.append(_column(spec, mapping))
        if spec.column == STATUS_AFTER:
            columns.append(Column("status", String(16), nullable=False))
    table = Table(
        name,
        metadata or MetaData(),
        *columns,
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )
    Index(f"{name[:48]}_message_ix", table.c.message_id)
    return table


def message_params(message_id: str, rows: list[Any], *, postgres: bool) -> dict[str, Any]:
    """A message's new values from all its applied ledger rows (as ``select_ledger`` reads
    them), and the metadata to merge."""

    def known_sum(index: int) -> int | None:
        values = [row[index] for row in rows if row[index] is not None]
        return int(sum(values)) if values else None

    prompt, completion, total = known_sum(4), known_sum(5), known_sum(6)
    for value in (prompt, completion, total):
        if value is not None and value > INT32_MAX:
            raise TokenOverflow(f"message {message_id}: token sum {value} exceeds the column")
    unpriced = any(bool(row[8]) for row in rows)
    costs = [Decimal(row[7]) for row in rows if row[7] is not None]
    cost = None if unpriced or not costs else float(sum(costs, Decimal(0)))
    usage_missing = prompt is None and completion is None and total is None
    newest_first = sorted(rows, key=lambda row: (row[13] or -1, row[2]), reverse=True)

    def latest(index: int) -> str | None:
        for row in newest_first:
            if row[index] is not None:
                return str(row[index])
        return None

    times = [row[14] for row in rows if row[14] is not None]
    owners = [row for row in rows if row[3] == KIND_TURN] or rows
    primary = max(owners, key=lambda row: (row[15], row[2]))
    meta: dict[str, Any] = {META_TRACE_ID: primary[1], META_SPAN_ID: primary[2]}
    if unpriced:
        meta[META_COST_UNPRICED] = True
    if usage_missing:
        meta[META_USAGE_MISSING] = True
    params: dict[str, Any] = {
        "id": message_id,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cost": cost,
        "model": latest(10),
        "provider": latest(11),
        "finish_reason": latest(12),
        "response_time_ms": max(times) if times else None,
        "meta_set": json.dumps(meta),
    }
    if not postgres:
        patch = {**meta, **{k: None for k in MARKERS if k not in meta}}
        params["meta_patch"] = json.dumps(patch)
    return params


def unique(records: Sequence[TurnRecord]) -> list[TurnRecord]:
    seen: set[tuple[str, str]] = set()
    out: list[TurnRecord] = []
    for record in records:
        key = (record.trace_id, record.span_id)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def group(rows: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups


def ledger_params(record: TurnRecord, conversation_id: str | None, status: str) -> dict[str, Any]:
    params: dict[str, Any] = {"status": status}
    for spec in FIELDS:
        if spec.column is None:
            continue
        value = getattr(record, spec.name)
        params[spec.column] = None if value is None else spec.encode(value)
    params["conversation_id"] = conversation_id or record.conversation_id
    return params


def move_into_schema(conn: Connection, table: str, schema: str) -> None:
    """Creates the ledger's PostgreSQL schema; moves a ledger created by an earlier version
    (in the default schema) into it, with its index and rows."""
    preparer = conn.dialect.identifier_preparer
    target = preparer.quote_schema(schema)
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {target}"))
    name = preparer.quote(table)
    old = conn.execute(
        text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(:old) AND n.nspname <> :schema"
        ),
        {"old": name, "schema": schema},
    ).scalar()
    new = conn.execute(text("SELECT to_regclass(:new)"), {"new": f"{target}.{name}"}).scalar()
    if old is not None and new is None:
        conn.execute(text(f"ALTER TABLE {preparer.quote_schema(old)}.{name} SET SCHEMA {target}"))
        logger.info("write-back: ledger moved from schema %s to %s", old, schema)


def database_identity(conn: Connection, url: URL) -> str:
    """Which database this is, so spooled records are applied only where they belong.

    PostgreSQL: the cluster's ``system_identifier`` (a copy restored elsewhere has another)
    with the database's oid and name (a copy in the same cluster has another oid). SQLite:
    the database file's real path."""
    if conn.dialect.name != "postgresql":
        return f"sqlite:{os.path.realpath(url.database or ':memory:')}"
    system: object = "?"
    try:
        with conn.begin_nested():
            system = conn.execute(
                text("SELECT system_identifier FROM pg_control_system()")
            ).scalar()
    except Exception as exc:  # refused by a managed service: oid and name remain
        if not is_refusal(exc):
            raise
    row = conn.execute(
        text("SELECT oid, datname FROM pg_database WHERE datname = current_database()")
    ).one()
    return f"postgresql:{system}:{row[0]}:{row[1]}"
