"""Fault-injection helpers: a throwaway PostgreSQL, a TCP proxy that breaks connections, a
server that never answers, real ``chatter-otel serve`` processes, a chat load and the
exactness checks. Contains no tests itself.

Everything binds to 127.0.0.1; every wait is bounded in count and time; every process and
thread started here is stopped by the context manager or fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy.engine import URL

# The throwaway server of the write-back outage test, reused rather than duplicated.
from tests._pg import Throwaway, free_port, throwaway_server
from tests.conftest import create_private_database

REPO = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = ""
) -> float:
    """Polls until ``predicate()``; returns the seconds it took, fails after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s: {what}")
        time.sleep(interval)


# --- a throwaway PostgreSQL ----------------------------------------------------------------


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


# --- a TCP proxy that breaks connections ---------------------------------------------------

CUT_IN_TRANSACTION = "in_transaction"
"""Reset when the server reports a statement done inside an open transaction (before the
client sees it): the server rolls the transaction back."""
CUT_AFTER_COMMIT = "after_commit"
"""Reset when the server reports COMMIT done (before the client sees it): the transaction is
committed but the client gets a connection error, so it retries an applied batch."""


class _ServerStream:
    """Follows the PostgreSQL protocol from server to client: message boundaries, COMMIT
    results and the transaction status of each ReadyForQuery (``I``, ``T``, ``E``)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = False
        self.opaque = False  # TLS or GSS: nothing to follow
        self.status = b"I"

    def messages(self) -> Iterator[tuple[int, bytes]]:
        """Complete messages at the head of the buffer (left there until consumed)."""
        offset = 0
        buf = self.buffer
        while True:
            if not self.started:
                if offset >= len(buf):
                    return
                first = buf[offset]
                if first == ord("N"):  # SSLRequest/GSSENCRequest refused: a single byte
                    yield first, bytes(buf[offset : offset + 1])
                    offset += 1
                    continue
                if first in (ord("S"), ord("G")):
                    self.opaque = True
                self.started = True
            if self.opaque:
                if offset < len(buf):
                    yield -1, bytes(buf[offset:])
                return
            if len(buf) - offset < 5:
                return
            length = struct.unpack_from("!I", buf, offset + 1)[0]
            if len(buf) - offset < 1 + length:
                return
            yield buf[offset], bytes(buf[offset : offset + 1 + length])
            offset += 1 + length


@dataclass(eq=False)
class _Conn:
    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    stream: _ServerStream = field(default_factory=_ServerStream)
    closed: bool = False


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cuts: Counter[str] = field(default_factory=Counter)
    cut_in_transaction: int = 0
    """Connections reset (by us, or closed by the client) inside an open transaction."""
    client_gone_in_transaction: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Closes with RST (SO_LINGER 0), as a network reset looks to the peer."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


class TcpProxy:
    """A loopback TCP proxy the test controls, running its own asyncio loop in a thread.

    Faults: ``delay`` (seconds added to every chunk, each direction), ``down`` (every
    connection reset, new ones reset on accept), ``stall`` (nothing forwarded until
    ``flow``, sockets stay open: a server that hangs), ``cut_all`` (reset every open
    connection now), ``cut_when`` (reset at protocol events, see ``CUT_*``).
    """

    def __init__(self, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="faults-proxy", daemon=True)
        self._conns: set[_Conn] = set()
        self._delay = 0.0
        self._down = False
        self._flowing: asyncio.Event | None = None
        self._cut_kind: str | None = None
        self._cut_probability = 0.0
        self._cut_limit = 0
        self._numbers = 0
        self._server: asyncio.Server | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all("close")
        assert self._flowing is not None
        self._flowing.set()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    # --- controls (from any thread) ----------------------------------------------------

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def down(self) -> None:
        self._down = True
        self._call(self._cut_all("down"))

    def up(self) -> None:
        self._down = False

    def stall(self) -> None:
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def flow(self) -> None:
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.set)

    def cut_all(self) -> int:
        """Resets every open connection; returns how many."""
        return int(self._call(self._cut_all("cut_all")))

    def cut_when(self, kind: str | None, probability: float = 1.0, limit: int = 1 << 30) -> None:
        """Resets connections at protocol events of ``kind`` (None: stop), at most ``limit``."""
        self._cut_kind, self._cut_probability, self._cut_limit = kind, probability, limit

    @property
    def open_connections(self) -> int:
        return sum(1 for c in list(self._conns) if not c.closed)

    @property
    def in_transaction(self) -> bool:
        """Some client is inside an open transaction (as the server last reported)."""
        return any(c.stream.status == b"T" for c in list(self._conns) if not c.closed)

    # --- the loop side -----------------------------------------------------------------

    async def _cut_all(self, why: str) -> int:
        return self._reset_all(why)

    def _reset_all(self, why: str) -> int:
        count = 0
        for conn in list(self._conns):
            if not conn.closed:
                self._close(conn, why)
                count += 1
        return count

    def _close(self, conn: _Conn, why: str | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        in_tx = conn.stream.status in (b"T", b"E")
        if why is not None and why != "close":
            self.stats.cuts[why] += 1
            if in_tx:
                self.stats.cut_in_transaction += 1
            _reset(conn.client)
            _reset(conn.upstream)
        else:
            if in_tx and why is None:
                self.stats.client_gone_in_transaction += 1
            for writer in (conn.client, conn.upstream):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._numbers += 1
        conn = _Conn(self._numbers, writer)
        if self._down:
            self.stats.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream_port), 5
            )
        except (OSError, TimeoutError):
            self.stats.refused += 1
            _reset(writer)
            return
        conn.upstream = up_writer
        self.stats.accepted += 1
        self._conns.add(conn)
        tasks = [
            asyncio.create_task(self._pump_up(conn, reader, up_writer)),
            asyncio.create_task(self._pump_down(conn, up_reader, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self._close(conn, None)

    async def _gate(self) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
        if self._delay:
            await asyncio.sleep(self._delay)

    async def _pump_up(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not conn.closed:
            data = await reader.read(65536)
            if not data:
                return
            await self._gate()
            if conn.closed:
                return
            self.stats.bytes_up += len(data)
            writer.write(data)
            await writer.drain()

    async def _pump_down(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = conn.stream
        while not conn.closed:
            data = await reader.read(65536)
            if not data:
                return
            await self._gate()
            if conn.closed:
                return
            stream.buffer += data
            out = bytearray()
            consumed = 0
            cut = False
            for kind, message in stream.messages():
                if self._should_cut(stream, kind, message):
                    cut = True
                    break
                if kind == ord("Z"):
                    stream.status = message[5:6]
                out += message
                consumed += len(message)
            del stream.buffer[:consumed]
            self.stats.bytes_down += len(out)
            if out:
                writer.write(bytes(out))
            if cut:
                # What came before the event reaches the client; the event itself never does.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.drain(), 1)
                assert self._cut_kind is not None
                self._close(conn, self._cut_kind)
                return
            await writer.drain()

    def _should_cut(self, stream: _ServerStream, kind: int, message: bytes) -> bool:
        if self._cut_kind is None or self._cut_limit <= 0:
            return False
        if self._cut_kind == CUT_IN_TRANSACTION:
            hit = kind == ord("Z") and message[5:6] == b"T"
        elif self._cut_kind == CUT_AFTER_COMMIT:
            hit = kind == ord("C") and message[5:].startswith(b"COMMIT")
        else:
            hit = False
        if hit and self._rng.random() < self._cut_probability:
            self._cut_limit -= 1
            if self._cut_kind == CUT_AFTER_COMMIT:
                stream.status = b"I"  # committed: not a cut inside a transaction
            else:
                stream.status = b"T"
            return True
        return False


class SilentServer:
    """Accepts TCP connections and never answers (a Collector that hangs)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-silent", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)  # never read, never closed until the end

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()


class FakeCollector:
    """A healthy OTLP/gRPC receiver (traces and metrics) that answers at once and counts."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import (
            metrics_service_pb2,
            metrics_service_pb2_grpc,
        )
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        collector = self
        self.spans = 0
        self.metric_exports = 0

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.spans += sum(
                    len(scope.spans)
                    for resource in request.resource_spans
                    for scope in resource.scope_spans
                )
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.metric_exports += 1
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        add_traces = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(Traces(), self._server)  # type: ignore[no-untyped-call]
        add_metrics(Metrics(), self._server)  # type: ignore[no-untyped-call]
        self.port = int(self._server.add_insecure_port("127.0.0.1:0"))

    def __enter__(self) -> FakeCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait(10)


def refused_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


# --- real processes ------------------------------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any OTEL_/CHATTER_/DATABASE_URL setting, plus ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "CHATTER_")) and k != "DATABASE_URL"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class ServiceProcess:
    """``python -m chatter_otel.cli serve`` as a real process on a private port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    _log_handle: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def launch(cls, env: Mapping[str, str], log: Path) -> ServiceProcess:
        """Starts the process without waiting (see ``wait_ready``)."""
        port = free_port()
        handle = open(log, "ab")  # noqa: SIM115 - closed by stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "chatter_otel.cli", "serve", "--port", str(port)],
            env=dict(env),
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(process, port, log, handle)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve not ready within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    @classmethod
    def start(cls, env: Mapping[str, str], log: Path) -> ServiceProcess:
        service = cls.launch(env, log)
        service.wait_ready()
        return service

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until exit). Killed if it overstays."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"serve still running {timeout} s after SIGTERM:\n{self.tail()}"
            ) from None
        self._log_handle.close()
        return code, time.monotonic() - started

    def stop(self) -> None:
        """SIGKILL if still running (cleanup only)."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(Exception):
            self._log_handle.close()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def serving(env: Mapping[str, str], log: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess.start(env, log)
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def serving_many(
    envs: Sequence[Mapping[str, str]], logs: Sequence[Path]
) -> Iterator[list[ServiceProcess]]:
    """Several services started at once (their imports overlap), all stopped at the end."""
    services: list[ServiceProcess] = []
    try:
        for env, log in zip(envs, logs, strict=True):
            services.append(ServiceProcess.launch(env, log))
        for service in services:
            service.wait_ready()
        yield services
    finally:
        for service in services:
            service.stop()


def service_env(
    database_url: str, spool: Path, *, writeback_url: str | None = None, **extra: str
) -> dict[str, str]:
    """A production-like configuration: defaults except where the test says otherwise."""
    env = clean_env(
        DATABASE_URL=database_url,
        CHATTER_OTEL_WRITEBACK_SPOOL=str(spool),
        CHATTER_OTEL_LOG_LEVEL="INFO",
        XDG_STATE_HOME=str(spool.parent / "state"),
    )
    if writeback_url is not None:
        env["CHATTER_OTEL_WRITEBACK_URL"] = writeback_url
    env.update(extra)
    return env


@dataclass
class Worker:
    """A Python script of tests/fault_workers run as a process; it reports JSON lines."""

    process: subprocess.Popen[str]
    lines: list[dict[str, Any]]
    _reader: threading.Thread

    log: Path

    @classmethod
    def start(cls, script: str, log: Path, *args: str) -> Worker:
        with open(log, "ab") as err:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "fault_workers" / script), *args],
                cwd=REPO,
                env=clean_env(PYTHONPATH=str(REPO)),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        lines: list[dict[str, Any]] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return cls(process, lines, reader, log)

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def wait_report(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.err()}")
            return bool(self.lines) and predicate(self.last)

        wait_for(seen, timeout, 0.02, "worker report")

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(10)
        self._reader.join(5)
        return code

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"worker still running after {timeout} s: {self.err()}") from None
        self._reader.join(5)
        return code

    def err(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# --- a chat load through the HTTP API ------------------------------------------------------


@dataclass(frozen=True)
class Request:
    conversation: str
    started: float
    """time.monotonic() at send."""
    seconds: float
    status: int
    """HTTP status, 0 for a transport error."""
    message_id: str | None
    error: str = ""
    """The transport error (exception type) when there was no HTTP answer."""


def create_conversations(base_url: str, count: int, tag: str = "load") -> list[str]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        r = client.post(
            "/api/v1/users", json={"username": f"{tag}-{os.getpid()}", "email": f"{tag}@x.test"}
        )
        assert r.status_code == 201, r.text
        user = r.json()["id"]
        ids = []
        for index in range(count):
            r = client.post("/api/v1/conversations", json={"user_id": user, "title": f"c{index}"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


class ChatLoad:
    """One thread per conversation posting chat turns one after the other (a user waits
    for the answer before writing again) until stopped, ``max_turns`` or ``max_seconds``.

    ``targets`` rotates the turns of each conversation over several services (a load
    balancer in front of replicas). Every ``tool_every``-th turn asks for a computation: the
    offline model calls the calculator, a turn of two model calls (0: never).
    """

    def __init__(
        self,
        targets: Sequence[str],
        conversations: Sequence[str],
        *,
        pause: float = 0.0,
        max_turns: int = 10_000,
        max_seconds: float = 120.0,
        timeout: float = 60.0,
        tool_every: int = 3,
    ) -> None:
        self.targets = list(targets)
        self.tool_every = tool_every
        self.conversations = list(conversations)
        self.pause, self.max_turns, self.max_seconds = pause, max_turns, max_seconds
        self.timeout = timeout
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index, cid), daemon=True)
            for index, cid in enumerate(self.conversations)
        ]

    def __enter__(self) -> ChatLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def wait(self) -> None:
        """Until every conversation has run its turns (or its time)."""
        for thread in self._threads:
            thread.join(self.max_seconds + self.timeout + 5)

    def _run(self, index: int, cid: str) -> None:
        clients = [httpx.Client(base_url=t, timeout=self.timeout) for t in self.targets]
        # From the first request: on a loaded machine creating the clients (their TLS
        # contexts) alone took longer than a short load window.
        deadline = time.monotonic() + self.max_seconds
        try:
            for turn in range(self.max_turns):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                client = clients[(index + turn) % len(clients)]
                started = time.monotonic()
                status, mid, error = 0, None, ""
                try:
                    r = client.post(
                        f"/api/v1/conversations/{cid}/messages",
                        json={"content": self._text(index, turn)},
                    )
                    status = r.status_code
                    if status == 201:
                        mid = r.json()["id"]
                except httpx.HTTPError as exc:
                    status, error = 0, type(exc).__name__
                seconds = time.monotonic() - started
                with self._lock:
                    self.requests.append(Request(cid, started, seconds, status, mid, error))
                if status != 201:
                    self._stop.wait(0.05)  # a failing service: do not spin
                elif self.pause:
                    self._stop.wait(self.pause)
        finally:
            for client in clients:
                client.close()

    def _text(self, index: int, turn: int) -> str:
        if self.tool_every and turn % self.tool_every == self.tool_every - 1:
            return f"turn {turn} of conversation {index}, compute {turn} * 7 + {index}"
        return f"turn {turn} of conversation {index}, hello"

    def done(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.status == 201)

    def window(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if start <= r.started < end]


def metric(base_url: str, name: str) -> float:
    """Sum of a metric's samples on the service's Prometheus endpoint (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Window:
    requests: int
    succeeded: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def error_ratio(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, {self.succeeded} ok, {self.failed} failed "
            f"(error ratio {self.error_ratio:.1%}), p50 {self.p50_ms:.0f} ms, "
            f"p99 {self.p99_ms:.0f} ms, max {self.max_ms:.0f} ms"
        )


def summarize(requests: Sequence[Request]) -> Window:
    ms = [r.seconds * 1000 for r in requests]
    ok = sum(1 for r in requests if r.status == 201)
    return Window(
        len(requests),
        ok,
        len(requests) - ok,
        percentile(ms, 50),
        percentile(ms, 99),
        max(ms, default=0.0),
    )


# --- spool files ------------------------------------------------------------------------


def spool_records(directory: Path) -> int:
    """Records waiting in spool files (lines of ``*.jsonl`` but their header lines)."""
    if not directory.exists():
        return 0
    return sum(
        sum(1 for line in p.read_bytes().splitlines() if b'"chatter_otel_spool"' not in line)
        for p in directory.glob("*.jsonl")
    )
