"""A throwaway PostgreSQL cluster of the fault tests (never the shared server) and the URLs
that reach it directly or through a proxy. Contains no tests itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.engine import URL

# The throwaway server of the write-back outage test, reused rather than duplicated.
from tests._pg import Throwaway, throwaway_server
from tests.conftest import create_private_database


@dataclass
class PgCluster:
    """A PostgreSQL 15 cluster of our own on a private port (initdb + pg_ctl as postgres)."""

    server: Throwaway

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def admin_url(self) -> URL:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions terminated, clean shutdown; ``immediate``: like a crash."""
        self.server.stop(mode)

    def database(self) -> URL:
        """A fresh, empty database on this cluster (psycopg URL)."""
        return create_private_database(self.admin_url)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PgCluster]:
    with throwaway_server() as server:
        yield PgCluster(server)


def via(url: URL, port: int) -> URL:
    """The same database reached through another local port (a proxy)."""
    return url.set(host="127.0.0.1", port=port)


def url_text(url: URL, driver: str = "postgresql+asyncpg") -> str:
    """As Chatter's DATABASE_URL is written (asyncpg by default)."""
    return url.set(drivername=driver).render_as_string(hide_password=False)
