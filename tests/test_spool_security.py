"""Spool files are applied only to their own database, and only when nobody else could
have written them.

Real spool files written by the real ``Spool`` (then handed to another owner, opened up or
replaced by a link, as another local user would), replayed by real processors into private
PostgreSQL databases. The other user is uid 65534 (``nobody``): the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatter_otel.config import ConfigError
from chatter_otel.service.models import new_ulid
from chatter_otel.writeback import WritebackMapping, WritebackSpanProcessor
from chatter_otel.writeback.records import KIND_TURN, TurnRecord
from chatter_otel.writeback.spool import Spool
from chatter_otel.writeback.store import Store
from tests._pg_cluster import via
from tests._tcp_proxy import TcpProxy
from tests.test_writeback_support import (
    Tracing,
    create_schema,
    message,
    seed,
    simple_turn,
    wait_until,
)

Factory = Callable[..., Tracing]
NOBODY = 65534
ATTACK_TOKENS = 10**9
ATTACK_COST = Decimal(999_999)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _identity(url: URL) -> str:
    store = Store(url, WritebackMapping())
    store.ensure_schema()
    store.dispose()
    assert store.identity is not None
    return store.identity


def _attack(message_id: str, conversation_id: str) -> TurnRecord:
    return TurnRecord(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        message_id=message_id,
        conversation_id=conversation_id,
        kind=KIND_TURN,
        prompt_tokens=ATTACK_TOKENS,
        completion_tokens=0,
        total_tokens=ATTACK_TOKENS,
        cost=ATTACK_COST,
        cost_unpriced=False,
        usage_missing=False,
        calls=1,
        model="gpt-4o",
        provider="openai",
        finish_reason="stop",
        last_call_end_ns=None,
        response_time_ms=1,
        end_ns=1,
    )


def _spooled_for(url: URL, directory: Path, record: TurnRecord) -> Path:
    """A spool file bound to ``url``'s database holding ``record``, as its writer leaves it."""
    identity = _identity(url)
    spool = Spool(directory, url=url, database=lambda: identity)
    spool.append([record])
    spool.close()
    (path,) = directory.glob("*.jsonl")
    return path


@contextlib.contextmanager
def _copy_database(server: URL, source: URL) -> Iterator[URL]:
    """A staging copy of ``source`` in the same cluster: same rows and ids, another database."""
    copy = server.set(database=f"{source.database}_copy")
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{copy.database}" TEMPLATE "{source.database}"'))
    try:
        yield copy
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{copy.database}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def staging(pg_server_url: URL, pg_url: URL) -> Iterator[tuple[URL, URL, list[str], str]]:
    """Production (``pg_url``) with 6 assistant messages, and its staging copy."""
    rows = seed(pg_url, conversations=1, messages=6)
    with _copy_database(pg_server_url, pg_url) as copy:
        yield pg_url, copy, rows.all_messages, rows.conversations[0]


def test_two_databases_sharing_a_spool_directory_do_not_swap_records(
    staging: tuple[URL, URL, list[str], str], make_writeback: Factory, tmp_path: Path
) -> None:
    production, copy, mids, cid = staging
    with TcpProxy(production.port or 5432) as proxy:
        url = via(production, proxy.port)
        prod = make_writeback(url, connect_timeout=1)
        simple_turn(prod.tracer, mids[0], cid, [(1, 1)])
        assert prod.provider.force_flush(10_000)  # it has reached its database
        proxy.down()
        for index, mid in enumerate(mids[1:]):
            simple_turn(prod.tracer, mid, cid, [(index + 10, 1)])
        prod.provider.shutdown()
        assert prod.processor.stats.spooled == 5
        # Staging runs with the same spool directory (a shared volume, a copied config).
        stage = make_writeback(copy)
        simple_turn(stage.tracer, mids[0], cid, [(2, 2)])
        assert stage.provider.force_flush(10_000)
        assert [message(copy, mid)["total_tokens"] for mid in mids] == [4] + [None] * 5
        assert stage.processor.stats.rejected == {"spool_other_database": 5}
        assert stage.processor.stats.applied == 1
        stage.provider.shutdown()  # its journal goes: every record of it was written
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 1  # left for production
        proxy.up()
        again = make_writeback(url)
        assert wait_until(lambda: again.processor.stats.applied == 5, timeout=10)
        again.provider.shutdown()
    assert [message(production, mid)["total_tokens"] for mid in mids] == [2, 11, 12, 13, 14, 15]
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_records_of_a_writer_that_never_reached_its_database_stay_bound_to_its_url(
    staging: tuple[URL, URL, list[str], str], make_writeback: Factory, tmp_path: Path
) -> None:
    production, copy, mids, cid = staging
    with TcpProxy(production.port or 5432) as proxy:
        url = via(production, proxy.port)
        proxy.down()
        prod = make_writeback(url, connect_timeout=1)
        simple_turn(prod.tracer, mids[0], cid, [(3, 3)])
        prod.provider.shutdown()
        stage = make_writeback(copy)
        assert stage.provider.force_flush(10_000)
        assert stage.processor.stats.rejected == {"spool_other_database": 1}
        assert message(copy, mids[0])["total_tokens"] is None
        proxy.up()
        again = make_writeback(url)
        assert wait_until(lambda: again.processor.stats.applied == 1, timeout=10)
    assert message(production, mids[0])["total_tokens"] == 6


@pytest.mark.parametrize("planted", ["other owner", "readable by others", "symbolic link"])
def test_a_planted_spool_record_is_never_applied(
    pg_url: URL, make_writeback: Factory, tmp_path: Path, planted: str
) -> None:
    rows = seed(pg_url, conversations=1, messages=1)
    victim, cid = rows.all_messages[0], rows.conversations[0]
    spool = tmp_path / "spool"
    path = _spooled_for(pg_url, spool, _attack(victim, cid))
    if planted == "other owner":
        os.chown(path, NOBODY, NOBODY)
    elif planted == "readable by others":
        path.chmod(0o644)
    else:
        elsewhere = tmp_path / "elsewhere.jsonl"
        path.rename(elsewhere)
        path.symlink_to(elsewhere)
    t = make_writeback(pg_url)
    assert t.provider.force_flush(10_000)
    assert t.processor.stats.rejected == {"spool_file_untrusted": 1}
    row = message(pg_url, victim)
    assert (row["total_tokens"], row["cost"]) == (None, None)
    assert os.path.lexists(path)  # left alone
    t.provider.shutdown()
    # The same file as its writer left it is applied: only the planting kept it out.
    if planted == "symbolic link":
        path.unlink()
        (tmp_path / "elsewhere.jsonl").rename(path)
    os.chown(path, os.geteuid(), os.getegid())
    path.chmod(0o600)
    trusted = make_writeback(pg_url)
    assert trusted.provider.force_flush(10_000)
    assert message(pg_url, victim)["total_tokens"] == ATTACK_TOKENS


def test_new_spool_files_and_directories_are_private(pg_url: URL, tmp_path: Path) -> None:
    create_schema(pg_url)
    directory = tmp_path / "state" / "spool"
    path = _spooled_for(pg_url, directory, _attack(new_ulid(), new_ulid()))
    assert (directory.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stand-in for the shared temporary directory, and a state directory that
    cannot be created (a read-only home): the default spool falls back under the former."""
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))
    return shared


def test_a_fallback_directory_created_by_another_user_stops_start_up(
    pg_url: URL, temp_dir: Path
) -> None:
    squatted = temp_dir / f"chatter-otel-writeback-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        WritebackSpanProcessor(pg_url)
    assert str(caught.value).startswith(f"invalid CHATTER_OTEL_WRITEBACK_SPOOL='{squatted}/")
    assert f"owned by uid {NOBODY}, not 0" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_world_writable_fallback_directory_of_ours_is_refused(
    pg_url: URL, temp_dir: Path
) -> None:
    loose = temp_dir / f"chatter-otel-writeback-{os.getuid()}"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        WritebackSpanProcessor(pg_url)


def test_the_fallback_directory_is_created_private(pg_url: URL, temp_dir: Path) -> None:
    processor = WritebackSpanProcessor(pg_url)
    try:
        directory = processor.spool_dir
        assert directory.parent.parent == temp_dir
        modes = [p.stat().st_mode & 0o777 for p in (directory.parent, directory)]
        assert modes == [0o700, 0o700]
    finally:
        processor.shutdown()


def _check_config(spool: Path, url: URL) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CHATTER_OTEL_WRITEBACK_URL": url.render_as_string(hide_password=False),
        "CHATTER_OTEL_WRITEBACK_SPOOL": str(spool),
    }
    return subprocess.run(
        [sys.executable, "-m", "chatter_otel.cli", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("problem", ["a file", "another owner", "a symbolic link"])
def test_an_unusable_spool_path_stops_start_up_and_check_config(
    pg_url: URL, tmp_path: Path, problem: str
) -> None:
    spool = tmp_path / "spool"
    if problem == "a file":
        spool.write_text("")
    elif problem == "another owner":
        spool.mkdir(mode=0o700)
        os.chown(spool, NOBODY, NOBODY)
    else:
        (tmp_path / "real").mkdir(mode=0o700)
        spool.symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError):
        WritebackSpanProcessor(pg_url, spool_path=spool)
    result = _check_config(spool, pg_url)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"chatter-otel: invalid CHATTER_OTEL_WRITEBACK_SPOOL='{spool}'")


def test_check_config_shows_the_spool_directory_it_checked(pg_url: URL, tmp_path: Path) -> None:
    result = _check_config(tmp_path / "spool", pg_url)
    assert result.returncode == 0, result.stderr
    assert f"writeback_spool_path             {tmp_path / 'spool'}" in result.stdout
