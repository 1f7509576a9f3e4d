"""The database side: exactly-once application of turn records, in batches.

One transaction per batch, every step idempotent and recomputed from rows, so retries,
replays, a writer killed between any two statements and concurrent writers in several
processes all converge to exact values:

1. read the messages' conversation ids (immutable, no lock needed); records whose message
   row is not there yet are returned as waiting (or orphaned, after the time-to-live);
2. lock the affected conversations in id order (``FOR NO KEY UPDATE`` on PostgreSQL, which
   does not block the application inserting messages; SQLite: ``BEGIN IMMEDIATE``), so
   writers serialize per conversation and each one's recompute sees the others' commits;
3. insert the records into the ledger; a row already there (a replay, a duplicate) stays
   as it is, except an orphaned one, promoted when its message shows up after all;
4. set every touched message from the sum of its ledger rows (a message owned by two spans
   gets both; a replay changes nothing) and merge trace/span ids and markers into its
   ``extra_metadata`` in the same statement, keeping the application's keys;
5. recompute every touched conversation from its messages: tokens, cost, count, last time.

Six statements per batch whatever its size: on PostgreSQL the ledger rows and the message
values travel as one JSON parameter each (``json_to_recordset``), on SQLite (in-process, no
round trips) as ``executemany``. Values reach SQL only as bound parameters; identifiers come
from the validated mapping and are quoted by the dialect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    bindparam,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql.elements import TextClause

from chatter_otel import dburl
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import FIELDS, INT32_MAX, KIND_TURN, FieldSpec, TurnRecord

logger = logging.getLogger("chatter_otel.writeback")

STATUS_APPLIED: Final = "applied"
STATUS_ORPHANED: Final = "orphaned"
STATUS_REJECTED: Final = "rejected"

META_TRACE_ID: Final = "trace_id"
META_SPAN_ID: Final = "span_id"
META_COST_UNPRICED: Final = "cost_unpriced"
META_USAGE_MISSING: Final = "usage_missing"
_MARKERS: Final = (META_COST_UNPRICED, META_USAGE_MISSING)

# Key of the PostgreSQL advisory lock taken while creating the ledger (any constant works).
_DDL_LOCK_KEY: Final = 0x43_48_41_54_57_42  # "CHATWB"


class TransientError(Exception):
    """The database could not be reached or the transaction failed: retry later."""


class PermanentError(Exception):
    """The database refuses some record of the batch (constraint, range): retrying is futile."""


@dataclass
class ApplyResult:
    applied: list[TurnRecord] = field(default_factory=list)
    waiting: list[TurnRecord] = field(default_factory=list)
    """Message row not there yet: try again later."""
    orphaned: list[TurnRecord] = field(default_factory=list)
    """Message row still missing after the time-to-live: kept in the ledger as orphaned."""
    mismatched: int = 0
    """Records whose span named another conversation than the message row."""


class _Overflow(Exception):
    pass


_STATUS_AFTER: Final = "kind"
"""The ledger's own column ``status`` follows this record column."""


def _ledger_layout() -> tuple[tuple[str, str], ...]:
    """(column, json_to_recordset type) of every ledger column a record fills, in order:
    the record's fields (:data:`~.records.FIELDS`) plus ``status``."""
    layout: list[tuple[str, str]] = []
    for spec in FIELDS:
        layout.append((spec.column, spec.sql))
        if spec.column == _STATUS_AFTER:
            layout.append(("status", "varchar"))
    return tuple(layout)


_LEDGER_LAYOUT: Final = _ledger_layout()
_LEDGER_COLUMNS: Final = tuple(column for column, _ in _LEDGER_LAYOUT)
_LEDGER_TYPES: Final = dict(_LEDGER_LAYOUT)
_SQL_TYPES: Final = {"bigint": BigInteger, "integer": Integer, "boolean": Boolean}


def _column(spec: FieldSpec, mapping: WritebackMapping) -> Column[Any]:
    if spec.sql == "varchar":
        length = spec.length if isinstance(spec.length, int) else getattr(mapping, str(spec.length))
        kind: Any = String(length)
    else:
        kind = _SQL_TYPES[spec.sql]
    return Column(spec.column, kind, primary_key=spec.key, nullable=spec.nullable)


def ledger_table(mapping: WritebackMapping, metadata: MetaData | None = None) -> Table:
    """The ledger's definition: one row per applied record, keyed by trace and span id; its
    columns are the record's fields (:data:`~.records.FIELDS`) plus status and time."""
    name = mapping.ledger_table
    columns: list[Column[Any]] = []
    for spec in FIELDS:
        columns.append(_column(spec, mapping))
        if spec.column == _STATUS_AFTER:
            columns.append(Column("status", String(16), nullable=False))
    table = Table(
        name,
        metadata or MetaData(),
        *columns,
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    Index(f"{name[:48]}_message_ix", table.c.message_id)
    return table


class Store:
    """Owns the engine; used by the writer thread only."""

    def __init__(
        self,
        url: str | URL,
        mapping: WritebackMapping,
        *,
        connect_timeout: float = 5.0,
        busy_timeout: float = 30.0,
    ) -> None:
        self.url = dburl.sync_url(url)
        self.mapping = mapping
        self.backend = self.url.get_backend_name()
        self.postgres = self.backend == "postgresql"
        self.engine = self._engine(connect_timeout, busy_timeout)
        self.schema_ready = False
        self.fault: Callable[[str], None] | None = None
        """Test hook, called between statements with the name of the next step."""
        self._ledger = ledger_table(mapping)
        self._sql = _Statements(self.engine, mapping, postgres=self.postgres)

    def _engine(self, connect_timeout: float, busy_timeout: float) -> Engine:
        if self.postgres:
            return create_engine(
                self.url,
                pool_size=1,
                max_overflow=1,
                pool_recycle=1800,
                connect_args={
                    "connect_timeout": max(1, round(connect_timeout)),
                    "application_name": "chatter-otel-writeback",
                    # A peer that vanishes without a reset must not stall the writer for
                    # the OS default of two hours.
                    "keepalives": 1,
                    "keepalives_idle": 30,
                    "keepalives_interval": 10,
                    "keepalives_count": 3,
                    "tcp_user_timeout": 60_000,
                },
            )
        engine = create_engine(
            self.url, connect_args={"timeout": busy_timeout, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            # Take the write lock up front: concurrent writers queue (busy timeout) instead
            # of failing to upgrade a read lock half-way through a batch.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def dispose(self) -> None:
        self.engine.dispose()

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    # --- schema ------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Creates the ledger if missing and checks the mapped columns exist."""
        try:
            with self.engine.begin() as conn:
                if self.postgres:
                    # CREATE TABLE IF NOT EXISTS races between processes on PostgreSQL.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
                self._ledger.create(conn, checkfirst=True)
                conn.execute(self._sql.probe_messages)
                conn.execute(self._sql.probe_conversations)
        except Exception as exc:
            raise TransientError(str(exc).splitlines()[0]) from exc
        self.schema_ready = True

    # --- writing -----------------------------------------------------------------------

    def apply(self, records: Sequence[TurnRecord], now_ns: int, ttl_ns: int) -> ApplyResult:
        """Applies a batch in one transaction. Raises TransientError or PermanentError."""
        try:
            with self.engine.begin() as conn:
                result = self._apply(conn, _unique(records), now_ns, ttl_ns)
                self._step("commit")
                return result
        except (_Overflow, sa_exc.IntegrityError, sa_exc.DataError) as exc:
            raise PermanentError(_first_line(exc)) from exc
        except Exception as exc:
            # Connection lost, deadlock, driver or network errors, and anything unforeseen:
            # the batch is kept and retried, never dropped.
            raise TransientError(_first_line(exc)) from exc

    def mark(self, records: Sequence[TurnRecord], status: str) -> None:
        """Records the ledger rows of records that will not be applied (best effort)."""
        if not records:
            return
        try:
            with self.engine.begin() as conn:
                self._insert(
                    conn, self._sql.insert_noop, [_ledger_params(r, None, status) for r in records]
                )
        except Exception as exc:
            raise TransientError(_first_line(exc)) from exc

    def _apply(
        self, conn: Connection, records: list[TurnRecord], now_ns: int, ttl_ns: int
    ) -> ApplyResult:
        sql = self._sql
        result = ApplyResult()
        self._step("messages")
        message_ids = sorted({r.message_id for r in records})
        rows = conn.execute(sql.select_messages, {"ids": message_ids}).all()
        conversation_of: dict[str, str] = {row[0]: row[1] for row in rows}
        for record in records:
            if record.message_id in conversation_of:
                result.applied.append(record)
            elif record.end_ns + ttl_ns <= now_ns:
                result.orphaned.append(record)
            else:
                result.waiting.append(record)
        if result.applied:
            conversation_ids = sorted({conversation_of[r.message_id] for r in result.applied})
            result.mismatched = sum(
                1
                for r in result.applied
                if r.conversation_id is not None
                and r.conversation_id != conversation_of[r.message_id]
            )
            if sql.lock_conversations is not None:
                self._step("lock")
                conn.execute(sql.lock_conversations, {"ids": conversation_ids})
            self._step("ledger")
            self._insert(
                conn,
                sql.insert_applied,
                [
                    _ledger_params(r, conversation_of[r.message_id], STATUS_APPLIED)
                    for r in result.applied
                ],
            )
            self._step("sums")
            applied_ids = sorted({r.message_id for r in result.applied})
            ledger_rows = conn.execute(
                sql.select_ledger, {"ids": applied_ids, "status": STATUS_APPLIED}
            ).all()
            updates = [
                self._message_params(message_id, group)
                for message_id, group in _group(ledger_rows).items()
            ]
            self._step("messages_update")
            if updates and self.postgres:
                drop_1, drop_2 = _MARKERS
                conn.execute(
                    sql.update_messages,
                    {"rows": json.dumps(updates), "drop_1": drop_1, "drop_2": drop_2},
                )
            elif updates:
                conn.execute(sql.update_messages, updates)
            self._step("conversations_update")
            conn.execute(sql.update_conversations, {"ids": conversation_ids})
        if result.orphaned:
            self._step("orphans")
            self._insert(
                conn,
                sql.insert_noop,
                [_ledger_params(r, None, STATUS_ORPHANED) for r in result.orphaned],
            )
        return result

    def _insert(self, conn: Connection, statement: TextClause, rows: list[dict[str, Any]]) -> None:
        if self.postgres:
            conn.execute(statement, {"rows": json.dumps(rows)})
        else:
            conn.execute(statement, rows)

    def _message_params(self, message_id: str, rows: list[Any]) -> dict[str, Any]:
        def known_sum(index: int) -> int | None:
            values = [row[index] for row in rows if row[index] is not None]
            return int(sum(values)) if values else None

        prompt, completion, total = known_sum(4), known_sum(5), known_sum(6)
        for value in (prompt, completion, total):
            if value is not None and value > INT32_MAX:
                raise _Overflow(f"message {message_id}: token sum {value} exceeds the column")
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
        if not self.postgres:
            patch = {**meta, **{k: None for k in _MARKERS if k not in meta}}
            params["meta_patch"] = json.dumps(patch)
        return params


class _Statements:
    """Every SQL text, built once from the mapping."""

    def __init__(self, engine: Engine, m: WritebackMapping, *, postgres: bool) -> None:
        quote = engine.dialect.identifier_preparer.quote
        q = {
            name: quote(value)
            for name in m.__dataclass_fields__
            if isinstance(value := getattr(m, name), str)
        }
        ledger = quote(m.ledger_table)
        messages, conversations = q["messages_table"], q["conversations_table"]
        mid, mconv = q["message_id"], q["message_conversation_id"]
        cid = q["conversation_id"]

        def ids_in(column: str) -> str:
            return f"{column} = ANY(:ids)" if postgres else f"{column} IN :ids"

        def prepared(sql: str) -> TextClause:
            clause = text(sql)
            if not postgres and ":ids" in sql:
                clause = clause.bindparams(bindparam("ids", expanding=True))
            return clause

        self.probe_messages = text(
            f"SELECT {mid}, {mconv}, {q['message_prompt_tokens']}, "
            f"{q['message_completion_tokens']}, {q['message_total_tokens']}, "
            f"{q['message_cost']}, {q['message_provider']}, {q['message_model']}, "
            f"{q['message_finish_reason']}, {q['message_response_time_ms']}, "
            f"{q['message_extra_metadata']}, {q['message_created_at']} "
            f"FROM {messages} WHERE 1 = 0"
        )
        self.probe_conversations = text(
            f"SELECT {cid}, {q['conversation_total_tokens']}, {q['conversation_total_cost']}, "
            f"{q['conversation_message_count']}, {q['conversation_last_message_at']} "
            f"FROM {conversations} WHERE 1 = 0"
        )
        self.select_messages = prepared(
            f"SELECT {mid}, {mconv} FROM {messages} WHERE {ids_in(mid)}"
        )
        self.lock_conversations: TextClause | None = (
            prepared(
                f"SELECT {cid} FROM {conversations} WHERE {ids_in(cid)} "
                f"ORDER BY {cid} FOR NO KEY UPDATE"
            )
            if postgres
            else None
        )
        columns = ", ".join(_LEDGER_COLUMNS)
        if postgres:
            # One statement per batch: the rows travel as one JSON document (json.dumps and
            # the server's JSON parser are both far cheaper than per-row parameters).
            record = ", ".join(f"{c} {_LEDGER_TYPES[c]}" for c in _LEDGER_COLUMNS)
            source = f"SELECT {columns} FROM json_to_recordset(CAST(:rows AS json)) AS v({record})"
        else:
            source = "VALUES (" + ", ".join(f":{c}" for c in _LEDGER_COLUMNS) + ")"
        insert = f"INSERT INTO {ledger} ({columns}) {source} ON CONFLICT (trace_id, span_id) "
        self.insert_applied = text(
            insert + "DO UPDATE SET status = excluded.status, applied_at = CURRENT_TIMESTAMP "
            f"WHERE {ledger}.status = :promotable"
        ).bindparams(promotable=STATUS_ORPHANED)
        self.insert_noop = text(insert + "DO NOTHING")
        self.select_ledger = prepared(
            "SELECT message_id, trace_id, span_id, kind, prompt_tokens, completion_tokens, "
            "total_tokens, cost, cost_unpriced, usage_missing, model, provider, finish_reason, "
            f"last_call_end_ns, response_time_ms, span_end_ns FROM {ledger} "
            f"WHERE {ids_in('message_id')} AND status = :status"
        )
        self.update_messages = text(
            _update_messages_pg(q) if postgres else _update_messages_sqlite(q)
        )
        self.update_conversations = prepared(
            f"UPDATE {conversations} AS c SET "
            f"{q['conversation_total_tokens']} = a.tt, "
            f"{q['conversation_total_cost']} = a.tc, "
            f"{q['conversation_message_count']} = a.n, "
            f"{q['conversation_last_message_at']} = a.last "
            f"FROM (SELECT {mconv} AS cid, COALESCE(SUM({q['message_total_tokens']}), 0) AS tt, "
            f"COALESCE(SUM({q['message_cost']}), 0) AS tc, COUNT(*) AS n, "
            f"MAX({q['message_created_at']}) AS last FROM {messages} "
            f"WHERE {ids_in(mconv)} GROUP BY {mconv}) AS a "
            f"WHERE c.{cid} = a.cid"
        )


# (parameter, message column in the mapping, SQL type of the array on PostgreSQL)
_MESSAGE_VALUES: Final = (
    ("prompt_tokens", "message_prompt_tokens", "bigint"),
    ("completion_tokens", "message_completion_tokens", "bigint"),
    ("total_tokens", "message_total_tokens", "bigint"),
    ("cost", "message_cost", "float8"),
    ("model", "message_model", "varchar"),
    ("provider", "message_provider", "varchar"),
    ("finish_reason", "message_finish_reason", "varchar"),
    ("response_time_ms", "message_response_time_ms", "integer"),
)
# What the spans do not say, the application may have set: these keep the row's value.
_KEEP_IF_NULL: Final = frozenset({"model", "provider", "finish_reason", "response_time_ms"})


def _update_messages_pg(q: dict[str, str]) -> str:
    """All messages of a batch in one UPDATE ... FROM json_to_recordset; json merged atomically.

    Every reference is qualified (``m.`` the row, ``v.`` the new values), so mapped column
    names can never clash with the record's field names.
    """
    meta = f"m.{q['message_extra_metadata']}"
    sets = []
    for param, column, _ in _MESSAGE_VALUES:
        value = f"v.{param}"
        if param in _KEEP_IF_NULL:
            value = f"COALESCE({value}, m.{q[column]})"
        sets.append(f"{q[column]} = {value}")
    sets.append(
        f"{q['message_extra_metadata']} = CASE "
        f"WHEN {meta} IS NULL OR json_typeof({meta}) = 'null' THEN CAST(v.meta_set AS json) "
        f"WHEN json_typeof({meta}) = 'object' THEN CAST("
        f"(CAST({meta} AS jsonb) - CAST(:drop_1 AS text) - CAST(:drop_2 AS text)) "
        f"|| CAST(v.meta_set AS jsonb) AS json) "
        f"ELSE {meta} END"
    )
    record = ", ".join(
        ["id varchar"]
        + [f"{param} {sql_type}" for param, _, sql_type in _MESSAGE_VALUES]
        + ["meta_set text"]
    )
    return (
        f"UPDATE {q['messages_table']} AS m SET {', '.join(sets)} "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS v({record}) "
        f"WHERE m.{q['message_id']} = v.id"
    )


def _update_messages_sqlite(q: dict[str, str]) -> str:
    """One message per parameter set (executemany: SQLite is in-process, no round trips)."""
    meta = q["message_extra_metadata"]
    sets = []
    for param, column, _ in _MESSAGE_VALUES:
        value = f":{param}"
        if param in _KEEP_IF_NULL:
            value = f"COALESCE({value}, {q[column]})"
        sets.append(f"{q[column]} = {value}")
    sets.append(
        f"{meta} = CASE WHEN {meta} IS NULL THEN json(:meta_set) "
        f"WHEN NOT json_valid({meta}) THEN {meta} "
        f"WHEN json_type({meta}) = 'null' THEN json(:meta_set) "
        f"WHEN json_type({meta}) = 'object' THEN json_patch({meta}, :meta_patch) "
        f"ELSE {meta} END"
    )
    return f"UPDATE {q['messages_table']} SET {', '.join(sets)} WHERE {q['message_id']} = :id"


def _unique(records: Sequence[TurnRecord]) -> list[TurnRecord]:
    seen: set[tuple[str, str]] = set()
    out: list[TurnRecord] = []
    for record in records:
        key = (record.trace_id, record.span_id)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def _group(rows: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups


def _ledger_params(record: TurnRecord, conversation_id: str | None, status: str) -> dict[str, Any]:
    params: dict[str, Any] = {"status": status}
    for spec in FIELDS:
        value = getattr(record, spec.name)
        params[spec.column] = None if value is None else spec.encode(value)
    params["conversation_id"] = conversation_id or record.conversation_id
    return params


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text_[0] if text_ else ''}"[:500]
