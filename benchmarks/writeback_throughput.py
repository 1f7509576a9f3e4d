"""Part 3: how fast the write-back puts usage into PostgreSQL, and how fresh the rows are.

Three writers update the same kind of rows (one assistant message per turn, its conversation's
totals), each on fresh seeded rows, interleaved and repeated:

naive      what one would write first: per turn, load the Message with the ORM, set its
           usage, load the Conversation, add to its totals, commit. It gets the turn's values
           precomputed (it does not even read spans), so it is an upper bound for that design.
raw SQL    the ceiling for any writer: per batch of 500, one ``UPDATE messages ... FROM
           unnest(...)`` and one ``UPDATE conversations ... FROM unnest(...)`` with totals
           summed in Python, one commit. No ledger, no idempotency, no recompute: not
           crash-safe, not exact under retries, which is what the write-back pays for.
write-back the real processor, fed the turns' finished spans (``on_end``) and timed until
           ``force_flush`` returned, i.e. until every row is committed.

Freshness: a paced generator ends 1,000 turns per second for a bounded time on the
processor's default settings (flush interval 1 s), and a separate process polls the rows
(every 20 ms) to see when each message's usage becomes visible; the latency is from the owner
span's end to the first poll that saw the row (so it is exact to the poll interval).

Writer processes: 1, 2 and 4 processes (``multiprocessing``, spawn), each with its own
processor and its own conversations, start together on a barrier; throughput is all turns
over the time from the first start to the last flush.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from benchmarks import _db
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, human_rate, percentile, ratio, shuffled
from benchmarks._turns import IN_PRICE, MODEL, OUT_PRICE, PROVIDER, emit_turn, recorded_spans, usage
from chatter_otel.pricing import Pricing
from chatter_otel.service.models import Conversation, Message
from chatter_otel.writeback import WritebackSpanProcessor

NAME = "writeback"
TITLE = "Write-back throughput and freshness (PostgreSQL)"
BATCH = 500


@dataclass(frozen=True)
class Values:
    """What a writer puts into one message row (and adds to its conversation)."""

    message_id: str
    conversation_id: str
    prompt: int
    completion: int
    total: int
    cost: float
    finish: str


def values(turn: _db.Turn) -> Values:
    calls = usage(turn.index)
    prompt = sum(i for i, _ in calls)
    completion = sum(o for _, o in calls)
    cost = float(sum(Decimal(repr(i * IN_PRICE + o * OUT_PRICE)) for i, o in calls))
    return Values(
        turn.message_id, turn.conversation_id, prompt, completion, prompt + completion, cost, "stop"
    )


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


# --- the three writers --------------------------------------------------------------------


def naive_writer(db: URL, rows: Sequence[Values]) -> float:
    """Seconds to write ``rows`` one turn per transaction through the ORM."""
    engine = create_engine(db, pool_size=1)
    try:
        with Session(engine) as session:  # connect before timing
            session.get(Conversation, rows[0].conversation_id)
        t0 = time.perf_counter()
        for row in rows:
            with Session(engine) as session:
                message = session.get(Message, row.message_id)
                assert message is not None
                message.prompt_tokens = row.prompt
                message.completion_tokens = row.completion
                message.total_tokens = row.total
                message.cost = row.cost
                message.model_used = MODEL
                message.provider_used = PROVIDER
                message.finish_reason = row.finish
                conversation = session.get(Conversation, row.conversation_id)
                assert conversation is not None
                conversation.total_tokens += row.total
                conversation.total_cost += row.cost
                session.commit()
        return time.perf_counter() - t0
    finally:
        engine.dispose()


def raw_writer(db: URL, rows: Sequence[Values]) -> float:
    """Seconds to write ``rows`` with two set-based UPDATEs and one commit per batch."""
    with psycopg.connect(_db.libpq(db)) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        t0 = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            conn.execute(
                "UPDATE messages AS m SET prompt_tokens = v.p, completion_tokens = v.c, "
                "total_tokens = v.t, cost = v.cost, model_used = %s, provider_used = %s, "
                "finish_reason = v.f FROM unnest(%s::varchar[], %s::int[], %s::int[], "
                "%s::int[], %s::float8[], %s::varchar[]) AS v(id, p, c, t, cost, f) "
                "WHERE m.id = v.id",
                (
                    MODEL,
                    PROVIDER,
                    [r.message_id for r in batch],
                    [r.prompt for r in batch],
                    [r.completion for r in batch],
                    [r.total for r in batch],
                    [r.cost for r in batch],
                    [r.finish for r in batch],
                ),
            )
            sums: dict[str, list[float]] = {}
            for r in batch:
                acc = sums.setdefault(r.conversation_id, [0, 0.0])
                acc[0] += r.total
                acc[1] += r.cost
            ids = sorted(sums)
            conn.execute(
                "UPDATE conversations AS c SET total_tokens = c.total_tokens + v.t, "
                "total_cost = c.total_cost + v.cost FROM unnest(%s::varchar[], %s::int[], "
                "%s::float8[]) AS v(id, t, cost) WHERE c.id = v.id",
                (ids, [int(sums[i][0]) for i in ids], [sums[i][1] for i in ids]),
            )
            conn.commit()
        return time.perf_counter() - t0


def writeback_writer(
    db: URL, spans: Sequence[ReadableSpan], warmup: Sequence[ReadableSpan], spool: Path
) -> float:
    """Seconds from the first ``on_end`` until ``force_flush`` returned True."""
    processor = WritebackSpanProcessor(_url(db), pricing=_PRICING, spool_path=spool)
    try:
        for span in warmup:  # connect, create the ledger: not part of the rate
            processor.on_end(span)
        if not processor.force_flush(60_000):
            raise RuntimeError("write-back warm-up flush incomplete")
        t0 = time.perf_counter()
        for span in spans:
            processor.on_end(span)
        if not processor.force_flush(300_000):
            raise RuntimeError("write-back flush incomplete")
        return time.perf_counter() - t0
    finally:
        processor.shutdown()


_PRICING = Pricing()


# --- freshness ----------------------------------------------------------------------------


def _poller(dsn: str, inbox: Any, outbox: Any, interval: float, deadline: float) -> None:
    """Separate process: when does each message's usage become visible to a reader?"""
    pending: dict[str, int] = {}
    latencies: list[int] = []
    done = False
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.time() < deadline:
            try:
                while True:
                    item = inbox.get_nowait()
                    if item is None:
                        done = True
                    else:
                        pending.update(item)
            except queue.Empty:
                pass
            if pending:
                seen_at = time.time_ns()
                rows = conn.execute(
                    "SELECT id FROM messages WHERE id = ANY(%s) AND total_tokens IS NOT NULL",
                    (list(pending),),
                ).fetchall()
                for (mid,) in rows:
                    latencies.append(seen_at - pending.pop(mid))
            elif done:
                break
            time.sleep(interval)
    outbox.put((latencies, len(pending)))


@dataclass
class Freshness:
    latencies_ns: list[int]
    missing: int
    emitted: int
    seconds: float
    max_lag_s: float


def freshness(
    db: URL, turns: Sequence[_db.Turn], rate: int, seconds: float, spool: Path
) -> Freshness:
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    deadline = time.time() + seconds + 60
    poller = ctx.Process(
        target=_poller, args=(_db.libpq(db), inbox, outbox, 0.02, deadline), daemon=True
    )
    poller.start()
    provider = TracerProvider()
    processor = WritebackSpanProcessor(_url(db), pricing=_PRICING, spool_path=spool)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("chatter_otel")
    try:
        emit_turn(tracer, turns[0])  # connect and create the ledger before pacing
        processor.force_flush(60_000)
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        total = min(len(turns) - 1, int(rate * seconds))
        index, max_lag = 1, 0.0
        start = time.perf_counter()
        while index <= total:
            due = start + (index - 1) / per_tick * tick
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                max_lag = max(max_lag, now - due)
            batch = []
            for turn in turns[index : min(index + per_tick, total + 1)]:
                emit_turn(tracer, turn)
                batch.append((turn.message_id, time.time_ns()))
            inbox.put(batch)
            index += len(batch)
        elapsed = time.perf_counter() - start
        inbox.put(None)
        latencies, missing = outbox.get(timeout=seconds + 90)
    finally:
        provider.shutdown()
        poller.join(10)
        if poller.is_alive():
            poller.kill()
    return Freshness(latencies, missing, total, elapsed, max_lag)


# --- writer processes ---------------------------------------------------------------------


def _scale_child(dsn: str, turns: list[_db.Turn], spool: str, barrier: Any, out: Any) -> None:
    spans = recorded_spans(turns[1:])
    warmup = recorded_spans(turns[:1])
    processor = WritebackSpanProcessor(dsn, pricing=Pricing(), spool_path=spool)
    try:
        for span in warmup:
            processor.on_end(span)
        processor.force_flush(60_000)
        barrier.wait(120)
        t0 = time.time()
        for span in spans:
            processor.on_end(span)
        ok = processor.force_flush(300_000)
        out.put((t0, time.time(), ok, len(turns) - 1))
    finally:
        processor.shutdown()


def scale(db: URL, groups: list[list[_db.Turn]], spool: Path) -> tuple[float, bool]:
    """Turns per second with one process per group, started together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(groups)), ctx.Queue()
    procs = [
        ctx.Process(
            target=_scale_child,
            args=(_url(db), group, str(spool / f"p{i}"), barrier, out),
            daemon=True,
        )
        for i, group in enumerate(groups)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return sum(r[3] for r in results) / (end - start), all(r[2] for r in results)


# --- the part -----------------------------------------------------------------------------


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    rng = random.Random(options.seed)
    reps = options.pick(3, 1)
    k_fast = options.pick(10_000, 2_000)
    k_naive = options.pick(1_500, 300)
    rate = 1_000
    fresh_s = options.pick(10.0, 3.0)
    k_scale = options.pick(12_000, 2_000)
    procs = (1, 2, 4)
    scale_reps = options.pick(2, 1)
    per_conv = 20
    spool = Path(tempfile.mkdtemp(dir=options.workdir, prefix="wb-"))
    need_tp = reps * (2 * (k_fast + 1) + k_naive)
    need_fresh = int(rate * fresh_s) + 1
    need_scale = scale_reps * len(procs) * (k_scale + max(procs))
    with _db.private_database(options.server, "wb") as db:
        seeded = _db.seed(
            db,
            conversations=(need_tp + need_fresh + need_scale) // per_conv + len(procs) * 8 + 1,
            turns_per_conversation=per_conv,
        )
        # Conversation-major order, so each slice holds whole conversations.
        seeded.sort(key=lambda t: (t.conversation_id, t.index))
        cursor = 0

        def take(n: int) -> list[_db.Turn]:
            nonlocal cursor
            out = seeded[cursor : cursor + n]
            cursor += n
            if len(out) < n:
                raise RuntimeError("not enough seeded turns")
            return out

        expected: dict[str, int] = {}
        rates: dict[str, list[float]] = {"naive": [], "raw": [], "writeback": []}
        for _ in range(reps):
            for method in shuffled(list(rates), rng):
                if method == "naive":
                    turns = take(k_naive)
                    seconds = naive_writer(db, [values(t) for t in turns])
                elif method == "raw":
                    turns = take(k_fast)
                    seconds = raw_writer(db, [values(t) for t in turns])
                else:
                    batch = take(k_fast + 1)
                    warm, turns = batch[:1], batch[1:]
                    for t in warm:
                        expected[t.message_id] = values(t).total
                    seconds = writeback_writer(
                        db, recorded_spans(turns), recorded_spans(warm), spool / "tp"
                    )
                rates[method].append(len(turns) / seconds)
                for t in turns:
                    expected[t.message_id] = values(t).total
        exact_tp = _db.mismatches(db, expected)

        fresh_turns = take(need_fresh)
        fresh = freshness(db, fresh_turns, rate, fresh_s, spool / "fresh")
        for t in fresh_turns[: fresh.emitted + 1]:
            expected[t.message_id] = values(t).total

        scaled: dict[int, list[float]] = {p: [] for p in procs}
        scale_ok = True
        for _ in range(scale_reps):
            for p in shuffled(list(procs), rng):
                per = k_scale // p
                groups = [take(per + 1) for _ in range(p)]
                rate_p, ok = scale(db, groups, spool / f"scale{p}")
                scale_ok = scale_ok and ok
                scaled[p].append(rate_p)
                for group in groups:
                    for t in group:
                        expected[t.message_id] = values(t).total
        exact_all = _db.mismatches(db, expected)

    wb, naive, raw = rates["writeback"], rates["naive"], rates["raw"]
    for label, values_ in (
        ("naive ORM writer", naive),
        ("raw batched SQL", raw),
        ("write-back", wb),
    ):
        s = Summary.of(values_)
        section.add(
            f"throughput, {label}",
            human_rate(s.median, "turns"),
            f"{human_rate(s.low, 'turns')}–{human_rate(s.high, 'turns')}, n={s.n}",
        )
    vs_naive = Summary.of([w / n for w, n in zip(wb, naive, strict=True)])
    value, spread = vs_naive.fmt(ratio)
    section.check(
        "throughput, write-back / naive ORM writer", value, spread, "≥ 10", vs_naive.median >= 10
    )
    vs_raw = Summary.of([w / r for w, r in zip(wb, raw, strict=True)])
    value, spread = vs_raw.fmt(lambda x: f"{100 * x:.0f} %")
    section.add("throughput, write-back as a fraction of raw batched SQL", value, spread, "report")

    lat_ms = [x / 1e6 for x in fresh.latencies_ns]
    achieved = fresh.emitted / fresh.seconds if fresh.seconds else 0.0
    section.add(
        f"freshness at {rate:,} turns/s for {fresh_s:.0f} s: span end → row visible, p50",
        f"{percentile(lat_ms, 50):.0f} ms",
        f"{len(lat_ms):,} turns, achieved {achieved:,.0f} turns/s",
        "report",
    )
    section.add(
        f"freshness at {rate:,} turns/s: p99 (max)",
        f"{percentile(lat_ms, 99):.0f} ms",
        f"max {max(lat_ms, default=float('nan')):.0f} ms, {fresh.missing} never seen",
        "report",
    )
    base = scaled[1]
    for p in procs:
        s = Summary.of(scaled[p])
        rel = Summary.of([x / b for x, b in zip(scaled[p], base, strict=True)])
        section.add(
            f"throughput with {p} writer process{'es' if p > 1 else ''} (vs 1: {rel.median:.2f}×)",
            human_rate(s.median, "turns"),
            f"{human_rate(s.low, 'turns')}–{human_rate(s.high, 'turns')}, n={s.n}",
        )
    section.check(
        "rows exact after every writer (messages = expected, conversations = sum of messages)",
        f"{exact_all} mismatches" if exact_all else "exact",
        f"{len(expected):,} messages checked",
        "0 mismatches",
        exact_all == 0 and exact_tp == 0 and scale_ok,
    )
    section.notes += [
        f"Throughput: {reps} repetitions, writers in shuffled order, each on its own fresh rows "
        f"({k_fast:,} turns for raw SQL and the write-back, {k_naive:,} for the naive writer, "
        f"whose rate does not depend on the count); {per_conv} turns per conversation, each "
        "turn a user and an assistant message, so the write-back's per-conversation recompute "
        "sums realistic conversations. The write-back is fed 4 spans per turn (workflow > chat, "
        "execute_tool, chat) from memory: the rate is the processor's, not the span producer's.",
        "Raw SQL is the ceiling, not a competitor: it has no ledger, so a retried or replayed "
        "batch would add a turn twice and a crash between its two statements leaves totals wrong.",
        f"Freshness: default processor settings (flush interval 1 s, so a batch is written when "
        f"its oldest turn ended 1 s ago or 500 are ready; late-span grace 0.1 s); "
        f"the generator ended {fresh.emitted:,} turns paced in 10 ms ticks (largest lag behind "
        f"schedule {fresh.max_lag_s * 1000:.0f} ms); a separate process polled every 20 ms.",
        f"Writer processes: {k_scale:,} turns split evenly over 1, 2 and 4 spawned processes "
        f"({scale_reps} repetitions), disjoint conversations; this machine has "
        f"{mp.cpu_count()} cores, shared with PostgreSQL.",
    ]
    return section
