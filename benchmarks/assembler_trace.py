"""The assembler's CPU per 1,000 turns when every turn shares one trace id (issue 13.4).

A client (or a gateway) that sends the same ``traceparent`` on every request puts every turn
of the service in one trace. This feeds 10,000 such turns (HTTP server span > workflow span >
CHAIN span > our ``chat`` span and openinference's sibling span with the same call id) to the
assembler alone, 100 turns per simulated second, with ``take`` after each turn and ``expire``
every 100 turns as the processor does, and reports the process CPU of each 1,000 turns. Spans
are built before the clock starts, so only the assembler is measured.

    python -m benchmarks.assembler_trace [--turns 10000]

Run it from another checkout (``PYTHONPATH=/path/to/checkout``) to compare versions.
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from ulid import ULID

from chatter_otel import conventions as c
from chatter_otel.pricing import Pricing
from chatter_otel.writeback.assembler import Assembler
from chatter_otel.writeback.stats import Counters

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
REMOTE = 0xC0FFEE
RESOURCE = Resource.get_empty()
BATCH = 1_000


def _span(span_id: int, parent: int, attrs: dict[str, Any]) -> ReadableSpan:
    return ReadableSpan(
        name="s",
        context=SpanContext(TRACE, span_id, is_remote=False),
        parent=SpanContext(TRACE, parent, is_remote=False),
        attributes=attrs,
        start_time=1,
        end_time=2,
        resource=RESOURCE,
    )


def _assembler() -> Assembler:
    options: dict[str, Any] = {
        "pricing": Pricing(),
        "counters": Counters(None),
        "limits": (100, 50, 50),
        "grace": 0.0,
        "trace_ttl": 300.0,
        "done_ttl": 2.0,
        "max_traces": 50_000,
        "max_spans_per_trace": 10_000,
    }
    accepted = inspect.signature(Assembler).parameters
    return Assembler(**{k: v for k, v in options.items() if k in accepted})


def _turn(first_id: int) -> list[ReadableSpan]:
    server, workflow, chain, ours, theirs = range(first_id, first_id + 5)
    call = f"{workflow:032x}"
    usage = {c.GEN_AI_USAGE_INPUT_TOKENS: 3, c.GEN_AI_USAGE_OUTPUT_TOKENS: 4}
    oi = {c.OI_SPAN_KIND: "LLM", c.OI_TOKEN_COUNT_PROMPT: 3, c.OI_TOKEN_COUNT_COMPLETION: 4}
    return [
        _span(theirs, chain, {**oi, "chatter.call.id": call}),
        _span(ours, chain, {**usage, "chatter.call.id": call}),
        _span(chain, workflow, {}),
        _span(workflow, server, {c.CHATTER_MESSAGE_ID: str(ULID())}),
        _span(server, REMOTE, {}),
    ]


def run(turns: int) -> list[float]:
    """CPU seconds of each 1,000 turns."""
    assembler = _assembler()
    cpu: list[float] = []
    next_id = 1_000
    for batch in range(turns // BATCH):
        spans = []
        for _ in range(BATCH):
            spans.append(_turn(next_id))
            next_id += 5
        started = time.process_time()
        for index, turn in enumerate(spans):
            now = (batch * BATCH + index) * 0.01
            for span in turn:
                assembler.add(span, now)
            assembler.take(now)
            if index % 100 == 0:
                assembler.expire(now)
        cpu.append(time.process_time() - started)
        print(f"turns {len(cpu) * BATCH:>6}: {cpu[-1]:.3f} s CPU", flush=True)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10_000)
    args = parser.parse_args()
    cpu = run(args.turns)
    print("CPU per 1,000 turns (s):", " ".join(f"{x:.3f}" for x in cpu))
    print(f"last / first: {cpu[-1] / cpu[0]:.2f}x")


if __name__ == "__main__":
    main()
