"""Load generators for the HTTP part: a long-lived asyncio/httpx process, and wrk.

The Python generator lives for the whole part in its own process, so no window pays for
importing httpx, and it takes three orders:

- ``fixed_rate``: an open loop sending request ``i`` to each of several services at
  ``i / rate`` seconds (the services staggered) whatever the earlier ones are doing, for a fixed
  count. Every variant serves the same requests at the same pace, below saturation, so its CPU
  per request is not bent by queueing, and the latency is measured from when the request was
  due (no coordinated omission).
- ``closed_count``: each of several services gets a fixed count, ``concurrency`` at a time,
  all services at once (the warm-up).
- ``closed_duration``: as many requests as fit in the time (saturated throughput without wrk).

Request ``i`` goes to conversation ``i % len(ids)`` with prompt ``i % 2`` of ``PROMPTS``; every
window's count is a multiple of ``2 * len(ids)``, so every variant serves the same sequence.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from benchmarks._stats import percentile
from benchmarks.turn_overhead import PROMPTS

BODIES = tuple({"content": p} for p in PROMPTS.values())
MAX_IN_FLIGHT = 2
"""Per service at a fixed rate. A service that falls behind (a busy machine) then serves at
most two requests at a time instead of a growing queue: no pool overflow connections, no two
requests on one conversation, so its CPU per request stays that of an unsaturated service; the
lag shows in the latency, measured from when each request was due."""


@dataclass(frozen=True)
class Load:
    """One window of load against one service, as the generator saw it."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


def _path(ids: Sequence[str], i: int) -> str:
    return f"/api/v1/conversations/{ids[i % len(ids)]}/messages"


def _client(base: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base, timeout=30, limits=limits)


def _load(latencies: list[float], errors: int, seconds: float) -> Load:
    return Load(
        len(latencies), errors, seconds, percentile(latencies, 50), percentile(latencies, 99)
    )


async def _fixed_rate(targets: list[tuple[str, list[str]]], rate: float, count: int) -> list[Load]:
    """``count`` requests to each target at ``rate`` each, the targets staggered evenly."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def drive(base: str, ids: list[str], offset: float) -> Load:
        latencies: list[float] = []
        errors = 0
        async with _client(base, MAX_IN_FLIGHT) as client:

            async def one(i: int, due: float) -> None:
                nonlocal errors
                async with gate:
                    try:
                        r = await client.post(_path(ids, i), json=BODIES[i % len(BODIES)])
                        errors += r.status_code != 201
                    except httpx.HTTPError:
                        errors += 1
                latencies.append((loop.time() - due) * 1e3)

            gate = asyncio.Semaphore(MAX_IN_FLIGHT)
            tasks = []
            for i in range(count):
                due = t0 + offset + i / rate
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(i, due)))
            await asyncio.gather(*tasks)
        return _load(latencies, errors, loop.time() - t0 - offset)

    step = 1 / (rate * len(targets))
    return await asyncio.gather(
        *(drive(base, ids, k * step) for k, (base, ids) in enumerate(targets))
    )


async def _closed(
    base: str, ids: list[str], concurrency: int, count: int | None, deadline: float | None
) -> Load:
    latencies: list[float] = []
    errors = 0
    issued = 0
    t0 = time.perf_counter()
    async with _client(base, concurrency) as client:

        async def worker() -> None:
            nonlocal errors, issued
            while (count is None or issued < count) and (
                deadline is None or time.perf_counter() < deadline
            ):
                i, issued = issued, issued + 1
                start = time.perf_counter()
                try:
                    r = await client.post(_path(ids, i), json=BODIES[i % len(BODIES)])
                    errors += r.status_code != 201
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - start) * 1e3)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _load(latencies, errors, time.perf_counter() - t0)


async def _closed_count(targets: list[tuple[str, list[str]]], concurrency: int, count: int) -> Any:
    return await asyncio.gather(
        *(_closed(base, ids, concurrency, count, None) for base, ids in targets)
    )


async def _closed_duration(base: str, ids: list[str], concurrency: int, seconds: float) -> Load:
    return await _closed(base, ids, concurrency, None, time.perf_counter() + seconds)


_ORDERS: dict[str, Any] = {
    "fixed_rate": _fixed_rate,
    "closed_count": _closed_count,
    "closed_duration": _closed_duration,
}


def _serve(conn: Connection) -> None:
    while (order := conn.recv()) is not None:
        kind, kwargs = order
        conn.send(asyncio.run(_ORDERS[kind](**kwargs)))


class Generator:
    """The generator process; each call blocks until the load it ordered is done."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def _ask(self, kind: str, timeout: float, **kwargs: Any) -> Any:
        self._conn.send((kind, kwargs))
        if not self._conn.poll(timeout):
            raise TimeoutError(f"load generator: no answer to {kind} in {timeout:.0f} s")
        return self._conn.recv()

    def fixed_rate(
        self, targets: list[tuple[str, list[str]]], rate: float, count: int
    ) -> list[Load]:
        return self._ask(  # type: ignore[no-any-return]
            "fixed_rate", count / rate + 120, targets=targets, rate=rate, count=count
        )

    def closed_count(
        self, targets: list[tuple[str, list[str]]], concurrency: int, count: int
    ) -> list[Load]:
        return self._ask(  # type: ignore[no-any-return]
            "closed_count", 600, targets=targets, concurrency=concurrency, count=count
        )

    def closed_duration(self, base: str, ids: list[str], concurrency: int, seconds: float) -> Load:
        return self._ask(  # type: ignore[no-any-return]
            "closed_duration",
            seconds + 120,
            base=base,
            ids=ids,
            concurrency=concurrency,
            seconds=seconds,
        )

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


# --- wrk: saturated throughput -------------------------------------------------------------


def wrk_script(path: Path, ids: Sequence[str]) -> None:
    """A wrk script posting the same sequence the Python generator posts."""
    bodies = ", ".join(repr(json.dumps(b)) for b in BODIES)
    quoted = ", ".join(f'"{c}"' for c in ids)
    path.write_text(
        f"local ids = {{{quoted}}}\n"
        f"local bodies = {{{bodies}}}\n"
        "local i = -1\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n"
        "  i = i + 1\n"
        '  local path = "/api/v1/conversations/" .. ids[(i % #ids) + 1] .. "/messages"\n'
        "  return wrk.format(nil, path, nil, bodies[(i % #bodies) + 1])\n"
        "end\n"
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def _int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def wrk(base: str, script: Path, connections: int, seconds: float) -> Load:
    """``wrk`` for ``seconds`` (whole seconds) with one thread."""
    duration = max(1, round(seconds))
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
            "--latency", "-s", str(script), base,
        ],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout  # fmt: skip
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    errors = _int(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    elapsed = re.search(r"requests in ([\d.]+)(us|ms|s)", out)
    return Load(
        _int(r"(\d+) requests in", out),
        errors,
        _ms(elapsed.group(1) + elapsed.group(2)) / 1e3 if elapsed else float(duration),
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
    )
