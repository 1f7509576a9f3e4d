"""Every SQL text of the store, built once from the mapping (see :mod:`.store` for the steps).

Values reach SQL only as bound parameters; identifiers come from the validated mapping and
are quoted by the dialect. On PostgreSQL the rows of a batch travel as one JSON parameter
(``json_to_recordset``: one statement per step whatever the batch size); on SQLite
(in-process, no round trips) as ``executemany`` parameter sets.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import TextClause

from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import FIELDS

STATUS_APPLIED: Final = "applied"
STATUS_ORPHANED: Final = "orphaned"
STATUS_REJECTED: Final = "rejected"

STATUS_AFTER: Final = "kind"
"""The ledger's own column ``status`` follows this record column."""


def _ledger_types() -> dict[str, str]:
    types: dict[str, str] = {}
    for spec in FIELDS:
        if spec.column is None:
            continue
        types[spec.column] = spec.sql
        if spec.column == STATUS_AFTER:
            types["status"] = "varchar"
    return types


LEDGER_TYPES: Final = _ledger_types()
"""The ledger columns a record fills, in order, with their SQL types (for
``json_to_recordset``): the ledger columns of :data:`~.records.FIELDS` plus ``status``."""
LEDGER_COLUMNS: Final = tuple(LEDGER_TYPES)

# (parameter, message column in the mapping, SQL type on PostgreSQL)
MESSAGE_VALUES: Final = (
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

DRIFT_TOLERANCE: Final = 1e-9
"""Relative difference of a float cost total still counted as equal (summing order)."""


class Statements:
    """The store's SQL for one mapping, dialect and ledger location."""

    def __init__(
        self, engine: Engine, m: WritebackMapping, *, postgres: bool, ledger_schema: str | None
    ) -> None:
        preparer = engine.dialect.identifier_preparer
        quote = preparer.quote
        q = {
            name: quote(value)
            for name in m.__dataclass_fields__
            if isinstance(value := getattr(m, name), str)
        }
        self.q = q
        self.postgres = postgres
        ledger = quote(m.ledger_table)
        if ledger_schema is not None:
            ledger = f"{preparer.quote_schema(ledger_schema)}.{ledger}"
        self.ledger = ledger
        messages, conversations = q["messages_table"], q["conversations_table"]
        mid, mconv = q["message_id"], q["message_conversation_id"]
        cid = q["conversation_id"]

        self.probe_messages = text(
            f"SELECT {mid}, {mconv}, {q['message_prompt_tokens']}, "
            f"{q['message_completion_tokens']}, {q['message_total_tokens']}, "
            f"{q['message_cost']}, {q['message_provider']}, {q['message_model']}, "
            f"{q['message_finish_reason']}, {q['message_response_time_ms']}, "
            f"{q['message_extra_metadata']}, {q['message_created_at']} "
            f"FROM {messages} WHERE 1 = 0"
        )
        self.probe_conversations = text(
            f"SELECT {cid}, {q['conversation_user_id']}, {q['conversation_total_tokens']}, "
            f"{q['conversation_total_cost']}, "
            f"{q['conversation_message_count']}, {q['conversation_last_message_at']} "
            f"FROM {conversations} WHERE 1 = 0"
        )
        # Conversation ids are immutable, and so is a conversation's user: no lock needed.
        self.select_messages = self.prepared(
            f"SELECT m.{mid}, m.{mconv}, c.{q['conversation_user_id']} FROM {messages} AS m "
            f"JOIN {conversations} AS c ON c.{cid} = m.{mconv} WHERE {self.ids_in('m.' + mid)}"
        )
        self.lock_conversations: TextClause | None = (
            self.prepared(
                f"SELECT {cid} FROM {conversations} WHERE {self.ids_in(cid)} "
                f"ORDER BY {cid} FOR NO KEY UPDATE"
            )
            if postgres
            else None
        )
        columns = ", ".join(LEDGER_COLUMNS)
        if postgres:
            record = ", ".join(f"{c} {LEDGER_TYPES[c]}" for c in LEDGER_COLUMNS)
            source = f"SELECT {columns} FROM json_to_recordset(CAST(:rows AS json)) AS v({record})"
        else:
            source = "VALUES (" + ", ".join(f":{c}" for c in LEDGER_COLUMNS) + ")"
        insert = f"INSERT INTO {ledger} ({columns}) {source} ON CONFLICT (trace_id, span_id) "
        self.insert_applied = text(
            insert + "DO UPDATE SET status = excluded.status, applied_at = CURRENT_TIMESTAMP "
            f"WHERE {ledger}.status = :promotable"
        ).bindparams(promotable=STATUS_ORPHANED)
        self.insert_noop = text(insert + "DO NOTHING")
        self.select_ledger = self.prepared(
            "SELECT message_id, trace_id, span_id, kind, prompt_tokens, completion_tokens, "
            "total_tokens, cost, cost_unpriced, usage_missing, model, provider, finish_reason, "
            f"last_call_end_ns, response_time_ms, span_end_ns FROM {ledger} "
            f"WHERE {self.ids_in('message_id')} AND status = :status"
        )
        self.update_messages = text(_update_messages_pg(q) if postgres else _update_messages_sql(q))
        self.merge_metadata = text(_merge_metadata_pg(q) if postgres else _merge_metadata_sql(q))
        # Each conversation's totals from its messages (none: zero, and no last time).
        self.aggregates = (
            f"(SELECT c2.{cid} AS cid, COALESCE(SUM(m.{q['message_total_tokens']}), 0) AS tt, "
            f"COALESCE(SUM(m.{q['message_cost']}), 0) AS tc, COUNT(m.{mid}) AS n, "
            f"MAX(m.{q['message_created_at']}) AS last FROM {conversations} AS c2 "
            f"LEFT JOIN {messages} AS m ON m.{mconv} = c2.{cid} "
            f"WHERE {self.ids_in('c2.' + cid)} GROUP BY c2.{cid}) AS a"
        )
        self.update_conversations = self.prepared(
            f"UPDATE {conversations} AS c SET "
            f"{q['conversation_total_tokens']} = a.tt, "
            f"{q['conversation_total_cost']} = a.tc, "
            f"{q['conversation_message_count']} = a.n, "
            f"{q['conversation_last_message_at']} = a.last "
            f"FROM {self.aggregates} WHERE c.{cid} = a.cid"
        )
        self.select_drift = self.prepared(
            f"SELECT c.{cid}, c.{q['conversation_total_tokens']}, a.tt, "
            f"c.{q['conversation_total_cost']}, a.tc, c.{q['conversation_message_count']}, a.n "
            f"FROM {conversations} AS c JOIN {self.aggregates} ON c.{cid} = a.cid "
            f"WHERE {self.differs('c', 'a')} ORDER BY c.{cid}"
        )
        self.count_conversations = text(f"SELECT COUNT(*) FROM {conversations}")
        self.page_conversations = text(
            f"SELECT {cid} FROM {conversations} WHERE {cid} > :after ORDER BY {cid} LIMIT :n"
        )

    def ids_in(self, column: str) -> str:
        return f"{column} = ANY(:ids)" if self.postgres else f"{column} IN :ids"

    def prepared(self, sql: str) -> TextClause:
        clause = text(sql)
        if not self.postgres and ":ids" in sql:
            clause = clause.bindparams(bindparam("ids", expanding=True))
        return clause

    def differs(self, c: str, a: str) -> str:
        """SQL condition: conversation ``c``'s stored totals are not its messages' sums ``a``.

        Tokens, cost (within :data:`DRIFT_TOLERANCE`) and message count; not the last
        message time, which Chatter itself never sets."""
        q = self.q
        larger = "GREATEST" if self.postgres else "MAX"
        return (
            f"(COALESCE({c}.{q['conversation_total_tokens']}, -1) <> {a}.tt "
            f"OR COALESCE({c}.{q['conversation_message_count']}, -1) <> {a}.n "
            f"OR {c}.{q['conversation_total_cost']} IS NULL "
            f"OR ABS({c}.{q['conversation_total_cost']} - {a}.tc) > "
            f"{DRIFT_TOLERANCE} * {larger}(1.0, ABS({a}.tc)))"
        )


def _update_messages_pg(q: dict[str, str]) -> str:
    """All messages of a batch in one UPDATE ... FROM json_to_recordset.

    Every reference is qualified (``m.`` the row, ``v.`` the new values), so mapped column
    names can never clash with the record's field names.
    """
    sets = []
    for param, column, _ in MESSAGE_VALUES:
        value = f"v.{param}"
        if param in _KEEP_IF_NULL:
            value = f"COALESCE({value}, m.{q[column]})"
        sets.append(f"{q[column]} = {value}")
    record = ", ".join(
        ["id varchar"] + [f"{param} {sql_type}" for param, _, sql_type in MESSAGE_VALUES]
    )
    return (
        f"UPDATE {q['messages_table']} AS m SET {', '.join(sets)} "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS v({record}) "
        f"WHERE m.{q['message_id']} = v.id"
    )


def _update_messages_sql(q: dict[str, str]) -> str:
    """One message per parameter set (SQLite)."""
    sets = []
    for param, column, _ in MESSAGE_VALUES:
        value = f":{param}"
        if param in _KEEP_IF_NULL:
            value = f"COALESCE({value}, {q[column]})"
        sets.append(f"{q[column]} = {value}")
    return f"UPDATE {q['messages_table']} SET {', '.join(sets)} WHERE {q['message_id']} = :id"


def _merge_metadata_pg(q: dict[str, str]) -> str:
    """Trace/span ids and markers merged into the application's JSON object, its keys kept.

    A separate statement from the usage columns: a value PostgreSQL cannot convert to
    ``jsonb`` (``\\u0000`` is legal in ``json``) fails only this merge, never the usage.
    """
    meta = f"m.{q['message_extra_metadata']}"
    return (
        f"UPDATE {q['messages_table']} AS m SET {q['message_extra_metadata']} = CASE "
        f"WHEN {meta} IS NULL OR json_typeof({meta}) = 'null' THEN CAST(v.meta_set AS json) "
        f"WHEN json_typeof({meta}) = 'object' THEN CAST("
        f"(CAST({meta} AS jsonb) - CAST(:drop_1 AS text) - CAST(:drop_2 AS text)) "
        f"|| CAST(v.meta_set AS jsonb) AS json) "
        f"ELSE {meta} END "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS v(id varchar, meta_set text) "
        f"WHERE m.{q['message_id']} = v.id"
    )


def _merge_metadata_sql(q: dict[str, str]) -> str:
    meta = q["message_extra_metadata"]
    return (
        f"UPDATE {q['messages_table']} SET {meta} = CASE "
        f"WHEN {meta} IS NULL THEN json(:meta_set) "
        f"WHEN NOT json_valid({meta}) THEN {meta} "
        f"WHEN json_type({meta}) = 'null' THEN json(:meta_set) "
        f"WHEN json_type({meta}) = 'object' THEN json_patch({meta}, :meta_patch) "
        f"ELSE {meta} END WHERE {q['message_id']} = :id"
    )
