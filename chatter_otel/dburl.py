"""Database URLs as Chatter deployments write them, turned into the driver each side needs.

Chatter configures ``postgresql+asyncpg://``; the service runs async SQLAlchemy, while the
write-back worker runs in its own thread with a sync driver. One URL serves both.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
_SYNC_DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite"}
ACCEPTED = "postgresql://, postgresql+asyncpg://, postgresql+psycopg://, sqlite:///PATH, sqlite+aiosqlite:///PATH"


class DatabaseURLError(ValueError):
    """The URL names a database or driver chatter-otel does not support."""


def parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise DatabaseURLError(f"not a database URL (accepted: {ACCEPTED})") from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
        backend = "postgresql"
    if backend not in _SYNC_DRIVERS:
        raise DatabaseURLError(f"unsupported database {backend!r} (accepted: {ACCEPTED})")
    return parsed


def _with_driver(url: str | URL, drivers: dict[str, str]) -> URL:
    parsed = parse(url)
    backend = parsed.get_backend_name()
    return parsed.set(drivername=f"{backend}+{drivers[backend]}")


def async_url(url: str | URL) -> URL:
    """The same database through an asyncio driver (asyncpg, aiosqlite)."""
    return _with_driver(url, _ASYNC_DRIVERS)


def sync_url(url: str | URL) -> URL:
    """The same database through a blocking driver (psycopg 3, sqlite3)."""
    return _with_driver(url, _SYNC_DRIVERS)


def masked(url: str | URL) -> str:
    """The URL with its password hidden, for logs and ``check-config``."""
    return parse(url).render_as_string(hide_password=True)
