"""The database side: exactly-once application of turn records, in batches.

One transaction per batch, every step idempotent and recomputed from rows, so retries,
replays, a writer killed between any two statements and concurrent writers in several
processes all converge to exact values:

1. read the messages' conversation ids (immutable, no lock needed); records whose message
   row is not there yet are returned as waiting (or orphaned, after the time-to-live);
   records whose span named another conversation than the row's are rejected;
2. lock the affected conversations in id order (``FOR NO KEY UPDATE`` on PostgreSQL, which
   does not block the application inserting messages; SQLite: ``BEGIN IMMEDIATE``), so
   writers serialize per conversation and each one's recompute sees the others' commits;
   then note the conversations whose stored totals already differ from their messages
   (drift: an application that still writes them, rows edited by hand);
3. insert the records into the ledger; a row already there (a replay, a duplicate) stays
   as it is, except an orphaned one, promoted when its message shows up after all;
4. set every touched message from the sum of its ledger rows (a message owned by two spans
   gets both; a replay changes nothing), then merge trace/span ids and markers into its
   ``extra_metadata`` (a separate step: metadata the database cannot merge is counted and
   left as it is, the usage columns are written regardless);
5. recompute every touched conversation from its messages: tokens, cost, count, last time
   (a conversation whose totals its columns cannot hold is counted and left as it is; its
   messages keep their usage).

Steps 4 (metadata) and 5 run inside a savepoint, and only fall back to one statement per
row when the database refuses the batch's statement. Any other refusal raises
:class:`PermanentError` (the writer bisects the batch down to the record); an outage raises
:class:`TransientError` (see :mod:`.connection`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.sql.elements import TextClause

from chatter_otel import dburl
from chatter_otel.writeback.connection import make_engine, transaction
from chatter_otel.writeback.dberrors import (
    R_AGGREGATE_OUT_OF_RANGE,
    R_AGGREGATE_REFUSED,
    R_CONVERSATION_MISMATCH,
    R_METADATA_UNMERGEABLE,
    R_USER_MISMATCH,
    PermanentError,
    TransientError,
    each_or_all,
    first_line,
    sqlstate,
)
from chatter_otel.writeback.ledger import (
    MARKERS,
    database_identity,
    group,
    ledger_params,
    ledger_table,
    message_params,
    move_into_schema,
    unique,
)
from chatter_otel.writeback.mapping import WritebackMapping
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.statements import (
    STATUS_APPLIED,
    STATUS_ORPHANED,
    STATUS_REJECTED,
    Statements,
)

__all__ = [
    "STATUS_APPLIED",
    "STATUS_ORPHANED",
    "STATUS_REJECTED",
    "ApplyResult",
    "PermanentError",
    "Store",
    "TransientError",
    "ledger_table",
]

logger = logging.getLogger("chatter_otel.writeback")

# Key of the PostgreSQL advisory lock taken while creating the ledger (any constant works).
_DDL_LOCK_KEY: Final = 0x43_48_41_54_57_42  # "CHATWB"


@dataclass
class ApplyResult:
    applied: list[TurnRecord] = field(default_factory=list)
    waiting: list[TurnRecord] = field(default_factory=list)
    """Message row not there yet: try again later."""
    orphaned: list[TurnRecord] = field(default_factory=list)
    """Message row still missing after the time-to-live: kept in the ledger as orphaned."""
    rejected: list[TurnRecord] = field(default_factory=list)
    """Records refused here (counted under ``rejections``), kept in the ledger as rejected."""
    rejections: dict[str, int] = field(default_factory=dict)
    """Refusals by reason: the ``rejected`` records, and parts of applied records (metadata
    merges, conversation totals) the database could not take. Each is also logged."""
    drifted: int = 0
    """Conversations whose stored totals differed from their messages before this batch
    (repaired by it)."""

    def count(self, reason: str, amount: int = 1) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + amount


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
        self.engine = make_engine(
            self.url, connect_timeout=connect_timeout, busy_timeout=busy_timeout
        )
        self.schema_ready = False
        self.identity: str | None = None
        """Which database this is (see :meth:`_identity`); known once the schema is ready."""
        self.fault: Callable[[str], None] | None = None
        """Test hook, called between statements with the name of the next step."""
        self.ledger_schema = mapping.ledger_schema if self.postgres else None
        self._ledger = ledger_table(mapping, schema=self.ledger_schema)
        self.sql = Statements(
            self.engine, mapping, postgres=self.postgres, ledger_schema=self.ledger_schema
        )

    def dispose(self) -> None:
        self.engine.dispose()

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection in a transaction; errors become TransientError or PermanentError."""
        return transaction(self.engine)

    # --- schema ------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Creates the ledger if missing, checks the mapped columns exist, learns identity.

        Raises TransientError (database unreachable) or PermanentError (it refuses: a
        mapped column missing, no privilege to create the ledger)."""
        with self.transaction() as conn:
            if self.postgres:
                # CREATE TABLE IF NOT EXISTS races between processes on PostgreSQL.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
                assert self.ledger_schema is not None
                move_into_schema(conn, self.mapping.ledger_table, self.ledger_schema)
            self._ledger.create(conn, checkfirst=True)
            conn.execute(self.sql.probe_messages)
            conn.execute(self.sql.probe_conversations)
            identity = database_identity(conn, self.url)
        self.identity = identity
        self.schema_ready = True

    # --- writing -----------------------------------------------------------------------

    def apply(self, records: Sequence[TurnRecord], now_ns: int, ttl_ns: int) -> ApplyResult:
        """Applies a batch in one transaction. Raises TransientError or PermanentError."""
        if not self.schema_ready:
            self.ensure_schema()
        with self.transaction() as conn:
            result = self._apply(conn, unique(records), now_ns, ttl_ns)
            self._step("commit")
        return result

    def mark(self, records: Sequence[TurnRecord], status: str) -> None:
        """Records the ledger rows of records that will not be applied (best effort: any
        failure raises TransientError)."""
        if not records:
            return
        try:
            with self.transaction() as conn:
                self._insert(
                    conn, self.sql.insert_noop, [ledger_params(r, None, status) for r in records]
                )
        except PermanentError as exc:
            raise TransientError(str(exc)) from exc

    def _apply(
        self, conn: Connection, records: list[TurnRecord], now_ns: int, ttl_ns: int
    ) -> ApplyResult:
        sql = self.sql
        result = ApplyResult()
        self._step("messages")
        message_ids = sorted({r.message_id for r in records})
        rows = conn.execute(sql.select_messages, {"ids": message_ids}).all()
        conversation_of: dict[str, str] = {row[0]: row[1] for row in rows}
        owner_of: dict[str, str] = {row[0]: row[2] for row in rows}
        refused: list[tuple[TurnRecord, str]] = []
        for record in records:
            row_conversation = conversation_of.get(record.message_id)
            if row_conversation is None:
                if record.end_ns + ttl_ns <= now_ns:
                    result.orphaned.append(record)
                else:
                    result.waiting.append(record)
            elif record.conversation_id is not None and record.conversation_id != row_conversation:
                refused.append((record, R_CONVERSATION_MISMATCH))
            elif record.user_id is not None and record.user_id != owner_of[record.message_id]:
                refused.append((record, R_USER_MISMATCH))
            else:
                result.applied.append(record)
        if refused:
            self._reject(conn, result, refused, conversation_of, owner_of)
        if result.applied:
            self._write(conn, result, conversation_of)
        if result.orphaned:
            self._step("orphans")
            self._insert(
                conn,
                sql.insert_noop,
                [ledger_params(r, None, STATUS_ORPHANED) for r in result.orphaned],
            )
        return result

    def _reject(
        self,
        conn: Connection,
        result: ApplyResult,
        refused: list[tuple[TurnRecord, str]],
        conversation_of: dict[str, str],
        owner_of: dict[str, str],
    ) -> None:
        """Records whose span names a message outside its own conversation or user."""
        for record, reason in refused:
            if reason == R_CONVERSATION_MISMATCH:
                what, said, found = "conversation", record.conversation_id, conversation_of
            else:
                what, said, found = "user", record.user_id, owner_of
            logger.error(
                "write-back: span %s names message %s of %s %s but says %s %s; rejected "
                "(kept in the ledger as %s)",
                record.span_id,
                record.message_id,
                what,
                found[record.message_id],
                what,
                said,
                STATUS_REJECTED,
            )
            result.count(reason)
            result.rejected.append(record)
        self._insert(
            conn,
            self.sql.insert_noop,
            [ledger_params(r, None, STATUS_REJECTED) for r in result.rejected],
        )

    def _write(
        self, conn: Connection, result: ApplyResult, conversation_of: dict[str, str]
    ) -> None:
        sql = self.sql
        conversation_ids = sorted({conversation_of[r.message_id] for r in result.applied})
        if sql.lock_conversations is not None:
            self._step("lock")
            conn.execute(sql.lock_conversations, {"ids": conversation_ids})
        result.drifted = len(conn.execute(sql.select_drift, {"ids": conversation_ids}).all())
        self._step("ledger")
        self._insert(
            conn,
            sql.insert_applied,
            [
                ledger_params(r, conversation_of[r.message_id], STATUS_APPLIED)
                for r in result.applied
            ],
        )
        self._step("sums")
        applied_ids = sorted({r.message_id for r in result.applied})
        ledger_rows = conn.execute(
            sql.select_ledger, {"ids": applied_ids, "status": STATUS_APPLIED}
        ).all()
        updates = [
            message_params(message_id, rows, postgres=self.postgres)
            for message_id, rows in group(ledger_rows).items()
        ]
        self._step("messages_update")
        if updates:
            values = [{k: v for k, v in u.items() if not k.startswith("meta_")} for u in updates]
            self._rows(conn, sql.update_messages, values)
            self._merge_metadata(conn, result, updates)
        self._step("conversations_update")
        self.recompute(conn, result, conversation_ids)

    def _rows(self, conn: Connection, statement: TextClause, rows: list[dict[str, Any]]) -> None:
        """Executes a per-row statement for all rows (one JSON parameter on PostgreSQL)."""
        if self.postgres:
            drop_1, drop_2 = MARKERS
            extra = {"drop_1": drop_1, "drop_2": drop_2} if ":drop_1" in statement.text else {}
            conn.execute(statement, {"rows": json.dumps(rows), **extra})
        else:
            conn.execute(statement, rows)

    def _merge_metadata(
        self, conn: Connection, result: ApplyResult, updates: list[dict[str, Any]]
    ) -> None:
        keys = ("id", "meta_set") if self.postgres else ("id", "meta_set", "meta_patch")
        rows = [{k: u[k] for k in keys} for u in updates]
        for failed, exc in each_or_all(
            conn, lambda part: self._rows(conn, self.sql.merge_metadata, part), rows
        ):
            logger.error(
                "write-back: extra_metadata of message %s cannot be merged (%s); its usage "
                "columns were written, its metadata left as it was",
                failed["id"],
                first_line(exc),
            )
            result.count(R_METADATA_UNMERGEABLE)

    def recompute(
        self, conn: Connection, result: ApplyResult, conversation_ids: list[str]
    ) -> list[str]:
        """Sets the conversations' totals from their messages; those the database refuses
        are counted in ``result``, logged and returned, the others are written."""
        refused: list[str] = []

        def update(part: list[str]) -> None:
            conn.execute(self.sql.update_conversations, {"ids": part})

        for failed, exc in each_or_all(conn, update, conversation_ids):
            state = sqlstate(exc) or ""
            out_of_range = state == "22003" or "out of range" in str(exc)
            logger.error(
                "write-back: totals of conversation %s not updated: %s; its messages were "
                "written, the conversation keeps its previous totals",
                failed,
                "they do not fit its columns" if out_of_range else first_line(exc),
            )
            result.count(R_AGGREGATE_OUT_OF_RANGE if out_of_range else R_AGGREGATE_REFUSED)
            refused.append(failed)
        return refused

    def _insert(self, conn: Connection, statement: TextClause, rows: list[dict[str, Any]]) -> None:
        if self.postgres:
            conn.execute(statement, {"rows": json.dumps(rows)})
        else:
            conn.execute(statement, rows)
