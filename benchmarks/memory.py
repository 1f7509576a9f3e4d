"""Part 4: the write-back's memory while the database is down, and its recovery.

A service that keeps serving while its database is down must not grow until the kernel kills
it. The processor keeps at most ``max_queue`` records in memory and spools the rest to disk;
this part checks that the resident set stops growing however many spans flow, and that every
record reaches the database exactly once when it comes back.

A throwaway PostgreSQL cluster (``initdb`` on a private port and socket directory, as the
``postgres`` user) is seeded with one message row per turn and stopped. A fresh interpreter
(spawned, so nothing else lives in it) then ends one million spans (250,000 turns of
workflow > chat, execute_tool, chat) into a processor pointed at it, reading its resident set
from ``/proc/self/status`` as the spans flow. The cluster is started again and the child
waits (bounded) until ``force_flush`` reports everything written; the parent then checks every
row: each message's tokens equal what its spans carried, each conversation's totals equal
the sum of its messages, and the ledger holds exactly one row per turn.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from benchmarks import _db
from benchmarks._report import Options, Section
from benchmarks._stats import mib
from benchmarks._turns import SPANS_PER_TURN, total_tokens
from chatter_otel.writeback.assembler import MAX_INDEX as _LATE_INDEX_SPANS

NAME = "memory"
TITLE = "Write-back memory with the database down, and recovery"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TURNS_PER_CONVERSATION = 50


def _id(kind: str, n: int) -> str:
    """Deterministic ULID-shaped ids, so the child can rebuild its turns without the parent
    shipping (and the child holding) a quarter of a million objects."""
    return f"01BENCH{kind}{n:018d}"


def turn(index: int) -> _db.Turn:
    return _db.Turn(index, _id("U", 0), _id("C", index // TURNS_PER_CONVERSATION), _id("M", index))


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    rss = hwm = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


# --- a PostgreSQL cluster of our own ------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL on a private port: stopping it is how the database goes down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.started = False

    def _as_postgres(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[-300:]}")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
            )
            self.started = False

    def url(self, database: str = "postgres") -> URL:
        return make_url(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    # Not under the suite's private work directory: the postgres user must reach it.
    root = Path(tempfile.mkdtemp(prefix="chatter-bench-pg-"))
    pg = Cluster(root)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _seed_deterministic(url: URL, n_turns: int) -> None:
    """One user, conversations of 50 turns, one assistant message per turn, by COPY."""
    _db.create_schema(url)
    n_conv = (n_turns + TURNS_PER_CONVERSATION - 1) // TURNS_PER_CONVERSATION
    user = _id("U", 0)
    with psycopg.connect(_db.libpq(url)) as conn:
        conn.execute(
            "INSERT INTO users (id, username, email) VALUES (%s, %s, %s)",
            (user, user, f"{user}@bench.invalid"),
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY conversations (id, user_id, title, status, context_window, memory_enabled, "
                "enable_retrieval, retrieval_limit, retrieval_score_threshold, message_count, "
                "total_tokens, total_cost) FROM STDIN"
            ) as copy,
        ):
            for c in range(n_conv):
                n = min(TURNS_PER_CONVERSATION, n_turns - c * TURNS_PER_CONVERSATION)
                copy.write(f"{_id('C', c)}\t{user}\tbench\tACTIVE\t4096\tt\tf\t5\t0.7\t{n}\t0\t0\n")
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY messages (id, conversation_id, role, content, sequence_number, retry_count, "
                "rating_count) FROM STDIN"
            ) as copy,
        ):
            for i in range(n_turns):
                t = turn(i)
                copy.write(
                    f"{t.message_id}\t{t.conversation_id}\tASSISTANT\tok\t"
                    f"{i % TURNS_PER_CONVERSATION}\t0\t0\n"
                )


# --- the child: spans in, resident set out -------------------------------------------------


@dataclass
class Flow:
    marks: list[tuple[int, int, int]]
    """(spans ended, VmRSS, records spooled so far)."""
    base_rss: int
    flow_hwm: int
    flow_seconds: float
    spooled: int
    recovered: bool
    recovery_seconds: float
    recovery_peak_rss: int
    applied: int
    lost: int


def _child(
    dsn: str, n_turns: int, marks: list[int], spool: str, max_queue: int, recover: bool, conn: Any
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from benchmarks._turns import emit_turn
    from chatter_otel.pricing import Pricing
    from chatter_otel.writeback import WritebackSpanProcessor

    processor = WritebackSpanProcessor(
        dsn, pricing=Pricing(), spool_path=spool, max_queue=max_queue, connect_timeout=1.0
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("chatter_otel")
    time.sleep(0.5)
    base, _ = _rss()
    wanted = sorted(marks)
    seen: list[tuple[int, int, int]] = []
    t0 = time.monotonic()
    for i in range(n_turns):
        emit_turn(tracer, turn(i))
        ended = (i + 1) * SPANS_PER_TURN
        if wanted and ended >= wanted[0]:
            wanted.pop(0)
            seen.append((ended, _rss()[0], processor.stats.spooled))
    flow_seconds = time.monotonic() - t0
    time.sleep(1.5)  # let the assembler and the spool catch up before the peak is read
    rss, hwm = _rss()
    seen.append((n_turns * SPANS_PER_TURN, rss, processor.stats.spooled))
    spooled = processor.stats.spooled
    recovered, recovery_s, peak = False, 0.0, 0
    if recover:
        conn.send("flowed")
        conn.recv()  # the database is up again
        peak_box = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                peak_box[0] = max(peak_box[0], _rss()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t1 = time.monotonic()
        deadline = t1 + 600
        while time.monotonic() < deadline:
            if processor.force_flush(10_000):
                recovered = True
                break
        recovery_s = time.monotonic() - t1
        stop.set()
        sampler.join()
        peak = max(peak_box[0], _rss()[0])
    stats = processor.stats
    provider.shutdown()
    conn.send(
        Flow(
            seen,
            base,
            hwm,
            flow_seconds,
            spooled,
            recovered,
            recovery_s,
            peak,
            stats.applied,
            stats.lost,
        )
    )


def _run_child(
    dsn: str, n_turns: int, marks: list[int], spool: Path, max_queue: int, pg: Cluster | None
) -> Flow:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_child,
        args=(dsn, n_turns, marks, str(spool), max_queue, pg is not None, child),
        daemon=True,
    )
    proc.start()
    try:
        if pg is not None:
            if not parent.poll(900):
                raise TimeoutError("the span flow did not finish in 15 minutes")
            assert parent.recv() == "flowed"
            pg.start()
            parent.send("up")
        if not parent.poll(900):
            raise TimeoutError("the child did not report")
        flow: Flow = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return flow


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        section.add("memory: skipped", "needs root and PostgreSQL 15's initdb", verdict="error")
        return section
    n_spans = options.pick(1_000_000, 200_000)
    low_mark = 100_000
    n_turns = n_spans // SPANS_PER_TURN
    max_queue = options.pick(10_000, 2_000)
    marks = sorted({low_mark, n_spans // 2})
    with cluster() as pg:
        admin = pg.url()
        with psycopg.connect(_db.libpq(admin), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        db = pg.url("bench")
        _seed_deterministic(db, n_turns)
        pg.stop()
        flow = _run_child(
            db.render_as_string(hide_password=False),
            n_turns,
            marks,
            options.workdir / "mem-spool",
            max_queue,
            pg,
        )
        expected = {turn(i).message_id: total_tokens(i) for i in range(n_turns)}
        wrong = _db.mismatches(db, expected) if flow.recovered else -1
        ledger = _db.scalar(
            db,
            "SELECT COUNT(*) FROM chatter_otel.chatter_otel_writeback_ledger WHERE status = 'applied'",
        )
        ledger_dupes = _db.scalar(
            db,
            "SELECT COUNT(*) FROM (SELECT message_id FROM chatter_otel.chatter_otel_writeback_ledger "
            "GROUP BY message_id HAVING COUNT(*) > 1) d",
        )
    default_flow: Flow | None = None
    default_spans = 400_000
    if not options.quick:
        # The default max_queue (100,000 records) and no recovery, on fewer spans to bound the
        # run: what an unconfigured service holds while the database is down.
        default_flow = _run_child(
            f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/down",
            default_spans // SPANS_PER_TURN,
            [low_mark],
            options.workdir / "mem-spool-default",
            100_000,
            None,
        )

    by_mark = {m[0]: m for m in flow.marks}
    low = by_mark[min(by_mark)]
    high = by_mark[max(by_mark)]
    section.add("RSS before any span (processor started, database down)", mib(flow.base_rss))
    section.add(
        f"RSS after {low[0]:,} spans (max_queue={max_queue:,})",
        mib(low[1]),
        f"{low[2]:,} records spooled",
    )
    mid = [m for m in flow.marks if m[0] not in (low[0], high[0])]
    for m in mid:
        section.add(f"RSS after {m[0]:,} spans", mib(m[1]), f"{m[2]:,} records spooled")
    section.add(
        f"RSS after {high[0]:,} spans / after {low[0]:,} spans",
        f"{high[1] / low[1]:.3f}× ({mib(high[1])})",
        f"peak (VmHWM) {mib(flow.flow_hwm)}, {high[2]:,} records spooled",
        "report",
    )
    # Bounded means no growth once every bound is full: max_queue records in memory, and
    # the index of finished turns kept for late spans (max_index, 200,000 spans, full after
    # as many spans; issue 13.3). Before it fills, RSS grows toward that plateau.
    full = min((m for m in flow.marks if m[0] >= 2 * _LATE_INDEX_SPANS), default=high)
    if full is not high:
        growth = high[1] / full[1]
        section.check(
            f"RSS after {high[0]:,} spans / after {full[0]:,} spans (every bound full)",
            f"{growth:.3f}× ({mib(high[1])})",
            f"the late-span index holds {_LATE_INDEX_SPANS:,} spans",
            "≤ 1.10 (bounded)",
            growth <= 1.10,
        )
    section.add(
        "span flow rate with the database down",
        f"{n_spans / flow.flow_seconds:,.0f} spans/s",
        f"{flow.flow_seconds:.1f} s",
    )
    section.add(
        "recovery: database back, every record written",
        f"{flow.recovery_seconds:.1f} s" if flow.recovered else "NOT within 600 s",
        f"{n_turns / flow.recovery_seconds:,.0f} turns/s, peak RSS {mib(flow.recovery_peak_rss)}"
        if flow.recovered and flow.recovery_seconds
        else "",
    )
    exact = (
        flow.recovered and wrong == 0 and ledger == n_turns and ledger_dupes == 0 and flow.lost == 0
    )
    section.check(
        "after recovery: rows exact, one ledger row per turn",
        "exact" if exact else f"{wrong} wrong rows, {ledger:,} ledger rows, {flow.lost} lost",
        f"{n_turns:,} messages, {ledger:,} ledger rows",
        "exact",
        exact,
    )
    if default_flow is not None:
        d = {m[0]: m for m in default_flow.marks}
        section.add(
            "default max_queue (100,000): RSS after "
            + ", ".join(f"{k:,}" for k in sorted(d))
            + " spans",
            " / ".join(mib(d[k][1]) for k in sorted(d)),
            f"peak {mib(default_flow.flow_hwm)}, {default_flow.spooled:,} records spooled",
            "report",
        )
    section.notes += [
        f"{n_spans:,} spans = {n_turns:,} turns of 4 spans ended as fast as one thread can "
        f"(every turn's message row exists); processor settings: max_queue={max_queue:,} "
        "records in memory (CHATTER_OTEL_WRITEBACK_MAX_QUEUE), spool on, other settings default.",
        "The database is a throwaway PostgreSQL 15 cluster (initdb, private port and socket "
        "directory, fsync off) stopped during the flow: connections are refused, as when the "
        "server is down.",
        "RSS is VmRSS of the spawned interpreter (imports included); the ratio compares the "
        "resident set after the small and the large number of spans, so it is 1.00 when memory "
        "does not depend on the number of spans.",
        "Recovery replays the spool through the normal write path; the check reads back every "
        "message (tokens equal to its spans'), every conversation (totals equal to its "
        "messages') and the ledger (one row per turn, none twice).",
    ]
    return section
