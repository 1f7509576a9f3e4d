"""Part 2: what one span end and one metric record cost on the application's thread.

``span.end()`` runs every processor's ``on_end`` synchronously on the thread that ends the
span, so a processor's ``on_end`` is paid by every request. The write-back processor is
compared with what any OTel user already runs, the SDK's BatchSpanProcessor (in front of an
exporter that drops everything, so only the processor is measured).

100,000 spans (25,000 turns of the shape ``_turns`` builds: workflow > chat, tool, chat) are
started first, then ended in a timed loop, so the figure is the cost of ending them and
nothing else. Three figures per processor:

* wall time per ``end()``: what the request path sees, including waiting for the GIL while
  the processor's own threads work (the write-back assembles turns concurrently);
* CPU time of the ending thread per ``end()``: ``on_end`` itself;
* process CPU per span from the first ``end()`` until ``force_flush`` returned: the whole
  cost of handling a span, background threads included (the database's own CPU excluded).

The metric figure is one ``gen_ai.client.token.usage`` histogram record with the GenAI
attributes, made inside a recording span as chatter-otel makes it (so exemplar sampling is
included), on an SDK MeterProvider with a pull reader.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.engine import URL

from benchmarks import _db
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, human_ns, ratio, shuffled
from benchmarks._turns import SPANS_PER_TURN, usage
from benchmarks.turn_overhead import DropExporter
from chatter_otel import conventions as c
from chatter_otel.instruments import Instruments
from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor

NAME = "span"
TITLE = "Per-span and per-record costs"


def _started_turn_spans(provider: TracerProvider, turns: list[_db.Turn]) -> list[Span]:
    """Spans of ``turns``, started, in the order they must end (children, then owner)."""
    from benchmarks._turns import MODEL, PROVIDER

    tracer = provider.get_tracer("chatter_otel")
    out: list[Any] = []
    for turn in turns:
        owner = tracer.start_span(
            "invoke_workflow chat",
            attributes={
                c.GEN_AI_OPERATION_NAME: c.OPERATION_INVOKE_WORKFLOW,
                c.GEN_AI_WORKFLOW_NAME: "chat",
                c.GEN_AI_CONVERSATION_ID: turn.conversation_id,
                c.CHATTER_CONVERSATION_ID: turn.conversation_id,
                c.CHATTER_MESSAGE_ID: turn.message_id,
                c.CHATTER_USER_ID: turn.user_id,
            },
        )
        parent = trace.set_span_in_context(owner)
        for step, (tokens_in, tokens_out) in enumerate(usage(turn.index)):
            out.append(
                tracer.start_span(
                    f"chat {MODEL}",
                    context=parent,
                    attributes={
                        c.GEN_AI_OPERATION_NAME: c.OPERATION_CHAT,
                        c.GEN_AI_PROVIDER_NAME: PROVIDER,
                        c.GEN_AI_REQUEST_MODEL: MODEL,
                        c.GEN_AI_RESPONSE_MODEL: MODEL,
                        c.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
                        c.GEN_AI_USAGE_INPUT_TOKENS: tokens_in,
                        c.GEN_AI_USAGE_OUTPUT_TOKENS: tokens_out,
                        c.GEN_AI_USAGE_COST: tokens_in * 0.5e-6 + tokens_out * 1.5e-6,
                        c.CHATTER_CONVERSATION_ID: turn.conversation_id,
                    },
                )
            )
            if step == 0:
                out.append(
                    tracer.start_span(
                        "execute_tool calculator",
                        context=parent,
                        attributes={
                            c.GEN_AI_OPERATION_NAME: c.OPERATION_EXECUTE_TOOL,
                            c.GEN_AI_TOOL_NAME: "calculator",
                        },
                    )
                )
        out.append(owner)
    return out


def _end_spans(
    make: Callable[[], SpanProcessor], turns: list[_db.Turn]
) -> tuple[float, float, float]:
    """(wall ns, ending-thread CPU ns, process CPU ns until flushed) per span."""
    provider = TracerProvider()
    processor = make()
    provider.add_span_processor(processor)
    spans = _started_turn_spans(provider, turns)
    gc.collect()
    gc.disable()
    try:
        cpu0, thread0, wall0 = time.process_time_ns(), time.thread_time_ns(), time.perf_counter_ns()
        for span in spans:
            span.end()
        wall = time.perf_counter_ns() - wall0
        thread = time.thread_time_ns() - thread0
        if not processor.force_flush(120_000):
            raise RuntimeError(f"{type(processor).__name__}.force_flush did not complete")
        cpu = time.process_time_ns() - cpu0
    finally:
        gc.enable()
        provider.shutdown()
    n = len(spans)
    return wall / n, thread / n, cpu / n


def _metric_record_ns(kind: str, n: int) -> float:
    """ns per ``token_usage.record`` with the GenAI attributes, inside a recording span."""
    if kind == "noop":
        meter_provider: Any = NoOpMeterProvider()
    elif kind == "sdk-no-exemplars":
        meter_provider = MeterProvider(
            metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter()
        )
    else:
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instruments = Instruments.create(meter_provider)
    attrs = {
        c.GEN_AI_OPERATION_NAME: c.OPERATION_CHAT,
        c.GEN_AI_PROVIDER_NAME: "openai",
        c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        c.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
    }
    tracer_provider = TracerProvider()
    span = tracer_provider.get_tracer("bench").start_span("chat gpt-4o-mini")
    token = otel_context.attach(trace.set_span_in_context(span))
    record = instruments.token_usage.record
    try:
        for i in range(1000):  # first record of an attribute set allocates its aggregation
            record(i, {**attrs, c.GEN_AI_TOKEN_TYPE: c.TOKEN_TYPE_INPUT})
        gc.collect()
        t0 = time.perf_counter_ns()
        for i in range(n):
            # A fresh dict per record, as spans.py builds it.
            record(i & 1023, {**attrs, c.GEN_AI_TOKEN_TYPE: c.TOKEN_TYPE_INPUT})
        elapsed = time.perf_counter_ns() - t0
    finally:
        otel_context.detach(token)
        span.end()
        if isinstance(meter_provider, MeterProvider):
            meter_provider.shutdown()
        tracer_provider.shutdown()
    return elapsed / n


def run(options: Options) -> Section:
    section = Section(NAME, TITLE)
    rng = random.Random(options.seed)
    reps = options.pick(5, 2)
    n_spans = options.pick(100_000, 20_000)
    n_turns = n_spans // SPANS_PER_TURN
    pricing = Pricing()
    spool = options.workdir / "span-spool"
    with _db.private_database(options.server, "span") as db:
        seeded = _db.seed(
            db, conversations=reps * n_turns // 25, turns_per_conversation=25, user_messages=False
        )

        def writeback_factory(url: URL) -> Callable[[], SpanProcessor]:
            return lambda: WritebackSpanProcessor(
                url.render_as_string(hide_password=False), pricing=pricing, spool_path=spool
            )

        makers: dict[str, Callable[[], SpanProcessor]] = {
            "writeback": writeback_factory(db),
            "batch": lambda: BatchSpanProcessor(DropExporter()),
        }
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in makers}
        for rep in range(reps):
            turns = seeded[rep * n_turns : (rep + 1) * n_turns]
            for key in shuffled(list(makers), rng):
                results[key].append(_end_spans(makers[key], turns))
        all_ids = {t.message_id for t in seeded[: reps * n_turns]}
        written = _db.written(db, sorted(all_ids))

    wb, bsp = results["writeback"], results["batch"]
    labels = ("wall", "ending-thread CPU", "process CPU until flushed")
    for index, label in enumerate(labels):
        w = Summary.of([r[index] for r in wb])
        b = Summary.of([r[index] for r in bsp])
        rel = Summary.of([x[index] / y[index] for x, y in zip(wb, bsp, strict=True)])
        section.add(
            f"span end at {n_spans:,} spans, {label}: write-back processor",
            human_ns(w.median),
            f"{human_ns(w.low)}–{human_ns(w.high)}, n={w.n}",
        )
        section.add(
            f"span end at {n_spans:,} spans, {label}: BatchSpanProcessor (drop exporter)",
            human_ns(b.median),
            f"{human_ns(b.low)}–{human_ns(b.high)}, n={b.n}",
        )
        value, spread = rel.fmt(ratio)
        if index < 2:
            section.check(
                f"span end, {label}: write-back / BatchSpanProcessor",
                value,
                spread,
                "≤ 1.00",
                rel.median <= 1.0,
            )
        else:
            section.add(
                f"span handling, {label}: write-back / BatchSpanProcessor",
                value,
                spread,
                "report",
            )

    n_records = options.pick(100_000, 20_000)
    metric: dict[str, list[float]] = {"sdk": [], "sdk-no-exemplars": [], "noop": []}
    for _ in range(reps):
        for kind in shuffled(list(metric), rng):
            metric[kind].append(_metric_record_ns(kind, n_records))
    descriptions = {
        "sdk": "SDK MeterProvider, default exemplar filter (trace_based)",
        "sdk-no-exemplars": "SDK MeterProvider, exemplar filter always_off",
        "noop": "no-op API MeterProvider (no SDK)",
    }
    for kind, values in metric.items():
        s = Summary.of(values)
        section.add(
            f"one histogram record with GenAI attributes: {descriptions[kind]}",
            human_ns(s.median),
            f"{human_ns(s.low)}–{human_ns(s.high)}, n={s.n}",
        )
    section.notes += [
        f"{reps} repetitions, processors in shuffled order; each ends {n_spans:,} spans of "
        f"{n_turns:,} turns (workflow > chat, execute_tool, chat; two spans carry usage) whose "
        "message rows exist, so the write-back really writes them (its defaults: flush "
        "interval 1 s, batches of 500, late-span grace 0.2 s). After the run "
        f"{written:,} of {len(all_ids):,} rows carried usage.",
        "Ratios are write-back / BatchSpanProcessor per repetition; the BatchSpanProcessor's "
        "exporter drops everything, so its background cost is close to nothing, while the "
        "write-back's background threads do real work (reading attributes, assembling turns, "
        "writing PostgreSQL) that the 'process CPU' row charges to it.",
        f"Metric records: {n_records:,} records per repetition of a fresh attribute dict (as "
        "spans.py builds it) inside a recording span, after 1,000 warm-up records.",
    ]
    return section
