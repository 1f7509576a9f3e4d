"""A loopback TCP proxy that follows the PostgreSQL protocol, so a fault test can stall,
refuse or cut connections at exact points of a transaction. Contains no tests itself.

It binds to 127.0.0.1; every wait is bounded; its threads stop with its context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# The throwaway server of the write-back outage test, reused rather than duplicated.

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
