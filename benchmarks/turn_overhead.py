"""Part 1: what chatter-otel adds to a chat turn, against the same turn without telemetry.

The turn is the reference service's own: ``workflow_span`` around ``run_turn`` (LangGraph,
``OfflineChatModel`` with no latency), exactly as ``ChatService.chat`` runs it. With a real
provider the model call takes hundreds of milliseconds and any overhead disappears in it;
with the offline model the turn is pure Python, so this is the worst case for the ratio.

Variants (each set up and torn down through the public ``setup_telemetry`` API, on private
providers as ``chatter_otel.testing.capture_telemetry`` does, then interleaved):

a  no telemetry: the reference graph, whose nodes hold no telemetry code, and
   ``setup_telemetry`` never ran, so the workflow span runs against the OpenTelemetry API's
   proxy providers with no SDK installed (checked at run time: the span does not record).
   This is what an application without chatter-otel runs.
b  chatter-otel spans and metrics written by hand: the same graph with ``model_span`` and
   ``tool_span`` in its nodes (``_hand_workflow.py``); SDK TracerProvider with a
   BatchSpanProcessor in front of an exporter that drops everything, SDK MeterProvider with an
   in-memory (pull) reader and the exemplar filter ``setup_telemetry`` picks for the embedded
   default (Prometheus exposition, which carries no exemplars: off).
z  the same spans and metrics with no code in the nodes: graph of a, LangChain capture on
   (``CHATTER_OTEL_CAPTURE_LANGCHAIN=true``), providers as b.
z+oi  z plus openinference's LangChain instrumentation.
b-otlp  b with the exemplar filter of the OTLP path (trace-based: every measurement made
   inside a sampled span is offered to the exemplar reservoir).
c  b plus openinference's LangChain instrumentation as ``setup_telemetry`` installs it.
   b, b-otlp, c, c-pool, c+10% and d run the hand-written graph of b.
c-pool  c with openinference's handler dispatched through the thread pool, as openinference
   itself defaults to (see ``_set_openinference_inline``): what chatter-otel ran before.
c+10%  c with a 10 % ParentBased ratio sampler: the cost left when only a sample is traced.
d  b plus the write-back processor on PostgreSQL (message rows exist, so it writes).

Two figures per variant, both per turn and both divided by variant a of the same repetition:
wall time of the turns (what a request waits) and process CPU time from the first turn until
every span, metric and row has been handled (``force_flush``), which charges background
threads (span export, write-back) to the turns that caused them.
"""

from __future__ import annotations

import asyncio
import gc
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from sqlalchemy.engine import URL

from benchmarks import _db, _hand_workflow
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, human_ns, ratio, shuffled
from chatter_otel import _runtime
from chatter_otel.config import TelemetryConfig
from chatter_otel.pricing import Pricing
from chatter_otel.service.llm import DEFAULT_MODELS, OfflineChatModel
from chatter_otel.service.workflow import WORKFLOW_NAME, TurnInput, TurnResult, run_turn
from chatter_otel.spans import workflow_span
from chatter_otel.telemetry import Telemetry, exemplar_filter, setup_telemetry
from chatter_otel.writeback.sampling import AlwaysRecordSampler

NAME = "turn"
TITLE = "Chat-turn overhead (LangGraph turn, offline model, latency 0)"

PROMPTS = {
    "plain": "Hello there, how are you today?",
    "tool": "What is 12*7+3?",
}
TARGET = 1.10


class DropExporter(SpanExporter):
    """Exports nowhere: the cost measured is chatter-otel's, not a network's."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    langchain: bool = False
    writeback: bool = False
    inline: bool | None = None
    """Force openinference's ``run_inline`` (None: as chatter-otel ships it)."""
    sample_ratio: float | None = None
    otlp_metrics: bool = False
    capture: bool = False
    """Zero-code LangChain capture on, nodes without telemetry code (else hand-written)."""


VARIANTS = (
    Variant("a", "no telemetry"),
    Variant("b", "chatter-otel spans + metrics written in the nodes by hand"),
    Variant("z", "the same spans + metrics, zero-code LangChain capture", capture=True),
    Variant("z+oi", "z + openinference LangChain instrumentation", capture=True, langchain=True),
    Variant(
        "b-otlp",
        "b with metrics for OTLP (exemplars sampled from the trace)",
        otlp_metrics=True,
    ),
    Variant("c", "b + openinference LangChain instrumentation (as shipped)", langchain=True),
    Variant(
        "c-pool",
        "c with openinference's own default (handler via thread pool)",
        langchain=True,
        inline=False,
    ),
    Variant(
        "c+10%",
        "c with a 10 % ParentBased ratio sampler (no write-back)",
        langchain=True,
        sample_ratio=0.1,
    ),
    Variant("d", "b + write-back processor (PostgreSQL)", writeback=True),
)


def _variant(key: str) -> Variant:
    return next(v for v in VARIANTS if v.key == key)


@dataclass
class Block:
    wall_ns: float
    cpu_ns: float
    gc_ns: float
    """Time per turn spent in the cyclic garbage collector (all generations)."""


class _GcClock:
    """Adds up the time the cyclic garbage collector runs while it is installed.

    A span lives in the export queue for many turns, so its objects survive young
    collections and get promoted: the SDK's spans make the collector run (a turn without
    telemetry frees everything it allocates by reference counting), and a full collection
    walks the whole heap. That cost belongs to telemetry but shows in no profile of its code.
    """

    def __init__(self) -> None:
        self.total_ns = 0
        self._started = 0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.total_ns += time.perf_counter_ns() - self._started

    def __enter__(self) -> _GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


class _Setup:
    """One variant's telemetry, built and torn down around one block of turns."""

    def __init__(self, variant: Variant, pricing: Pricing, db: URL | None, spool: Path) -> None:
        self.telemetry: Telemetry | None = None
        self.providers: list[Any] = []
        if variant.key == "a":
            _runtime.install(None)
            return
        sampler: Sampler = ParentBased(
            TraceIdRatioBased(variant.sample_ratio) if variant.sample_ratio else ALWAYS_ON
        )
        if variant.writeback:
            sampler = AlwaysRecordSampler(sampler)  # what setup_telemetry builds for it
        config = TelemetryConfig(
            traces_exporters=("none",),
            # Embedded default: metrics on the service's /metrics (no exemplars); variant
            # b-otlp: exported over OTLP, exemplars sampled from the trace.
            metrics_exporters=("otlp",) if variant.otlp_metrics else ("prometheus",),
            logs_exporters=("none",),
            instrument_langchain=variant.langchain,
            capture_langchain=variant.capture,
            writeback_url=str(db.render_as_string(hide_password=False))
            if variant.writeback and db
            else None,
            writeback_spool_path=spool,
        )
        tracer_provider = TracerProvider(sampler=sampler)
        tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        meter_provider = MeterProvider(
            metric_readers=[InMemoryMetricReader()], exemplar_filter=exemplar_filter(config)
        )
        self.providers = [tracer_provider, meter_provider]
        self.telemetry = setup_telemetry(
            config,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            set_global=False,
            configure_logs=False,
            pricing=pricing,
        )
        if variant.inline is not None:
            _set_openinference_inline(variant.inline)

    def flush(self) -> None:
        if self.telemetry is not None:
            self.telemetry.force_flush(60_000)

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.shutdown()
        for provider in self.providers:
            provider.shutdown()
        _runtime.install(None)


def _set_openinference_inline(inline: bool) -> None:
    """Set ``run_inline`` on openinference's LangChain callback handler.

    ``OpenInferenceTracer`` is a synchronous ``BaseTracer`` that leaves ``run_inline`` at
    False, so in async code LangChain hands every callback (start and end of each graph
    node, chain, LLM and tool run) to ``loop.run_in_executor`` and the turn waits for a
    thread-pool round trip each time; chatter-otel sets it to True (see
    ``chatter_otel.telemetry._instrument_langchain``). Variant c-pool undoes that to show
    what it saves.
    """
    from openinference.instrumentation.langchain import LangChainInstrumentor

    handler = getattr(LangChainInstrumentor(), "_tracer", None)
    if handler is not None:
        handler.run_inline = inline


def _openinference_shipped_inline(pricing: Pricing) -> bool:
    setup = _Setup(_variant("c"), pricing, None, Path(tempfile.gettempdir()))
    try:
        from openinference.instrumentation.langchain import LangChainInstrumentor

        handler = getattr(LangChainInstrumentor(), "_tracer", None)
        return bool(getattr(handler, "run_inline", False))
    finally:
        setup.close()


TurnRunner = Callable[[TurnInput, list[Any]], Awaitable[TurnResult]]


def _runner(variant: Variant) -> TurnRunner:
    """Variant a and the capture run the reference graph (no telemetry code in its nodes);
    the others the same graph with spans written in its nodes."""
    return run_turn if variant.key == "a" or variant.capture else _hand_workflow.run_turn


async def _turns(
    turn: TurnInput,
    prompt: str,
    ids: Iterator[_db.Turn],
    n: int,
    runner: TurnRunner = run_turn,
) -> None:
    history: list[Any] = [HumanMessage(prompt)]
    for _ in range(n):
        row = next(ids)
        async with workflow_span(
            WORKFLOW_NAME,
            conversation_id=row.conversation_id,
            message_id=row.message_id,
            user_id=row.user_id,
        ):
            await runner(turn, history)


def _check_baseline() -> None:
    provider = trace.get_tracer_provider()
    span = _runtime.get().tracer.start_span("probe")
    if span.is_recording() or type(provider).__name__ != "ProxyTracerProvider":
        raise RuntimeError(
            f"variant a is not telemetry-free: global provider {type(provider).__name__}"
        )
    span.end()


def _block(
    loop: asyncio.AbstractEventLoop,
    variant: Variant,
    prompt: str,
    n: int,
    warmup: int,
    ids: Iterator[_db.Turn],
    pricing: Pricing,
    db: URL,
    spool: Path,
) -> Block:
    turn = TurnInput(llm=OfflineChatModel(), provider="offline", model=DEFAULT_MODELS["offline"])
    setup = _Setup(variant, pricing, db, spool)
    try:
        if variant.key == "a":
            _check_baseline()
        runner = _runner(variant)
        loop.run_until_complete(_turns(turn, prompt, ids, warmup, runner))
        setup.flush()
        gc.collect()
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        with _GcClock() as gc_clock:
            loop.run_until_complete(_turns(turn, prompt, ids, n, runner))
        wall = time.perf_counter_ns() - wall0
        setup.flush()
        cpu = time.process_time_ns() - cpu0
    finally:
        setup.close()
    return Block(wall / n, cpu / n, gc_clock.total_ns / n)


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    rng = random.Random(options.seed)
    reps = options.reps or options.pick(7, 2)
    block_s = options.pick(0.8, 0.25)
    warmup = options.pick(20, 5)
    pricing = Pricing()
    loop = asyncio.new_event_loop()
    spool = options.workdir / "turn-spool"
    shipped_inline = _openinference_shipped_inline(pricing)
    variants = list(VARIANTS)
    try:
        # Calibrate: turns per block so that variant a's block lasts ~block_s.
        sizes: dict[str, int] = {}
        calib = iter(_fake_turns())
        for name, prompt in PROMPTS.items():
            loop.run_until_complete(_turns(_offline(), prompt, calib, 10))
            t0 = time.perf_counter()
            loop.run_until_complete(_turns(_offline(), prompt, calib, 30))
            per_turn = (time.perf_counter() - t0) / 30
            sizes[name] = max(20, min(2000, int(block_s / per_turn)))
        needed = reps * sum(sizes[p] + warmup for p in PROMPTS)
        with _db.private_database(options.server, "turn") as db:
            seeded = _db.seed(db, conversations=needed // 20 + 1, turns_per_conversation=20)
            wb_ids = _Counted(seeded)
            other_ids = _cycle(seeded)
            results: dict[tuple[str, str], list[Block]] = {}
            written_ok = True
            for _ in range(reps):
                for name in shuffled(list(PROMPTS), rng):
                    for variant in shuffled(variants, rng):
                        ids = wb_ids if variant.writeback else other_ids
                        first = seeded_index(wb_ids) if variant.writeback else None
                        block = _block(
                            loop,
                            variant,
                            PROMPTS[name],
                            sizes[name],
                            warmup,
                            ids,
                            pricing,
                            db,
                            spool,
                        )
                        results.setdefault((name, variant.key), []).append(block)
                        if first is not None:
                            count = sizes[name] + warmup
                            mids = [t.message_id for t in seeded[first : first + count]]
                            written_ok = written_ok and _db.written(db, mids) == count
    finally:
        loop.close()
    _report(section, variants, results, sizes, reps, shipped_inline, written_ok)
    return section


class _Counted(Iterator[_db.Turn]):
    """Hands out seeded turns in order and knows how many it handed out."""

    def __init__(self, turns: list[_db.Turn]) -> None:
        self.turns, self.next_index = turns, 0

    def __next__(self) -> _db.Turn:
        turn = self.turns[self.next_index]
        self.next_index += 1
        return turn


def seeded_index(ids: Iterator[_db.Turn]) -> int:
    assert isinstance(ids, _Counted)
    return ids.next_index


def _cycle(turns: list[_db.Turn]) -> Iterator[_db.Turn]:
    while True:
        yield from turns


def _fake_turns() -> Iterator[_db.Turn]:
    from chatter_otel.service.models import new_ulid

    index = 0
    while True:
        yield _db.Turn(index, new_ulid(), new_ulid(), new_ulid())
        index += 1


def _offline() -> TurnInput:
    return TurnInput(llm=OfflineChatModel(), provider="offline", model=DEFAULT_MODELS["offline"])


def _report(
    section: Section,
    variants: list[Variant],
    results: dict[tuple[str, str], list[Block]],
    sizes: dict[str, int],
    reps: int,
    shipped_inline: bool,
    written_ok: bool,
) -> None:
    targets = {"b": TARGET, "b-otlp": TARGET, "z": TARGET, "d": TARGET}
    keys = {v.key for v in variants}
    for name in PROMPTS:
        base = results[(name, "a")]
        wall_a = Summary.of([b.wall_ns for b in base])
        section.add(
            f"turn, {name} prompt, (a) {VARIANTS[0].label}: time per turn",
            human_ns(wall_a.median),
            f"{human_ns(wall_a.low)}–{human_ns(wall_a.high)}, n={wall_a.n}",
        )
        for variant in variants[1:]:
            blocks = results[(name, variant.key)]
            pairs = list(zip(blocks, base, strict=True))
            walls = Summary.of([b.wall_ns / a.wall_ns for b, a in pairs])
            value, spread = walls.fmt(ratio)
            label = f"turn, {name} prompt, ({variant.key})/(a) wall: {variant.label}"
            if variant.key not in targets:
                section.add(label, value, spread, "report")
                continue
            section.check(label, value, spread, f"≤ {TARGET:.2f}", walls.median <= TARGET)
            cpus = Summary.of([b.cpu_ns / a.cpu_ns for b, a in pairs])
            value, spread = cpus.fmt(ratio)
            section.check(
                f"turn, {name} prompt, ({variant.key})/(a) process CPU incl. background threads",
                value,
                spread,
                f"≤ {TARGET:.2f}",
                cpus.median <= TARGET,
            )
            added = Summary.of([b.wall_ns - a.wall_ns for b, a in pairs])
            section.add(
                f"turn, {name} prompt, ({variant.key})−(a): time added per turn",
                human_ns(added.median),
                f"{human_ns(added.low)}–{human_ns(added.high)}, n={added.n}",
            )
            collected = Summary.of([b.gc_ns - a.gc_ns for b, a in pairs])
            section.add(
                f"turn, {name} prompt, ({variant.key})−(a): of which garbage collection",
                human_ns(collected.median),
                f"{human_ns(collected.low)}–{human_ns(collected.high)}, n={collected.n}",
            )
        if "z" in keys and "b" in keys:
            pairs = list(zip(results[(name, "z")], results[(name, "b")], strict=True))
            for what, get in (("wall", _wall), ("process CPU", _cpu)):
                value, spread = Summary.of([get(z) / get(b) for z, b in pairs]).fmt(ratio)
                section.add(
                    f"turn, {name} prompt, (z)/(b) {what}: zero-code capture vs hand-written",
                    value,
                    spread,
                    "report",
                )
    section.notes += [
        f"Each repetition ({reps}) runs every variant once per prompt, in a shuffled order; a "
        f"block is {sizes['plain']} (plain) / {sizes['tool']} (tool) turns after a warm-up, sized so "
        "variant a's block lasts about the same time on this machine. Ratios are per repetition "
        "(variant / variant a of the same repetition); the table gives their median and min–max.",
        "Plain prompt: one LLM call (workflow + chat span, 6 metric records). Tool prompt: LLM "
        "call → calculator tool → LLM call (workflow, 2 chat, 1 tool span, 10 metric records); "
        "openinference adds 4 (plain) / 8 (tool) spans of its own.",
        "(z) runs the graph of (a), whose nodes hold no telemetry code, with the LangChain "
        "capture on; (b) the same graph with model_span/tool_span written in its nodes "
        "(benchmarks/_hand_workflow.py): the same spans, attributes and metrics either way. "
        "(z)/(b) is the capture's price for needing no code.",
        "(a) was checked to be telemetry-free: global TracerProvider is the API's "
        "ProxyTracerProvider and the span the helpers open does not record.",
        "(d): the write-back processor with its defaults (flush interval 1 s) on a private "
        "database where every turn's message row exists; after each block every row was "
        f"checked to carry its usage: {'yes' if written_ok else 'NO — see the write-back logs'}.",
        "openinference leaves `run_inline` False on its handler, so LangChain dispatches each "
        "of its callbacks to a thread pool from async code; chatter-otel "
        + (
            "sets it to True (c); c-pool restores openinference's default to show the saving. "
            if shipped_inline
            else "does NOT set it here (c = c-pool). "
        )
        + "The ratio sampler (c+10%) only helps without the write-back: the write-back needs "
        "AlwaysRecordSampler, under which every span records and openinference does all its work.",
    ]


def _wall(block: Block) -> float:
    return block.wall_ns


def _cpu(block: Block) -> float:
    return block.cpu_ns
