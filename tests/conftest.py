"""Shared fixtures: a private PostgreSQL database per test session on the shared server.

Each session creates its own database so parallel runs (developers, helpers, CI) never see
each other's rows; the shared server itself is never stopped. In CI a PostgreSQL that
cannot be reached is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from tests._stack import load_yaml as _yaml

if TYPE_CHECKING:
    from chatter_otel.testing._fake_openai import FakeOpenAIServer
    from tests._pg_cluster import PgCluster
    from tests._writeback_db import Factory

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _server_url() -> URL:
    return make_url(os.environ.get("CHATTER_TEST_DATABASE_URL", DEFAULT_PG)).set(
        drivername="postgresql+psycopg"
    )


@pytest.fixture(scope="session")
def pg_server_url() -> URL:
    url = _server_url()
    try:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {url.render_as_string()} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    return url


def create_private_database(server: URL) -> URL:
    name = f"chatter_otel_t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server.set(database=name)


def drop_private_database(server: URL, url: URL) -> None:
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def pg_url(pg_server_url: URL) -> Iterator[URL]:
    """A fresh, empty PostgreSQL database (psycopg URL) for one test."""
    url = create_private_database(pg_server_url)
    try:
        yield url
    finally:
        drop_private_database(pg_server_url, url)


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> URL:
    return make_url(f"sqlite:///{tmp_path}/chatter.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> URL:
    """Runs a test once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for one test module (never the shared server; a
    database per test with ``pg.database()``). Fault tests stop, stall or cut it."""
    from tests._pg_cluster import throwaway_postgres  # only the fault tests need its imports

    with throwaway_postgres() as cluster:
        yield cluster


@pytest.fixture
def make_writeback(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make_writeback(url, **options)``: a write-back processor on ``url`` with fast timings
    (a flush interval of 0.05 s, a spool under ``tmp_path``) behind its own TracerProvider
    (a ``tests.test_writeback_support.Tracing``); all are shut down afterwards."""
    from chatter_otel.pricing import Pricing
    from chatter_otel.writeback import WritebackSpanProcessor
    from tests.test_writeback_support import Tracing, tracing

    made: list[Tracing] = []
    pricing = Pricing()

    def factory(url: URL | str, **kwargs: Any) -> Tracing:
        options: dict[str, Any] = {
            "pricing": pricing,
            "flush_interval": 0.05,
            "late_span_grace": 0.05,
            "spool_path": tmp_path / "spool",
            "backoff": (0.02, 0.2),
        }
        options.update(kwargs)
        t = tracing(WritebackSpanProcessor(url, **options))
        made.append(t)
        return t

    yield factory
    for t in made:
        t.provider.shutdown()


@pytest.fixture
def make(db_url: URL, tmp_path: Path) -> Iterator[Factory]:
    """Builds processors on ``db_url`` with fast timings; shuts them all down afterwards."""
    from chatter_otel.writeback import WritebackSpanProcessor
    from tests._writeback_db import PRICING
    from tests.test_writeback_support import Tracing, tracing

    made: list[Tracing] = []

    def factory(url: URL | str | None = None, **kwargs: Any) -> Tracing:
        options: dict[str, Any] = {
            "pricing": PRICING,
            "flush_interval": 0.05,
            "late_span_grace": 0.05,
            "spool_path": tmp_path / "spool",
            "backoff": (0.02, 0.2),
        }
        options.update(kwargs)
        sampler = options.pop("sampler", None)
        processor = WritebackSpanProcessor(url if url is not None else db_url, **options)
        t = tracing(processor, sampler)
        made.append(t)
        return t

    yield factory
    for t in made:
        t.provider.shutdown()


# --- the stack's configuration files, shared by the structural stack tests ---------------


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return _yaml("collector-config.yaml")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def jaeger() -> dict[str, Any]:
    return _yaml("otel/jaeger/config.yaml")


# --- the fake OpenAI server, shared by the test_fake_openai_* modules ---------------------


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    from chatter_otel.testing._fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture
def _close_clients() -> Iterator[None]:
    """Closes the openai clients ``tests._openai_clients.client`` opened during the test."""
    from tests._openai_clients import close_clients

    yield
    close_clients()
