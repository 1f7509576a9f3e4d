"""Which database errors are an outage, and which are the database refusing some records.

The distinction decides whether the write-back waits or isolates: an outage (the server is
unreachable, restarting, out of disk, the transaction lost a serialization race) is retried
with the whole batch kept; a refusal (a trigger raising, row-level security, a missing
privilege or column, a value out of range) will fail again on every retry, so the writer
must bisect the batch down to the records the database refuses and reject those alone.
Treating a refusal as an outage stalls every record behind one poison row; treating an
outage as a refusal would reject healthy records. So only errors that say the *server* is
unavailable are an outage; every error the server raises about a statement is a refusal.
Failures to connect are always an outage, whatever their SQLSTATE (a bad password refuses
every record alike: rejecting them one by one would drop them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

R_DB_REFUSED: Final = "database_refused"
"""Reason of a record the database refused (bounded metric label)."""
R_CONVERSATION_MISMATCH: Final = "conversation_mismatch"
"""A span named a message of another conversation than the one it named: not applied."""
R_USER_MISMATCH: Final = "user_mismatch"
"""A span named a message of a conversation of another user than the one it named."""
R_METADATA_UNMERGEABLE: Final = "metadata_unmergeable"
"""A message's ``extra_metadata`` could not be merged (its usage columns were written)."""
R_AGGREGATE_OUT_OF_RANGE: Final = "aggregate_out_of_range"
"""A conversation's totals do not fit its columns: left as they were (messages written)."""
R_AGGREGATE_REFUSED: Final = "aggregate_refused"
"""The database refused a conversation's totals otherwise (trigger, policy, privilege)."""

_TRANSIENT_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "25",  # invalid transaction state: read-only standby after a failover, idle timeout
        "40",  # transaction rollback: serialization failure, deadlock: simply retry
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: admin shutdown, cannot connect now, query canceled
        "58",  # system error (I/O)
        "XX",  # internal error, data corrupted: the server's problem, not the record's
    }
)
_TRANSIENT_STATES: Final = frozenset({"55P03", "55006"})  # lock not available, object in use

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) meaning "not now".
_SQLITE_TRANSIENT: Final = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


class TransientError(Exception):
    """The database could not be reached or the transaction failed: retry later."""


class PermanentError(Exception):
    """The database refuses some record of the batch: retrying the same batch is futile.

    ``reason`` is the bounded label the rejection is counted under; ``sqlstate`` the
    server's code when there is one (for the log line).
    """

    def __init__(
        self, message: str, *, reason: str = R_DB_REFUSED, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg), None when there is none."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a statement, is the database refusing it (not an outage)."""
    if not isinstance(exc, sa_exc.DBAPIError) or exc.connection_invalidated:
        # Errors of our own code, of the network, or a connection found dead: retry.
        return False
    state = sqlstate(exc)
    if state is not None:
        return state[:2] not in _TRANSIENT_CLASSES and state not in _TRANSIENT_STATES
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF not in _SQLITE_TRANSIENT
    # psycopg raises errors without SQLSTATE only for client-side failures (connection
    # lost, protocol): an outage.
    return False


def classify(exc: BaseException) -> TransientError | PermanentError:
    """The error to raise for ``exc`` from a statement (see the module docstring)."""
    if is_refusal(exc):
        return PermanentError(first_line(exc), sqlstate=sqlstate(exc))
    return TransientError(first_line(exc))


def first_line(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text_[0] if text_ else ''}"[:500]


def each_or_all(
    conn: Connection, run: Callable[[list[Any]], None], items: list[Any]
) -> Iterator[tuple[Any, Exception]]:
    """Runs ``run(items)`` in a savepoint; when the database refuses it, runs it for each
    item in its own savepoint and yields the items it refuses, with the error (the others
    are done). Outages propagate. One statement in the common case, one per item only when
    something is refused."""
    try:
        with conn.begin_nested():
            run(items)
        return
    except Exception as exc:
        if not is_refusal(exc):
            raise
        if len(items) == 1:
            yield items[0], exc
            return
    for item in items:
        try:
            with conn.begin_nested():
                run([item])
        except Exception as exc:
            if not is_refusal(exc):
                raise
            yield item, exc
