"""One variant of the ``peers`` part, in a fresh process of its own peer venv.

    .venv-peers/<env>/bin/python -m benchmarks._peer_runner VARIANT BASE_URL N WARMUP ORDER

Run by ``benchmarks/peers.py``, never by hand. The network guard goes in before anything
else is imported, so an import-time download is refused and counted too. Then: set up the
variant as its documentation tells a user to (every exporter in memory), time ``N`` turns of
each scenario after ``WARMUP`` turns, run one more turn per scenario with its spans, log
records and metrics kept, and print one JSON object on stdout. The parent analyses it.

How each variant is set up: ``_peer_setups``.
"""

from __future__ import annotations

from benchmarks import _netguard

_netguard.install()

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _peer_setups  # noqa: E402

PROMPT = "What is 12*7+3?"
"""The fake server answers it with a calculator call, then with "The result is 87."."""
MODEL = "gpt-4o-mini"
VERSIONS = (
    "langchain-core",
    "langgraph",
    "langchain-openai",
    "openai",
    "opentelemetry-sdk",
    "openlit",
    "opentelemetry-instrumentation-langchain",
    "traceloop-sdk",
    "openinference-instrumentation-langchain",
)


def _probe(variant: str, base_url: str) -> dict[str, Any]:
    turns = Turns(base_url, _peer_setups.setup_defaults(variant))
    asyncio.run(turns.many("tool", 1))
    time.sleep(6)  # past the SDKs' batch and periodic export intervals (5 s)
    return {"variant": variant, "network": _netguard.report()}


def _span(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "attributes": _peer_setups.jsonable(span.attributes or {}),
        "events": [
            {"name": e.name, "attributes": _peer_setups.jsonable(e.attributes or {})}
            for e in span.events
        ],
    }


def _log(record: Any) -> dict[str, Any]:
    inner = getattr(record, "log_record", record)
    return {
        "event": getattr(inner, "event_name", None),
        "body": _peer_setups.jsonable(getattr(inner, "body", None)),
        "attributes": _peer_setups.jsonable(getattr(inner, "attributes", None) or {}),
    }


class Turns:
    """The LangGraph turn of the reference service, against the fake OpenAI server."""

    def __init__(self, base_url: str, setup: _peer_setups.Setup) -> None:
        from langchain_core.messages import HumanMessage
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        from chatter_otel.service.workflow import TurnInput, graph

        llm = ChatOpenAI(
            model=MODEL,
            base_url=base_url,
            api_key=SecretStr("sk-bench"),
            stream_usage=True,
            max_retries=0,
        )
        self.inputs = {
            "tool": TurnInput(llm=llm, provider="openai", model=MODEL),
            "stream": TurnInput(llm=llm, provider="openai", model=MODEL, streaming=True),
        }
        self.history = [HumanMessage(PROMPT)]
        self.graph = graph()
        self.wrap = setup.wrap_turn

    async def turn(self, scenario: str) -> list[Any]:
        state = {"messages": list(self.history), "rounds": 0}
        config = {"configurable": {"turn": self.inputs[scenario]}}
        if not self.wrap:
            result = await self.graph.ainvoke(state, config)
        else:
            from chatter_otel.spans import workflow_span

            async with workflow_span(
                "chat", conversation_id="c-bench", message_id="m-bench", user_id="u-bench"
            ):
                result = await self.graph.ainvoke(state, config)
        messages: list[Any] = result["messages"]
        return messages

    async def many(self, scenario: str, n: int) -> None:
        for _ in range(n):
            await self.turn(scenario)


def _truth(messages: list[Any]) -> list[list[int]]:
    """Usage of each model call as the provider reported it (LangChain's usage_metadata)."""
    return [
        [m.usage_metadata["input_tokens"], m.usage_metadata["output_tokens"]]
        for m in messages
        if getattr(m, "usage_metadata", None)
    ]


def main(argv: list[str]) -> int:
    variant, base_url, n, warmup, order = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    # stdout carries the result alone: what the peers print (traceloop-sdk does) goes to stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    if order == "defaults":
        json.dump(_probe(variant, base_url), out)
        out.flush()
        return 0
    logging.basicConfig(level=logging.CRITICAL)
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    sink = _peer_setups.Sink()
    setup = _peer_setups.setup(variant, sink)
    turns = Turns(base_url, setup)
    loop = asyncio.new_event_loop()
    init = {"cpu_ns": time.process_time_ns() - cpu0, "wall_ns": time.perf_counter_ns() - wall0}
    blocks: dict[str, dict[str, float]] = {}
    for scenario in order.split(","):
        loop.run_until_complete(turns.many(scenario, warmup))
        setup.flush()
        gc.collect()
        exported = sink.exported
        cpu, wall = time.process_time_ns(), time.perf_counter_ns()
        loop.run_until_complete(turns.many(scenario, n))
        wall = time.perf_counter_ns() - wall
        setup.flush()
        cpu = time.process_time_ns() - cpu
        blocks[scenario] = {
            "cpu_ns": cpu / n,
            "wall_ns": wall / n,
            "spans": (sink.exported - exported) / n,
        }
    checks: dict[str, dict[str, Any]] = {}
    for scenario in order.split(","):
        setup.flush()
        before = setup.metrics()
        sink.spans.clear()
        sink.logs.clear()
        sink.keep = True
        messages = loop.run_until_complete(turns.turn(scenario))
        setup.flush()
        sink.keep = False
        checks[scenario] = {
            "truth": _truth(messages),
            "spans": [_span(s) for s in sink.spans],
            "logs": [_log(r) for r in sink.logs],
            "metrics_before": before,
            "metrics_after": setup.metrics(),
        }
    loop.close()
    versions = {}
    for package in VERSIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    json.dump(
        {
            "variant": variant,
            "pid": os.getpid(),
            "init": init,
            "blocks": blocks,
            "checks": checks,
            "network": _netguard.report(),
            "versions": versions,
        },
        out,
    )
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
