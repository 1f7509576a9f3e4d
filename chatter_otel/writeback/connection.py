"""The write-back's engine and its transactions, with every failure sorted for the writer.

A failure to connect is an outage whatever it says; inside a transaction, :func:`.dberrors
.classify` tells an outage (:class:`TransientError`: retry the batch later) from a refusal
(:class:`PermanentError`: the writer bisects the batch down to the record).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine

from chatter_otel.writeback.dberrors import PermanentError, TransientError, classify, first_line
from chatter_otel.writeback.ledger import TokenOverflow

logger = logging.getLogger("chatter_otel.writeback")


def make_engine(url: URL, *, connect_timeout: float, busy_timeout: float) -> Engine:
    """A small pool on PostgreSQL; on SQLite, transactions that take the write lock first."""
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url,
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
    engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        # Take the write lock up front: concurrent writers queue (busy timeout) instead
        # of failing to upgrade a read lock half-way through a batch.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction; errors become TransientError or PermanentError."""
    try:
        conn = engine.connect()
    except Exception as exc:
        raise TransientError(first_line(exc)) from exc
    try:
        with conn.begin():
            yield conn
    except (TransientError, PermanentError):
        raise
    except TokenOverflow as exc:
        raise PermanentError(str(exc)) from exc
    except Exception as exc:
        raise classify(exc) from exc
    finally:
        try:
            conn.close()
        except Exception:  # a dead connection: the pool discards it
            logger.debug("write-back: closing a failed connection", exc_info=True)
