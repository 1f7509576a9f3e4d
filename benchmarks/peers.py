"""Part 6: chatter-otel against what a user would pick instead, on the same LangGraph turn.

Each variant runs in a fresh process of its own venv (``.venv-peers/<env>``, built by
``benchmarks/_peer_venvs.py`` from ``benchmarks/peer_requirements/``), so OpenLIT's and
traceloop-sdk's pins never touch the project's ``.venv``, and no variant inherits another's
patched classes or global providers. Every venv runs the same LangChain, LangGraph,
langchain-openai, openai and OpenTelemetry SDK (``common.txt``).

The turn is the reference service's graph (``call_model`` ⇄ ``tools``, no telemetry code in
its nodes) with a real ``langchain_openai.ChatOpenAI(stream_usage=True)`` talking HTTP to
the project's fake OpenAI server, started on loopback by this process: every peer sees a
real provider response, streamed usage included, and instruments the real client stack.
``tool``: "What is 12*7+3?" → calculator call → answer, two ``ainvoke`` calls. ``stream``:
the same two calls through ``astream``, usage in the last chunk.

Variants: none; chatter-otel (``capture_langchain=True``, the turn in ``workflow_span``);
openinference (``LangChainInstrumentor().instrument(tracer_provider=...)``); OpenLLMetry's
``LangchainInstrumentor`` alone; OpenLLMetry's ``Traceloop.init()``; ``openlit.init()``.
Each as its documentation sets it up, defaults kept, every exporter in memory. Figures are
per turn and divided by the no-telemetry variant of the same repetition; CPU time (the
runner's process, background export threads included, flushed before the clock stops) is
the primary figure: the fake server's work is in this process, not the runner's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass
from typing import Any

from benchmarks import _peer_venvs
from benchmarks._peer_capture import Capture, analyse, content_cell, cost_cell, usage_cell
from benchmarks._report import Options, Section
from benchmarks._stats import Summary, human_ns, ratio, shuffled

NAME = "peers"
TITLE = (
    "chatter-otel vs OpenLIT, OpenLLMetry, openinference (LangGraph turn, ChatOpenAI, fake server)"
)
SCENARIOS = ("tool", "stream")
_CHILD_TIMEOUT_S = 900
# Variables that would switch a peer on, point it somewhere or change its defaults.
_STRIPPED = (
    "OTEL_",
    "CHATTER_OTEL_",
    "TRACELOOP_",
    "OPENLIT_",
    "OPENAI_",
    "LANGCHAIN_",
    "LANGSMITH_",
)


@dataclass(frozen=True)
class Variant:
    key: str
    env: str
    label: str


VARIANTS = (
    Variant("none", "base", "no telemetry"),
    Variant("chatter-otel", "base", "chatter-otel zero-code capture + workflow span"),
    Variant("openinference", "openinference", "openinference LangChainInstrumentor"),
    Variant("openllmetry", "openllmetry", "OpenLLMetry LangchainInstrumentor alone"),
    Variant("traceloop", "openllmetry", "OpenLLMetry traceloop-sdk Traceloop.init()"),
    Variant("openlit", "openlit", "OpenLIT openlit.init()"),
)


def _environment(defaults: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    env.update({"OPENAI_API_KEY": "sk-bench", "PYTHONDONTWRITEBYTECODE": "1"})
    if not defaults:
        # traceloop-sdk's documented switch for its own usage telemetry (0.62 sends none
        # that the guard saw, see the defaults probe; kept for older versions).
        env["TRACELOOP_TELEMETRY"] = "false"
    return env


def _spawn(variant: Variant, base_url: str, n: int, warmup: int, order: list[str]) -> Any:
    """One runner process; ``order == ["defaults"]`` runs the untimed defaults probe."""
    argv = [
        str(_peer_venvs.python(variant.env)),
        "-m",
        "benchmarks._peer_runner",
        variant.key,
        base_url,
        str(n),
        str(warmup),
        ",".join(order),
    ]
    done = subprocess.run(
        argv,
        cwd=_peer_venvs.ROOT,
        env=_environment(order == ["defaults"]),
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant.key} runner failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def run(options: Options) -> Section:
    from chatter_otel.testing import FakeOpenAIServer

    section = Section(NAME, TITLE)
    rng = random.Random(options.seed)
    reps = options.reps or options.pick(5, 2)
    n = options.pick(60, 15)
    warmup = options.pick(10, 3)
    _peer_venvs.ensure(sorted({v.env for v in VARIANTS}))
    results: dict[str, list[Any]] = {v.key: [] for v in VARIANTS}
    with FakeOpenAIServer() as server:
        for rep in range(reps):
            for variant in shuffled(VARIANTS, rng):
                order = shuffled(SCENARIOS, rng)
                print(f"   rep {rep + 1}/{reps}: {variant.key} ({','.join(order)})", flush=True)
                results[variant.key].append(_spawn(variant, server.base_url, n, warmup, order))
        print("   defaults probes (untimed)", flush=True)
        probes = {v.key: _spawn(v, server.base_url, 1, 0, ["defaults"]) for v in VARIANTS[1:]}
        port = f":{server.port}"
    _report(section, results, reps, n, warmup)
    _report_probes(section, results, probes, port)
    table = matrix(results)
    print(table, flush=True)
    # Indented, so that it renders as a table inside the notes' bullet list.
    section.notes.append(
        "Side by side (last repetition's captures, median CPU ratios):\n\n"
        + "\n".join("  " + line for line in table.splitlines())
    )
    return section


def _report_probes(
    section: Section, results: dict[str, list[Any]], probes: dict[str, Any], port: str
) -> None:
    for variant in VARIANTS[1:]:
        runs = results[variant.key]
        refused = sum(r["network"]["refused"] for r in runs)
        others = sorted({t for r in runs for t in r["network"]["loopback"] if not t.endswith(port)})
        targets = sorted({t for r in runs for t in r["network"]["targets"]})
        section.check(
            f"({variant.key}) network attempts refused, as configured here (all processes)",
            str(refused),
            ", ".join(targets + [f"loopback {t}" for t in others])[:160],
            "0, loopback only to the fake server",
            refused == 0 and not others,
        )
        probe = probes[variant.key]["network"]
        tried = [f"{t} ×{c}" for t, c in sorted(probe["targets"].items())]
        tried += [f"loopback {t}" for t in sorted(probe["loopback"]) if not t.endswith(port)]
        section.add(
            f"({variant.key}) with its quick-start defaults (no option, untimed): "
            "network attempts refused",
            str(probe["refused"]),
            ", ".join(tried)[:160],
        )


def _captures(runs: list[Any], scenario: str) -> Capture:
    """The capture of the last repetition (every repetition ran the same turn)."""
    return analyse(runs[-1]["checks"][scenario])


def _varied(results: dict[str, list[Any]]) -> list[str]:
    """Variants whose capture differed between repetitions (expected: none)."""

    def cells(run: Any, scenario: str) -> tuple[object, ...]:
        capture = analyse(run["checks"][scenario])
        cells = (usage_cell(capture), cost_cell(capture), content_cell(capture))
        return (capture.spans, *cells)

    return [
        key
        for key, runs in results.items()
        if any(len({cells(r, s) for r in runs}) > 1 for s in SCENARIOS)
    ]


def _report(
    section: Section, results: dict[str, list[Any]], reps: int, n: int, warmup: int
) -> None:
    base = results["none"]
    for scenario in SCENARIOS:
        cpu = Summary.of([r["blocks"][scenario]["cpu_ns"] for r in base])
        wall = Summary.of([r["blocks"][scenario]["wall_ns"] for r in base])
        section.add(
            f"{scenario} turn, (none) CPU per turn",
            human_ns(cpu.median),
            f"{human_ns(cpu.low)}–{human_ns(cpu.high)}, n={cpu.n}",
        )
        section.add(
            f"{scenario} turn, (none) wall per turn",
            human_ns(wall.median),
            f"{human_ns(wall.low)}–{human_ns(wall.high)}, n={wall.n}",
        )
        for variant in VARIANTS[1:]:
            pairs = list(zip(results[variant.key], base, strict=True))
            for what in ("cpu_ns", "wall_ns"):
                values = [
                    r["blocks"][scenario][what] / b["blocks"][scenario][what] for r, b in pairs
                ]
                value, spread = Summary.of(values).fmt(ratio)
                figure = "CPU" if what == "cpu_ns" else "wall"
                section.add(
                    f"{scenario} turn, ({variant.key})/(none) {figure}: {variant.label}",
                    value,
                    spread,
                )
            added = Summary.of(
                [
                    r["blocks"][scenario]["cpu_ns"] - b["blocks"][scenario]["cpu_ns"]
                    for r, b in pairs
                ]
            )
            section.add(
                f"{scenario} turn, ({variant.key})−(none): CPU added per turn",
                human_ns(added.median),
                f"{human_ns(added.low)}–{human_ns(added.high)}, n={added.n}",
            )
    for variant in VARIANTS:
        runs = results[variant.key]
        init = Summary.of([r["init"]["cpu_ns"] for r in runs])
        section.add(
            f"({variant.key}) start-up CPU: imports + set-up, once per process",
            human_ns(init.median),
            f"{human_ns(init.low)}–{human_ns(init.high)}, n={init.n}",
        )
        if variant.key == "none":
            continue
        tool, stream = _captures(runs, "tool"), _captures(runs, "stream")
        section.add(
            f"({variant.key}) capture: spans per turn (tool / stream)",
            f"{tool.spans} / {stream.spans}",
        )
        section.add(f"({variant.key}) capture: usage of each call, tool turn", usage_cell(tool))
        section.add(f"({variant.key}) capture: streamed usage, stream turn", usage_cell(stream))
        section.add(f"({variant.key}) capture: cost, tool turn", cost_cell(tool))
        section.add(f"({variant.key}) capture: cost, stream turn", cost_cell(stream))
        section.add(
            f"({variant.key}) capture: prompt/completion text exported by default",
            content_cell(tool),
        )
    truths = {
        json.dumps(r["checks"][s]["truth"])
        for runs in results.values()
        for r in runs
        for s in SCENARIOS
    }
    versions = results["openlit"][-1]["versions"] | results["traceloop"][-1]["versions"]
    versions |= results["openinference"][-1]["versions"]
    section.notes += [
        f"Each repetition ({reps}) starts every variant once, in a shuffled order, as a fresh "
        f"process of its venv; the process runs {warmup} warm-up turns then {n} timed turns of "
        "each scenario (scenario order shuffled too), then one more turn per scenario whose "
        "exported spans, log records and metric points are kept and read back. Ratios are per "
        "repetition against (none) of the same repetition; median and min–max.",
        "The turn: reference LangGraph graph, `ChatOpenAI(model='gpt-4o-mini', "
        "stream_usage=True)` over HTTP to chatter_otel.testing.FakeOpenAIServer on 127.0.0.1, "
        "started by the parent. Provider-reported usage per call (the truth every capture is "
        f"checked against; identical in every run: {len(truths) == 1}): {sorted(truths)[0]}. "
        "Captures that differed between repetitions: "
        f"{', '.join(_varied(results)) or 'none'} (the tables show the last one). "
        "Expected cost: gpt-4o-mini at $0.15 / $0.60 per million input / output tokens.",
        "chatter-otel: setup_telemetry(capture_langchain=True) on private providers, the turn in "
        "workflow_span (what feeds the write-back; the write-back itself is off here, part 1 "
        "measures it). openinference: LangChainInstrumentor().instrument(tracer_provider=...), "
        "its defaults (handler run through LangChain's thread pool). OpenLLMetry: both ways a "
        "user meets it: the LangchainInstrumentor alone on an existing OTel setup (what an app "
        "that already exports OTel adds), and traceloop-sdk's Traceloop.init() (what its "
        "README starts with: it instruments every library it finds, openai included). OpenLIT: "
        "openlit.init() on SDK providers set globally beforehand (it reuses them), defaults "
        "otherwise. Every span, log and metric exporter is in memory.",
        "Offline: each runner installs benchmarks/_netguard.py before any import: DNS lookups "
        "and connects to anything but loopback are refused and counted. OpenLIT downloads its "
        "pricing JSON from GitHub at init unless `pricing_json` names a file: it gets "
        "benchmarks/peer_requirements/openlit-pricing.json (its format, gpt-4o-mini at the list "
        "price; offline with no file it records no cost). traceloop-sdk runs with "
        "TRACELOOP_TELEMETRY=false and its exporter given in code.",
        "Usage is 'exact' for a call when one span carries exactly the provider's input and "
        "output tokens for it; more usage spans than calls means the same call is counted on "
        "several spans (e.g. LangChain's and the openai client's), so a sum over spans "
        "over-counts. Content: whether the prompt or the answer text appears anywhere in the "
        "exported spans, events or log records.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
    ]


def _cpu_ratio(runs: list[Any], base: list[Any], scenario: str) -> str:
    values = [
        r["blocks"][scenario]["cpu_ns"] / b["blocks"][scenario]["cpu_ns"]
        for r, b in zip(runs, base, strict=True)
    ]
    return ratio(Summary.of(values).median)


def matrix(results: dict[str, list[Any]]) -> str:
    """The side-by-side capture table (markdown) the README shows."""
    lines = [
        "| | " + " | ".join(v.key for v in VARIANTS[1:]) + " |",
        "|---|" + "---|" * (len(VARIANTS) - 1),
    ]
    cells: dict[str, list[str]] = {}
    for variant in VARIANTS[1:]:
        runs = results[variant.key]
        tool, stream = _captures(runs, "tool"), _captures(runs, "stream")
        base = results["none"]
        column = [
            *(_cpu_ratio(runs, base, scenario) for scenario in SCENARIOS),
            f"{tool.spans} / {stream.spans}",
            usage_cell(tool),
            usage_cell(stream),
            cost_cell(tool),
            content_cell(tool),
            str(sum(r["network"]["refused"] for r in runs)),
        ]
        cells[variant.key] = column
    rows = (
        "CPU per turn vs none, tool turn",
        "CPU per turn vs none, streamed turn",
        "spans per turn (tool / stream)",
        "usage of each call",
        "streamed usage",
        "cost",
        "content exported by default",
        "network attempts refused",
    )
    for index, row in enumerate(rows):
        lines.append(
            f"| {row} | "
            + " | ".join(cells[v.key][index].replace("|", "\\|") for v in VARIANTS[1:])
            + " |"
        )
    return "\n".join(lines)
