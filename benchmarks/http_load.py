"""Part 5: requests per second of the reference service's chat endpoint, telemetry on vs off.

The service runs as a real process (``python -m chatter_otel.cli serve``, uvicorn, one event
loop) on a private PostgreSQL database, configured only through the environment as an
operator would. A load generator in another process (wrk when installed, else a small
asyncio/httpx generator) posts chat messages on loopback for a bounded time; every response
must be a 201.

Variants, all started once and measured interleaved:

off         ``OTEL_SDK_DISABLED=true``: chatter-otel installs nothing (the baseline).
on          the embedded defaults with a database: server spans, chatter-otel spans and
            metrics (Prometheus ``/metrics``), log correlation, and the write-back into the
            same database.
on+oi       on plus openinference's LangChain instrumentation
            (``CHATTER_OTEL_INSTRUMENT_LANGCHAIN=true``, off by default).

Requests alternate a plain prompt and a tool-calling prompt over 64 conversations, so
concurrent requests rarely wait for the same conversation's row lock.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import URL

from benchmarks import _db
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, percentile, ratio, shuffled
from benchmarks.turn_overhead import PROMPTS

NAME = "http"
TITLE = "HTTP chat endpoint, service process under load"
CONVERSATIONS = 64
CONNECTIONS = 8


@dataclass
class Service:
    key: str
    label: str
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    db: URL | None = None
    conversations: list[str] = field(default_factory=list)


VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("off", "OTEL_SDK_DISABLED=true", {"OTEL_SDK_DISABLED": "true"}),
    ("on", "embedded defaults + write-back", {}),
    (
        "on+oi",
        "on, CHATTER_OTEL_INSTRUMENT_LANGCHAIN=true",
        {"CHATTER_OTEL_INSTRUMENT_LANGCHAIN": "true"},
    ),
    (
        "on-no-fastapi",
        "on, CHATTER_OTEL_INSTRUMENT_FASTAPI=false",
        {"CHATTER_OTEL_INSTRUMENT_FASTAPI": "false"},
    ),
    ("on-no-wb", "on, CHATTER_OTEL_WRITEBACK=false", {"CHATTER_OTEL_WRITEBACK": "false"}),
)


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms: float = float("nan")
    """Service process CPU (user + system, all threads) per request."""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(service: Service, db: URL, logdir: Path) -> None:
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
    base = f"http://127.0.0.1:{service.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"service {service.key} exited; see its log")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError(f"service {service.key} did not become healthy")
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.post(
            "/api/v1/users", json={"username": f"bench-{service.key}", "email": "b@bench.invalid"}
        )
        r.raise_for_status()
        user = r.json()["id"]
        for n in range(CONVERSATIONS):
            r = client.post("/api/v1/conversations", json={"user_id": user, "title": f"bench {n}"})
            r.raise_for_status()
            service.conversations.append(r.json()["id"])


def _stop(service: Service) -> None:
    proc = service.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully; telemetry flushes
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wrk_script(path: Path, conversations: list[str]) -> None:
    bodies = [json.dumps({"content": p}) for p in PROMPTS.values()]
    ids = ", ".join(f'"{c}"' for c in conversations)
    path.write_text(
        f"local ids = {{{ids}}}\n"
        f"local bodies = {{{', '.join(repr(b) for b in bodies)}}}\n"
        "local i = 0\n"
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


def _wrk(service: Service, seconds: float, script: Path) -> Load:
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
            "--latency", "-s", str(script), f"http://127.0.0.1:{service.port}",
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Load(
        rps,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        requests,
        errors,
    )


# --- fallback generator (no wrk): its own process, asyncio + httpx ------------------------


async def _py_load_async(base: str, ids: list[str], seconds: float) -> tuple[int, int, list[float]]:
    bodies = [{"content": p} for p in PROMPTS.values()]
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                counter += 1
                cid = ids[counter % len(ids)]
                t0 = time.perf_counter()
                r = await client.post(
                    f"/api/v1/conversations/{cid}/messages", json=bodies[counter % len(bodies)]
                )
                latencies.append((time.perf_counter() - t0) * 1e3)
                if r.status_code != 201:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return len(latencies), errors, latencies


def _py_load_child(base: str, ids: list[str], seconds: float, out: Any) -> None:
    out.put(asyncio.run(_py_load_async(base, ids, seconds)))


def _py_load(service: Service, seconds: float) -> Load:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(
        target=_py_load_child,
        args=(f"http://127.0.0.1:{service.port}", service.conversations, seconds, out),
        daemon=True,
    )
    t0 = time.perf_counter()
    proc.start()
    count, errors, latencies = out.get(timeout=seconds + 120)
    proc.join(30)
    elapsed = max(seconds, time.perf_counter() - t0 - 0.0)
    return Load(
        count / seconds if elapsed else 0.0,
        percentile(latencies, 50),
        percentile(latencies, 99),
        count,
        errors,
    )


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    rng = random.Random(options.seed)
    # Five pairs: three let one slow stretch of a shared machine move the median by 5 %.
    reps = options.pick(5, 1)
    seconds = options.pick(6.0, 3.0)
    use_wrk = shutil.which("wrk") is not None
    logdir = Path(tempfile.mkdtemp(dir=options.workdir, prefix="http-"))
    services = [Service(key, label, env) for key, label, env in VARIANTS]
    script = logdir / "chat.lua"
    results: dict[str, list[Load]] = {s.key: [] for s in services}
    written = total = -1
    with ExitStack() as stack:
        for service in services:
            db = stack.enter_context(
                _db.private_database(options.server, f"http_{service.key.replace('-', '_')}")
            )
            stack.callback(_stop, service)
            _start(service, db, logdir)

        def load(service: Service, duration: float) -> Load:
            assert service.proc is not None
            cpu0 = _cpu_s(service.proc.pid)
            if use_wrk:
                _wrk_script(script, service.conversations)
                result = _wrk(service, duration, script)
            else:
                result = _py_load(service, duration)
            cpu = _cpu_s(service.proc.pid) - cpu0
            result.cpu_ms = 1e3 * cpu / max(1, result.requests)
            return result

        for service in services:  # warm-up: imports, pools, JIT-less caches
            load(service, options.pick(3.0, 1.0))
        for _ in range(reps):
            for service in shuffled(services, rng):
                results[service.key].append(load(service, seconds))
        on = next(s for s in services if s.key == "on")
        _stop(on)
        assert on.db is not None
        total = _db.scalar(on.db, "SELECT COUNT(*) FROM messages WHERE role = 'ASSISTANT'")
        written = _db.scalar(
            on.db,
            "SELECT COUNT(*) FROM messages WHERE role = 'ASSISTANT' AND total_tokens IS NOT NULL",
        )
        for service in services:
            _stop(service)

    off = results["off"]
    for service in services:
        loads = results[service.key]
        s = Summary.of([x.rps for x in loads])
        p50 = Summary.of([x.p50_ms for x in loads]).median
        p99 = Summary.of([x.p99_ms for x in loads]).median
        errors = sum(x.errors for x in loads)
        cpu = Summary.of([x.cpu_ms for x in loads]).median
        section.add(
            f"HTTP {service.key} ({service.label}): requests/s",
            f"{s.median:,.0f}/s",
            f"{s.low:,.0f}–{s.high:,.0f}, n={s.n}; p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
            f"service CPU {cpu:.1f} ms/request; {errors} non-201/errors",
        )
    for service in services[1:]:
        key = service.key
        rel = Summary.of([x.rps / y.rps for x, y in zip(results[key], off, strict=True)])
        value, spread = rel.fmt(ratio)
        cpu_rel = Summary.of([x.cpu_ms / y.cpu_ms for x, y in zip(results[key], off, strict=True)])
        label = f"HTTP requests/s, {key} / off (service CPU per request: {cpu_rel.median:.2f}×)"
        if key == "on":
            section.check(label, value, spread, "≥ 0.91 (1/1.10)", rel.median >= 1 / 1.10)
        else:
            section.add(label, value, spread, "report")
    section.add(
        "HTTP on: assistant messages carrying usage after shutdown",
        f"{written:,} / {total:,}",
        verdict="met" if written == total and total > 0 else "MISSED",
        target="all",
    )
    generator = (
        f"wrk (1 thread, {CONNECTIONS} connections)"
        if use_wrk
        else f"asyncio/httpx generator process ({CONNECTIONS} concurrent requests; wrk not installed)"
    )
    section.notes += [
        f"Load generator: {generator}, {seconds:.0f} s per run, {reps} runs per variant in "
        "shuffled order after a warm-up run each; all the services stay up for the whole "
        "part, each on its own database, so they see the same growth of their tables.",
        "Service: `python -m chatter_otel.cli serve` (uvicorn, one process), DATABASE_URL "
        "postgresql+asyncpg on the shared PostgreSQL, offline model with no latency: the "
        "request is pure service CPU, the worst case for any overhead. Client, service and "
        "PostgreSQL share this machine's cores.",
        "The ratio target is the issue's 1.10 budget expressed as throughput (1/1.10). The "
        "no-fastapi and no-wb variants take one component away from on at a time, so the "
        "differences locate the cost; service CPU per request is the service process's user + "
        "system time (all its threads) over the run divided by the requests served.",
    ]
    return section
