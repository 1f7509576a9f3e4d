"""Part 5: what telemetry costs the reference service's chat endpoint, in CPU per request.

The service runs as a real process (``python -m chatter_otel.cli serve``, uvicorn, one event
loop) on a private PostgreSQL database, configured only through the environment as an
operator would. The primary figure is the service process's CPU (user + system, every thread
and child, from ``/proc``) per completed request at a fixed offered rate, with telemetry on
divided by off. Throughput under saturation swung 0.84×–1.00× between two runs of the same
code: on a shared two-core machine it measures the neighbours as much as the service. CPU per
request is not charged for the time a neighbour holds the core, and at a fixed rate every
variant serves the same requests at the same pace, without queueing.

Variants, all started once; each round runs off, on and one of the others (in turn) at the
same time, so on and off always share the same neighbours:

off            ``OTEL_SDK_DISABLED=true``: chatter-otel installs nothing (the baseline).
on             the embedded defaults with a database: server spans, chatter-otel spans and
               metrics (Prometheus ``/metrics``), log correlation, and the write-back into the
               same database.
on+oi          on plus openinference's LangChain instrumentation.
on-no-fastapi  on without the FastAPI server spans.
on-no-wb       on without the write-back.

Decisiveness is built in: rounds are split into a first and a second half in time, and rounds
are added (up to ``CHATTER_BENCH_HTTP_BUDGET`` seconds for the part) until the two halves'
on/off ratios agree within 5 %; the table says whether they did.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _db
from benchmarks._http_gen import Generator, Load, wrk, wrk_script
from benchmarks._http_service import Backends, Service, launch, ready, stop, tree_cpu
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, halves, ratio, relative_gap, shuffled
from chatter_otel.service.chat import HISTORY_LIMIT

NAME = "http"
TITLE = "HTTP chat endpoint, service process CPU per request"
CONVERSATIONS = 8
"""Few enough that a short warm-up fills every history; with ``SATURATION_CONNECTIONS``
requests in flight, two rarely wait for the same conversation's row lock."""
SATURATION_CONNECTIONS = 4
UTILISATION = 0.2
"""Offered rate per service as a share of one core for off: three services at once, the
slowest (on+oi) about 1.4 times off, stay under one of two cores together."""
WINDOW_S = 6.0
SETTLE_S = 1.5
"""After a window's last response: the write-back's flush interval (1 s) and a poll."""
AGREEMENT = 0.05
BUDGET_ENV = "CHATTER_BENCH_HTTP_BUDGET"

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


@dataclass(frozen=True)
class Window:
    """One fixed-rate window of one variant."""

    load: Load
    cpu_ms: float
    """Service CPU per completed request."""
    db_ms: float
    """CPU of the PostgreSQL backends serving the service's database, per request."""


@dataclass
class Plan:
    rate: float = 0.0
    count: int = 0
    rounds: list[dict[str, Window]] = field(default_factory=list)
    saturated: dict[str, list[Window]] = field(default_factory=dict)
    generator_share: float = float("nan")
    """The Python generator's CPU over the rounds' wall time (share of one core)."""


def _budget(options: Options) -> float:
    raw = os.environ.get(BUDGET_ENV)
    return float(raw) if raw else options.pick(340.0, 90.0)


def _ratios(rounds: list[dict[str, Window]], key: str, db: bool = False) -> list[float]:
    """The variant's CPU per request over off's, per round it ran in."""

    def cpu(w: Window) -> float:
        return w.cpu_ms + (w.db_ms if db else 0.0)

    return [cpu(r[key]) / cpu(r["off"]) for r in rounds if key in r]


def _measure(
    gen: Generator, backends: Backends, services: list[Service], rate: float, count: int
) -> dict[str, Window]:
    """One window: the services under the same fixed rate at the same time."""
    running = [(s, s.proc.pid, str(s.db.database)) for s in services if s.proc and s.db]
    before = [(tree_cpu(pid), backends.snapshot(database)) for _, pid, database in running]
    loads = gen.fixed_rate([(s.base, s.conversations) for s in services], rate, count)
    time.sleep(SETTLE_S)
    windows = {}
    for (service, pid, database), (cpu0, db0), load in zip(running, before, loads, strict=True):
        cpu = tree_cpu(pid) - cpu0
        db = Backends.spent(db0, backends.snapshot(database))
        done = max(1, load.requests)
        windows[service.key] = Window(load, 1e3 * cpu / done, 1e3 * db / done)
    return windows


def _saturate(
    gen: Generator, backends: Backends, service: Service, script: Path, seconds: float
) -> Window:
    """One service alone as fast as it goes: wrk when installed, else the Python generator."""
    assert service.proc is not None and service.db is not None
    pid, database = service.proc.pid, str(service.db.database)
    cpu0, db0 = tree_cpu(pid), backends.snapshot(database)
    if shutil.which("wrk"):
        wrk_script(script, service.conversations)
        load = wrk(service.base, script, SATURATION_CONNECTIONS, seconds)
    else:
        load = gen.closed_duration(
            service.base, service.conversations, SATURATION_CONNECTIONS, seconds
        )
    time.sleep(SETTLE_S)
    cpu, db = tree_cpu(pid) - cpu0, Backends.spent(db0, backends.snapshot(database))
    done = max(1, load.requests)
    return Window(load, 1e3 * cpu / done, 1e3 * db / done)


def _decided(rounds: list[dict[str, Window]], minimum: int) -> bool:
    if len(rounds) < max(2, minimum):
        return False
    first, second = halves(_ratios(rounds, "on"))
    return relative_gap(Summary.of(first).median, Summary.of(second).median) <= AGREEMENT


def _exercise(options: Options, plan: Plan, logdir: Path) -> tuple[list[Service], int, int]:
    rng = random.Random(options.seed)
    started = time.monotonic()
    budget = _budget(options)
    services = [Service(key, label, env) for key, label, env in VARIANTS]
    minimum = options.reps or options.pick(16, 4)
    maximum = max(minimum, 60)
    saturation_reps, saturation_s = options.pick(2, 1), options.pick(4.0, 2.0)
    with ExitStack() as stack:
        for service in services:
            db = stack.enter_context(
                _db.private_database(options.server, f"http_{service.key.replace('-', '_')}")
            )
            stack.callback(stop, service)
            launch(service, db, logdir)
        for service in services:
            ready(service, CONVERSATIONS)
        gen = Generator()
        stack.callback(gen.close)
        backends = Backends(options.server)
        stack.callback(backends.close)

        # Warm-up, every service at once: imports, pools, and every conversation's history
        # filled to the service's limit, so per-request work is flat from the first window.
        off = services[0]
        assert off.proc is not None
        cpu0 = tree_cpu(off.proc.pid)
        warm = options.pick(CONVERSATIONS * (HISTORY_LIMIT // 2 + 2), 2 * CONVERSATIONS)
        gen.closed_count([(s.base, s.conversations) for s in services], 4, warm)
        calibration = (tree_cpu(off.proc.pid) - cpu0) / warm
        block = 2 * CONVERSATIONS
        plan.rate = round(min(400.0, max(2.0, UTILISATION / max(calibration, 1e-4))), 1)
        plan.count = max(block, round(plan.rate * options.pick(WINDOW_S, 2.0) / block) * block)

        round_s = plan.count / plan.rate + SETTLE_S + 0.3
        tail_s = saturation_reps * len(services) * (saturation_s + SETTLE_S + 0.5) + 15
        gen0, wall0 = tree_cpu(gen.pid), time.monotonic()
        while len(plan.rounds) < maximum and not _decided(plan.rounds, minimum):
            spent = time.monotonic() - started
            if len(plan.rounds) >= 2 and spent + round_s + tail_s > budget:
                break
            # Every round pairs on with off; the other variants take turns as a third.
            extra = services[2 + len(plan.rounds) % (len(services) - 2)]
            together = shuffled([*services[:2], extra], rng)  # who leads the stagger
            windows = _measure(gen, backends, together, plan.rate, plan.count)
            plan.rounds.append(windows)

        plan.generator_share = (tree_cpu(gen.pid) - gen0) / (time.monotonic() - wall0)

        # Secondary: saturation, after the primary rounds so that the variants' unequal
        # request counts here cannot change their tables before it.
        script = logdir / "chat.lua"
        plan.saturated = {s.key: [] for s in services}
        for _ in range(saturation_reps):
            for service in shuffled(services, rng):
                plan.saturated[service.key].append(
                    _saturate(gen, backends, service, script, saturation_s)
                )

        on = services[1]
        stop(on)
        assert on.db is not None
        total = _db.scalar(on.db, "SELECT COUNT(*) FROM messages WHERE role = 'ASSISTANT'")
        written = _db.scalar(
            on.db,
            "SELECT COUNT(*) FROM messages WHERE role = 'ASSISTANT' AND total_tokens IS NOT NULL",
        )
    return services, written, total


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if math.isfinite(x) else "n/a"


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    logdir = Path(tempfile.mkdtemp(dir=options.workdir, prefix="http-"))
    plan = Plan()
    services, written, total = _exercise(options, plan, logdir)
    rounds = plan.rounds
    n = len(rounds)
    for service in services:
        key = service.key
        windows = [r[key] for r in rounds if key in r]
        cpu = Summary.of([w.cpu_ms for w in windows])
        db = Summary.of([w.db_ms for w in windows]).median
        p50 = Summary.of([w.load.p50_ms for w in windows]).median
        p99 = Summary.of([w.load.p99_ms for w in windows]).median
        saturated = plan.saturated[key]
        sat = Summary.of([x.load.rps for x in saturated])
        sat_cpu = Summary.of([x.cpu_ms for x in saturated]).median
        errors = sum(w.load.errors for w in [*windows, *saturated])
        section.add(
            f"HTTP {key} ({service.label}): service CPU per request",
            f"{cpu.median:.2f} ms",
            f"{cpu.low:.2f}–{cpu.high:.2f}, n={cpu.n}; PostgreSQL +{db:.2f} ms; "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms at {plan.rate:g}/s; "
            f"saturated {sat.median:,.1f}/s at {sat_cpu:.2f} ms CPU (n={sat.n}); "
            f"{errors} non-201/errors",
        )
    first, second = halves(_ratios(rounds, "on"))
    a, b = Summary.of(first).median, Summary.of(second).median
    gap = relative_gap(a, b)
    for service in services[1:]:
        key = service.key
        rel = Summary.of(_ratios(rounds, key))
        value, spread = rel.fmt(ratio)
        both = Summary.of(_ratios(rounds, key, db=True)).median
        label = f"HTTP service CPU per request, {key} / off"
        if key == "on":
            spread += f"; halves {ratio(a)} / {ratio(b)}"
            section.check(label, value, spread, "≤ 1.10", rel.median <= 1.10)
        else:
            section.add(label, value, f"{spread}; with PostgreSQL {ratio(both)}", "report")
    section.check(
        "HTTP decisive: on/off CPU per request, first vs second half of the rounds",
        f"agreed within {_pct(gap)}" if gap <= AGREEMENT else f"NOT decisive after {n} rounds",
        f"{ratio(a)} (rounds 1–{n // 2}) vs {ratio(b)} (rounds {n // 2 + 1}–{n}), gap {_pct(gap)}",
        f"≤ {_pct(AGREEMENT)}",
        gap <= AGREEMENT,
    )
    whole = Summary.of(_ratios(rounds, "on", db=True))
    section.add("HTTP service + PostgreSQL CPU per request, on / off", *whole.fmt(ratio), "report")
    pairs = list(zip(plan.saturated["on"], plan.saturated["off"], strict=True))
    sat = Summary.of([x.load.rps / y.load.rps for x, y in pairs])
    section.add("HTTP requests/s saturated, on / off", *sat.fmt(ratio), "report")
    sat = Summary.of([x.cpu_ms / y.cpu_ms for x, y in pairs])
    section.add("HTTP service CPU per request saturated, on / off", *sat.fmt(ratio), "report")
    section.add(
        "HTTP on: assistant messages carrying usage after shutdown",
        f"{written:,} / {total:,}",
        verdict="met" if written == total and total > 0 else "MISSED",
        target="all",
    )
    section.notes += _notes(options, plan, n)
    return section


def _notes(options: Options, plan: Plan, n: int) -> list[str]:
    saturation = (
        f"wrk (1 thread, {SATURATION_CONNECTIONS} connections)"
        if shutil.which("wrk")
        else "the Python generator, closed loop (wrk not installed)"
    )
    return [
        "Primary figure: service CPU per request: user + system time of the service process "
        "(every thread, and any children) read from /proc around each window and its "
        f"{SETTLE_S:g} s settle (the write-back's last flush lands in it), divided by the "
        "requests completed. Time-sliced CPU is not charged for waiting: a neighbour on the "
        "machine delays the service but reaches this figure only through shared caches, "
        "whereas throughput under saturation, the figure this replaced, moved 0.84×–1.00× "
        "between two runs of the same code.",
        f"Side by side: each round runs off, on and one of the other variants (in turn) at the "
        f"same time, each at a fixed {plan.rate:g} requests/s (open loop, staggered; about "
        f"{UTILISATION:.0%} of one core each for off, calibrated on the warm-up), "
        f"{plan.count} requests each; {n} rounds. The ratio is taken per round, so on and off "
        "always share the same neighbours, then the median over the rounds.",
        f"Decisiveness: the rounds split in time into a first and a second half; rounds are "
        f"added while the halves' median on/off ratios differ by more than {_pct(AGREEMENT)} "
        f"(at least {options.reps or options.pick(16, 4)} rounds, within {BUDGET_ENV}="
        f"{_budget(options):g} s for the whole part). The two halves stand in for two runs of "
        "the benchmark; `--reps N` sets the least number of rounds.",
        "No taskset pinning: the three services of a round share the cores with PostgreSQL, "
        "and a service pinned to one core waits behind whatever else the scheduler puts there "
        "(tried: with a loaded two-core machine the pinned services fell behind a 35 % rate "
        "and their latency grew to seconds); the generator took "
        f"{_pct(plan.generator_share)} of one core over the rounds. Hardware instruction "
        "counters (`perf stat -e instructions`) report <not supported> on this virtual machine, "
        "so the figure is CPU time; callgrind counts instructions but slows Python tens of "
        "times, too slow for this part.",
        f"Warm-up: {CONVERSATIONS * (HISTORY_LIMIT // 2 + 2)} requests per service, all at "
        f"once, so each of the {CONVERSATIONS} conversations holds the service's "
        f"{HISTORY_LIMIT}-message history before the first window: per-request work is flat "
        "from then on, and every variant serves the same sequence of requests.",
        "PostgreSQL CPU is that of the backends connected to the service's own database (its "
        "pool and the write-back's connection), read from /proc; it is reported beside the "
        "primary figure, not in it, because the server is shared with others.",
        f"Secondary: latency percentiles at the fixed rate (from when each request was due), "
        f"and saturated requests/s with the CPU per request under saturation, from "
        f"{saturation}, {options.pick(4, 2)} s per variant, {options.pick(2, 1)} time(s) in a "
        "shuffled order after the primary rounds; on a shared machine saturated throughput "
        "moves with the neighbours, so it carries no target.",
        "Service: `python -m chatter_otel.cli serve` (uvicorn, one process), DATABASE_URL "
        "postgresql+asyncpg on the shared PostgreSQL, offline model with no latency: the "
        "request is pure service CPU, the worst case for any overhead.",
    ]
