"""The reference service as a real process for the HTTP part, and the CPU it spends.

CPU is read from ``/proc``: user + system time of the service process (every thread), of the
children it has reaped, and of the descendants still running; and, separately, of the
PostgreSQL backends connected to the service's private database (the write-back's updates
cost the database server too, and no other client connects there). Time-sliced CPU, not
wall time: a neighbour taking the core delays the service but is not charged to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import URL

from benchmarks import _db

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Service:
    key: str
    label: str
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    db: URL | None = None
    conversations: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stat_cpu(pid: int, reaped: bool) -> float:
    """utime + stime (+ cutime + cstime) of ``pid`` in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its living descendants."""
    return _stat_cpu(pid, reaped=True) + sum(
        _stat_cpu(child, reaped=False) for child in _descendants(pid)
    )


class Backends:
    """CPU of the PostgreSQL backends serving one database, when the server is on this host.

    A backend that exits inside a window takes its CPU with it; the service's pool and the
    write-back's connection are long-lived, so in practice none does.
    """

    def __init__(self, server: URL) -> None:
        local = server.host in (None, "", "localhost", "127.0.0.1", "::1")
        self._conn = (
            psycopg.connect(_db.libpq(server), autocommit=True, connect_timeout=5)
            if local
            else None
        )

    def snapshot(self, database: str) -> dict[int, float] | None:
        """CPU seconds per backend now; None when they cannot be read from here."""
        if self._conn is None:
            return None
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
        if rows and not Path(f"/proc/{rows[0][0]}").exists():
            return None  # another PID namespace
        return {int(pid): _stat_cpu(int(pid), reaped=False) for (pid,) in rows}

    @staticmethod
    def spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float:
        """CPU seconds between two snapshots: backends that exited in between are lost, new
        ones count from their start."""
        if before is None or after is None:
            return float("nan")
        return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(service: Service, db: URL, logdir: Path) -> None:
    """Start the service on its own port and database, configured through the environment."""
    service.port = _free_port()
    service.db = db
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("OTEL_") or k.startswith("CHATTER_") or k == "DATABASE_URL")
    }
    env.update(
        {
            "CHATTER_HOST": "127.0.0.1",
            "CHATTER_PORT": str(service.port),
            "DATABASE_URL": db.set(drivername="postgresql+asyncpg").render_as_string(
                hide_password=False
            ),
            "CHATTER_OTEL_WRITEBACK_SPOOL": str(logdir / f"spool-{service.key}"),
            **service.env,
        }
    )
    log = open(logdir / f"service-{service.key}.log", "wb")  # noqa: SIM115 - lives with the process
    service.proc = subprocess.Popen(
        [sys.executable, "-m", "chatter_otel.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ready(service: Service, conversations: int) -> None:
    """Wait for health, then create one user and its conversations."""
    assert service.proc is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"service {service.key} exited; see its log")
        try:
            if httpx.get(f"{service.base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError(f"service {service.key} did not become healthy")
    with httpx.Client(base_url=service.base, timeout=30) as client:
        r = client.post(
            "/api/v1/users", json={"username": f"bench-{service.key}", "email": "b@bench.invalid"}
        )
        r.raise_for_status()
        user = r.json()["id"]
        for n in range(conversations):
            r = client.post("/api/v1/conversations", json={"user_id": user, "title": f"bench {n}"})
            r.raise_for_status()
            service.conversations.append(r.json()["id"])


def stop(service: Service) -> None:
    proc = service.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully; telemetry flushes
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
