"""A throwaway PostgreSQL cluster a test starts itself, on a private port and socket dir.

Fault tests stop and kill it; the shared server on 5432 is never touched. initdb and pg_ctl
refuse to run as root, so they run as the postgres user. In CI a missing binary fails the
test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Throwaway:
    url: URL
    data: Path
    socket_dir: Path
    port: int
    log: Path

    def _ctl(self, *args: str) -> None:
        as_postgres("pg_ctl", "-D", str(self.data), *args)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions terminated, clean shutdown; ``immediate``: like a crash."""
        self._ctl("-m", mode, "-w", "stop")


def as_postgres(tool: str, *args: str, check: bool = True) -> None:
    command = ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args]
    subprocess.run(command, check=check, capture_output=True, timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"throwaway PostgreSQL unavailable in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def throwaway_server() -> Iterator[Throwaway]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        _unavailable("PostgreSQL 15 binaries or runuser not available")
    if os.geteuid() != 0:
        _unavailable("needs root to run initdb as the postgres user")
    # Under /tmp itself: pytest's tmp_path is not traversable by the postgres user.
    base = Path(tempfile.mkdtemp(prefix="chatter-otel-pg-"))
    shutil.chown(base, "postgres")
    port = free_port()
    server = Throwaway(
        url=make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"),
        data=base / "data",
        socket_dir=base,
        port=port,
        log=base / "server.log",
    )
    try:
        as_postgres("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync")
        server.start()
        yield server
    finally:
        as_postgres("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)
