"""One variant of the ``peers`` part, in a fresh process of its own peer venv.

    .venv-peers/<env>/bin/python -m benchmarks._peer_runner VARIANT BASE_URL N WARMUP ORDER

Run by ``benchmarks/peers.py``, never by hand. The network guard goes in before anything
else is imported, so an import-time download is refused and counted too. Then: set up the
variant as its documentation tells a user to (every exporter in memory), time ``N`` turns of
each scenario after ``WARMUP`` turns, run one more turn per scenario with its spans, log
records and metrics kept, and print one JSON object on stdout. The parent analyses it.

The peers' packages exist only in their venvs: they are imported inside the functions that
use them (mypy in the project's venv sees them as missing, ``ignore_missing_imports``).
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
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

PROMPT = "What is 12*7+3?"
"""The fake server answers it with a calculator call, then with "The result is 87."."""
MODEL = "gpt-4o-mini"
PRICING_JSON = Path(__file__).resolve().parent / "peer_requirements" / "openlit-pricing.json"
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


_READERS: dict[int, Any] = {}
"""The in-memory metric reader of each meter provider built here, by provider id."""


@dataclass
class Sink:
    """What a variant's exporters received: everything while ``keep``, else a count."""

    keep: bool = False
    spans: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    exported: int = 0


@dataclass
class Setup:
    flush: Callable[[], None] = lambda: None
    metrics: Callable[[], list[dict[str, Any]]] = list
    wrap_turn: bool = False
    """Open chatter-otel's ``workflow_span`` around the turn, as its users do."""


def _span_exporter(sink: Sink) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Exporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> Any:
            sink.exported += len(spans)
            if sink.keep:
                sink.spans.extend(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return Exporter()


def _log_exporter(sink: Sink) -> Any:
    from opentelemetry.sdk._logs import export as logs_export

    base = getattr(logs_export, "LogRecordExporter", None) or logs_export.LogExporter
    success = getattr(logs_export, "LogRecordExportResult", None) or logs_export.LogExportResult

    class Exporter(base):  # type: ignore[misc, valid-type]
        def export(self, batch: Sequence[Any]) -> Any:
            if sink.keep:
                sink.logs.extend(batch)
            return success.SUCCESS

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    return Exporter()


def _providers(sink: Sink, *, set_global: bool, tracing: bool = True) -> tuple[Any, Any, Any]:
    """SDK tracer, meter and logger providers that export only into ``sink``; with
    ``set_global``, installed as the global ones (the tracer provider only if ``tracing``)."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(sink)))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(sink)))
    _READERS[id(meter_provider)] = reader
    if set_global:
        from opentelemetry import _logs, metrics, trace

        if tracing:
            trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
    return tracer_provider, meter_provider, logger_provider


def _flusher(*providers: Any) -> Callable[[], None]:
    def flush() -> None:
        for provider in providers:
            provider.force_flush(60_000)

    return flush


def _metric_points(meter_provider: Any) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        data = _READERS[id(meter_provider)].get_metrics_data()
        out: list[dict[str, Any]] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        value = getattr(p, "sum", None)
                        if value is None:
                            value = getattr(p, "value", None)
                        out.append(
                            {"name": m.name, "attributes": _jsonable(p.attributes), "sum": value}
                        )
        return out

    return read


def _setup(variant: str, sink: Sink) -> Setup:
    if variant == "none":
        return Setup()
    if variant == "chatter-otel":
        from chatter_otel.config import TelemetryConfig
        from chatter_otel.telemetry import setup_telemetry

        tracer_provider, meter_provider, _ = _providers(sink, set_global=False)
        telemetry = setup_telemetry(
            TelemetryConfig(
                traces_exporters=("none",),
                metrics_exporters=("none",),
                logs_exporters=("none",),
                capture_langchain=True,
                writeback_url=None,
            ),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            set_global=False,
            configure_logs=False,
        )
        return Setup(
            flush=_flusher(telemetry, tracer_provider),
            metrics=_metric_points(meter_provider),
            wrap_turn=True,
        )
    if variant == "openinference":
        from openinference.instrumentation.langchain import LangChainInstrumentor

        tracer_provider, _, _ = _providers(sink, set_global=False)
        LangChainInstrumentor().instrument(tracer_provider=tracer_provider)
        return Setup(flush=_flusher(tracer_provider))
    if variant == "openllmetry":
        from opentelemetry.instrumentation.langchain import LangchainInstrumentor

        tracer_provider, meter_provider, logger_provider = _providers(sink, set_global=False)
        LangchainInstrumentor().instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
        )
        return Setup(
            flush=_flusher(tracer_provider, logger_provider),
            metrics=_metric_points(meter_provider),
        )
    if variant == "traceloop":
        from traceloop.sdk import Traceloop

        # Traceloop builds its own tracer provider around the exporter it is given (its
        # documented way to export elsewhere); the app's meter and logger providers are
        # global, as in an app that already has OpenTelemetry metrics.
        _, meter_provider, logger_provider = _providers(sink, set_global=True, tracing=False)
        Traceloop.init(
            app_name="peers-bench",
            exporter=_span_exporter(sink),
            telemetry_enabled=False,
        )
        from opentelemetry import trace

        return Setup(
            flush=_flusher(trace.get_tracer_provider(), logger_provider),
            metrics=_metric_points(meter_provider),
        )
    if variant == "openlit":
        import openlit

        tracer_provider, meter_provider, logger_provider = _providers(sink, set_global=True)
        openlit.init(application_name="peers-bench", pricing_json=str(PRICING_JSON))
        return Setup(
            flush=_flusher(tracer_provider, logger_provider),
            metrics=_metric_points(meter_provider),
        )
    raise SystemExit(f"unknown variant {variant!r}")


def _setup_defaults(variant: str) -> Setup:
    """The variant exactly as its quick start shows it: no exporter, no option given.

    Not timed: only to see what each one reaches for when nobody configured it.
    """
    if variant == "chatter-otel":
        from chatter_otel.telemetry import setup_telemetry

        setup_telemetry().capture_langchain()
    elif variant == "openlit":
        import openlit

        openlit.init()
    elif variant == "traceloop":
        from traceloop.sdk import Traceloop

        Traceloop.init()
    elif variant == "openinference":
        from openinference.instrumentation.langchain import LangChainInstrumentor

        LangChainInstrumentor().instrument()
    elif variant == "openllmetry":
        from opentelemetry.instrumentation.langchain import LangchainInstrumentor

        LangchainInstrumentor().instrument()
    return Setup()


def _probe(variant: str, base_url: str) -> dict[str, Any]:
    turns = Turns(base_url, _setup_defaults(variant))
    asyncio.run(turns.many("tool", 1))
    time.sleep(6)  # past the SDKs' batch and periodic export intervals (5 s)
    return {"variant": variant, "network": _netguard.report()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _span(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "attributes": _jsonable(span.attributes or {}),
        "events": [
            {"name": e.name, "attributes": _jsonable(e.attributes or {})} for e in span.events
        ],
    }


def _log(record: Any) -> dict[str, Any]:
    inner = getattr(record, "log_record", record)
    return {
        "event": getattr(inner, "event_name", None),
        "body": _jsonable(getattr(inner, "body", None)),
        "attributes": _jsonable(getattr(inner, "attributes", None) or {}),
    }


class Turns:
    """The LangGraph turn of the reference service, against the fake OpenAI server."""

    def __init__(self, base_url: str, setup: Setup) -> None:
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
    sink = Sink()
    setup = _setup(variant, sink)
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
