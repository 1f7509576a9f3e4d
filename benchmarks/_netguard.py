"""Keeps a benchmark process off the network: loopback only, every other attempt counted.

The peers reach out by default (OpenLIT downloads its pricing JSON from GitHub and exports
over OTLP; traceloop-sdk sends its own usage telemetry and exports to its cloud). The peer
runner installs this guard before it imports anything else, so even an import-time request
is refused, quickly (no DNS timeout) and visibly: the table reports the count per variant,
which must be 0 once each peer is configured offline.

Refused: a name lookup of anything but a loopback name or address, and a connect to a
non-loopback address (blocking or not, so asyncio's connects are covered). Unix sockets pass.
Sockets a C extension opens itself (gRPC's core) bypass the ``socket`` module and are not
seen: every timed variant exports in memory, and no peer here exports over gRPC by default.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import traceback
from collections import Counter
from typing import Any

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

refused: Counter[str] = Counter()
"""Refused attempts by ``host:port`` (or ``lookup host``)."""
loopback: Counter[str] = Counter()
"""Connections allowed, by loopback ``host:port``: the fake server's port is expected."""
callers: dict[str, str] = {}
"""For each refused target, the innermost frames outside this module that tried it."""
_lock = threading.Lock()
_installed = False


class NetworkBlocked(OSError):
    """Raised where a connection or a lookup would have left the machine."""


def _is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0]
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(target: str) -> NetworkBlocked:
    stack = traceback.extract_stack()[:-3]
    where = " < ".join(
        f"{frame.filename.rsplit('/site-packages/', 1)[-1]}:{frame.lineno}"
        for frame in reversed(stack[-6:])
    )
    with _lock:
        refused[target] += 1
        callers.setdefault(target, where)
    return NetworkBlocked(f"network access blocked by the benchmark's guard: {target}")


def install() -> None:
    """Patch ``socket`` in place (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    real_gethostbyname = socket.gethostbyname

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = address[0], address[1]
            if not _is_loopback(host):
                raise _refuse(f"{host}:{port}")
            with _lock:
                loopback[f"{host}:{port}"] += 1

    def connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback(host):
            raise _refuse(f"lookup {host!s}:{port}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not _is_loopback(host):
            raise _refuse(f"lookup {host}")
        return real_gethostbyname(host)

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname


def report() -> dict[str, Any]:
    with _lock:
        return {
            "refused": sum(refused.values()),
            "targets": dict(refused),
            "callers": dict(callers),
            "loopback": dict(loopback),
        }
