"""A process that produces chat-turn spans with the write-back processor attached.

Run by tests/test_faults_crash.py, which kills it with SIGKILL. It prints one JSON line
after every turn and every 50 ms with how many turns it emitted, the time (``t``, seconds
since the epoch) and the processor's counters, so the test knows what the process had done
when it died, and when each turn ended.

    writeback_worker.py URL SPOOL PLAN [--max-queue N] [--batch N] [--rate R]
                        [--flush-interval S] [--then hold|drain]

PLAN is a JSON file of turns ``[message id, conversation id, [[input, output], ...], shape]``
(shape: "sequential" or "parallel" calls, see tests._exactness.emit_turn).
``hold``: after the last turn keep reporting until killed (at most 60 s, then exit 3).
``drain``: flush until everything is written (at most 60 s), shut down, exit 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import fields
from typing import Any

from chatter_otel.pricing import Pricing
from chatter_otel.writeback import WritebackSpanProcessor
from tests._exactness import emit_turn
from tests.test_writeback_support import tracing

REPORT_EVERY = 0.05
HOLD_LIMIT = 60.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("spool")
    parser.add_argument("plan")
    parser.add_argument("--max-queue", type=int, default=100)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--flush-interval", type=float, default=0.05)
    parser.add_argument("--then", choices=("hold", "drain"), default="hold")
    args = parser.parse_args()
    with open(args.plan) as f:
        turns: list[Any] = json.load(f)
    processor = WritebackSpanProcessor(
        args.url,
        pricing=Pricing(),
        flush_interval=args.flush_interval,
        late_span_grace=0.02,
        max_queue=args.max_queue,
        batch_size=args.batch,
        spool_path=args.spool,
        backoff=(0.05, 0.5),
        connect_timeout=1,
    )
    t = tracing(processor)
    emitted = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def report(**extra: Any) -> None:
        snapshot = processor.stats
        stats = {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}
        stats["rejected"] = snapshot.rejected_total
        line = json.dumps({"emitted": emitted[0], "t": time.time(), **stats, **extra})
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def reporter() -> None:
        while not stop.wait(REPORT_EVERY):
            report()

    threading.Thread(target=reporter, daemon=True).start()
    for turn in turns:
        emit_turn(t.tracer, turn)
        emitted[0] += 1
        report()
        time.sleep(1 / args.rate)
    if args.then == "hold":
        time.sleep(HOLD_LIMIT)
        return 3
    deadline = time.monotonic() + 60
    while not t.provider.force_flush(10_000):
        if time.monotonic() > deadline:
            return 4
        time.sleep(0.1)
    t.provider.shutdown()
    stop.set()
    report(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
