"""Private PostgreSQL databases on the shared server, seeded with Chatter's schema.

The server is shared with other engineers and CI: every part creates its own
``chatter_bench_<random>`` database and drops it afterwards (``WITH (FORCE)``, so a crashed
writer cannot keep it alive), and never touches anything else on the server. Rows are
seeded with COPY because a million-span run needs a quarter of a million messages and the
ORM would take longer than the measurement.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import URL, make_url

from chatter_otel.service.models import Base, Conversation, User, new_ulid

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "chatter_bench_"


def server_url() -> URL:
    """The shared server (``CHATTER_BENCH_DATABASE_URL`` or the tests' variable overrides it)."""
    raw = (
        os.environ.get("CHATTER_BENCH_DATABASE_URL")
        or os.environ.get("CHATTER_TEST_DATABASE_URL")
        or DEFAULT_SERVER
    )
    return make_url(raw).set(drivername="postgresql+psycopg")


def libpq(url: URL) -> str:
    """The URL as a libpq connection string (psycopg, subprocesses)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def server_version(url: URL) -> str:
    with psycopg.connect(libpq(url), connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0]}" if row else "unknown"


@contextmanager
def private_database(server: URL, tag: str) -> Iterator[URL]:
    """A fresh database for one part of the suite, dropped whatever happens."""
    name = f"{PREFIX}{tag}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq(server), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.set(database=name)
    try:
        create_schema(url)
        yield url
    finally:
        with psycopg.connect(libpq(server), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_schema(url: URL) -> None:
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Turn:
    """One chat turn whose assistant message row exists: what the spans will name."""

    index: int
    user_id: str
    conversation_id: str
    message_id: str


def seed(
    url: URL, conversations: int, turns_per_conversation: int, *, user_messages: bool = True
) -> list[Turn]:
    """Users, conversations and one assistant message per turn (plus the user message
    that precedes it in Chatter, unless ``user_messages`` is off to save time).

    Turns are returned interleaved across conversations, as traffic from many users is.
    """
    user_id = new_ulid()
    conv_ids = [new_ulid() for _ in range(conversations)]
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(User),
                [{"id": user_id, "username": user_id, "email": f"{user_id}@bench.invalid"}],
            )
            conn.execute(
                insert(Conversation),
                [{"id": cid, "user_id": user_id, "title": "bench"} for cid in conv_ids],
            )
    finally:
        engine.dispose()
    turns: list[Turn] = []
    buffer = io.StringIO()
    per_turn = 2 if user_messages else 1
    for round_ in range(turns_per_conversation):
        for cid in conv_ids:
            seq = round_ * per_turn
            if user_messages:
                buffer.write(f"{new_ulid()}\t{cid}\tUSER\thello\t{seq}\t0\t0\n")
            mid = new_ulid()
            buffer.write(f"{mid}\t{cid}\tASSISTANT\tYou said: hello\t{seq + per_turn - 1}\t0\t0\n")
            turns.append(Turn(len(turns), user_id, cid, mid))
    with psycopg.connect(libpq(url)) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY messages (id, conversation_id, role, content, sequence_number, retry_count, "
                "rating_count) FROM STDIN"
            ) as copy,
        ):
            copy.write(buffer.getvalue())
        conn.execute(
            "UPDATE conversations c SET message_count = m.n FROM (SELECT conversation_id, "
            "COUNT(*) AS n FROM messages GROUP BY conversation_id) m "
            "WHERE m.conversation_id = c.id"
        )
    return turns


def written(url: URL, message_ids: Sequence[str]) -> int:
    """How many of these messages already carry usage."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE id = ANY(%s) AND total_tokens IS NOT NULL",
            (list(message_ids),),
        ).fetchone()
    return int(row[0]) if row else 0


def mismatches(url: URL, expected: dict[str, int]) -> int:
    """Messages whose total tokens differ from ``expected`` plus conversations whose totals
    differ from the sum of their messages: 0 means every row is exact."""
    with psycopg.connect(libpq(url)) as conn:
        wrong = 0
        ids = list(expected)
        for start in range(0, len(ids), 50_000):
            chunk = ids[start : start + 50_000]
            rows = conn.execute(
                "SELECT id, total_tokens FROM messages WHERE id = ANY(%s)", (chunk,)
            ).fetchall()
            found: dict[str, int | None] = {str(r[0]): r[1] for r in rows}
            wrong += sum(1 for mid in chunk if found.get(mid) != expected[mid])
        row = conn.execute(
            "SELECT COUNT(*) FROM conversations c LEFT JOIN (SELECT conversation_id, "
            "COALESCE(SUM(total_tokens), 0) AS tt, COALESCE(SUM(cost), 0) AS tc, COUNT(*) AS n "
            "FROM messages GROUP BY conversation_id) m ON m.conversation_id = c.id "
            "WHERE c.total_tokens <> COALESCE(m.tt, 0) OR c.message_count <> COALESCE(m.n, 0) "
            "OR abs(c.total_cost - COALESCE(m.tc, 0)) > 1e-9 * greatest(1, COALESCE(m.tc, 0))"
        ).fetchone()
        wrong += int(row[0]) if row else 0
    return wrong


def scalar(url: URL, sql: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0
