"""Conformance with the GenAI semantic conventions (v1.41.1; gen_ai.workflow.duration: genai main).

A plain, a tool-calling, a streamed and a failing turn run on both providers (offline, and
openai through the real OpenAI client against the local fake server) with content capture
on. Every span, span event and metric they produce is checked against the table below,
written from the conventions (``model/gen-ai/*.yaml``, ``docs/gen-ai/*.md``) with the names of
the ``opentelemetry-semantic-conventions`` package; captured messages are validated against
the conventions' JSON schemas (``tests/data/semconv``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from opentelemetry.sdk.metrics.export import Histogram, Sum
from opentelemetry.sdk.trace import ReadableSpan

# The table is derived from the newest semantic-conventions package (constants for v1.41.1);
# the lowest supported opentelemetry-sdk pins an older one that lacks them, so there this
# module is skipped: what it checks is the library's output, not the package's version.
pytest.importorskip(
    "opentelemetry.semconv._incubating.attributes.openai_attributes",
    reason="needs the semantic-conventions package of the newest supported SDK (v1.41.1 names)",
)
from opentelemetry.semconv import _incubating, attributes
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.attributes import openai_attributes as oa
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
from opentelemetry.semconv.attributes import error_attributes as ea
from opentelemetry.semconv.attributes import exception_attributes as xa
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.trace import SpanKind, StatusCode

from chatter_otel import conventions as c
from chatter_otel.testing import CapturedTelemetry, FakeOpenAIServer, capture_telemetry
from tests.service_client import Api, running_service

DATA = Path(__file__).parent / "data" / "semconv"
SCHEMA_SHA256 = {
    "gen-ai-input-messages.json": "c1fddd81ea2b3cd547f74407f1267658f400f5c608772ab2fc4d9a5b3d16297f",
    "gen-ai-output-messages.json": "1de96f5387186cc9d0b8b075d82eb6240435c404de6cfc5ce7f681c7e821d68b",
}
SCHEMA_URL = Schemas.V1_41_1.value
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
ROLES = {"system", "user", "assistant", "tool"}
FINISH_REASONS = {"stop", "length", "content_filter", "tool_call", "error"}
DEPRECATED = {
    "exception.escaped",
    "gen_ai.system",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "http.method",
    "http.status_code",
}


@dataclass(frozen=True)
class SpanSpec:
    kind: SpanKind
    required: frozenset[str]
    """Always present."""
    on_success: frozenset[str] = frozenset()
    """Present when the operation succeeded (recommended, and available here)."""


@dataclass(frozen=True)
class MetricSpec:
    instrument: type
    unit: str
    buckets: tuple[float, ...] | None
    required: frozenset[str]
    allowed: frozenset[str]


_GENAI_METRIC_ATTRS = frozenset(
    {ga.GEN_AI_OPERATION_NAME, ga.GEN_AI_PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL}
)
_GENAI_METRIC_ALLOWED = _GENAI_METRIC_ATTRS | {ga.GEN_AI_RESPONSE_MODEL}

SPANS: Mapping[str, SpanSpec] = {
    ga.GenAiOperationNameValues.CHAT.value: SpanSpec(
        SpanKind.CLIENT,
        frozenset({ga.GEN_AI_OPERATION_NAME, ga.GEN_AI_PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL}),
        frozenset(
            {
                ga.GEN_AI_RESPONSE_MODEL,
                ga.GEN_AI_RESPONSE_FINISH_REASONS,
                ga.GEN_AI_RESPONSE_ID,
                ga.GEN_AI_USAGE_INPUT_TOKENS,
                ga.GEN_AI_USAGE_OUTPUT_TOKENS,
                ga.GEN_AI_INPUT_MESSAGES,
                ga.GEN_AI_OUTPUT_MESSAGES,
            }
        ),
    ),
    ga.GenAiOperationNameValues.EXECUTE_TOOL.value: SpanSpec(
        SpanKind.INTERNAL,
        frozenset(
            {
                ga.GEN_AI_OPERATION_NAME,
                ga.GEN_AI_TOOL_NAME,
                ga.GEN_AI_TOOL_TYPE,
                ga.GEN_AI_TOOL_CALL_ID,
                ga.GEN_AI_TOOL_DESCRIPTION,
                ga.GEN_AI_TOOL_CALL_ARGUMENTS,
            }
        ),
        frozenset({ga.GEN_AI_TOOL_CALL_RESULT}),
    ),
    ga.GenAiOperationNameValues.INVOKE_WORKFLOW.value: SpanSpec(
        SpanKind.INTERNAL,
        frozenset({ga.GEN_AI_OPERATION_NAME, ga.GEN_AI_WORKFLOW_NAME, ga.GEN_AI_CONVERSATION_ID}),
    ),
}

METRICS: Mapping[str, MetricSpec] = {
    gm.GEN_AI_CLIENT_TOKEN_USAGE: MetricSpec(
        Histogram,
        "{token}",
        TOKEN_BUCKETS,
        _GENAI_METRIC_ATTRS | {ga.GEN_AI_TOKEN_TYPE},
        _GENAI_METRIC_ALLOWED | {ga.GEN_AI_TOKEN_TYPE},
    ),
    gm.GEN_AI_CLIENT_OPERATION_DURATION: MetricSpec(
        Histogram,
        "s",
        DURATION_BUCKETS,
        _GENAI_METRIC_ATTRS,
        _GENAI_METRIC_ALLOWED | {ea.ERROR_TYPE},
    ),
    gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK: MetricSpec(
        Histogram, "s", DURATION_BUCKETS, _GENAI_METRIC_ATTRS, _GENAI_METRIC_ALLOWED
    ),
    gm.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK: MetricSpec(
        Histogram, "s", DURATION_BUCKETS, _GENAI_METRIC_ATTRS, _GENAI_METRIC_ALLOWED
    ),
    # genai main, model/gen-ai/metrics.yaml (no buckets given there).
    "gen_ai.workflow.duration": MetricSpec(
        Histogram,
        "s",
        DURATION_BUCKETS,
        frozenset({ga.GEN_AI_WORKFLOW_NAME, c.CHATTER_WORKFLOW_OUTCOME}),
        frozenset({ga.GEN_AI_WORKFLOW_NAME, c.CHATTER_WORKFLOW_OUTCOME, ea.ERROR_TYPE}),
    ),
    # chatter-otel's own: UCUM annotations for non-UCUM units, namespaced attributes.
    "chatter.llm.cost": MetricSpec(
        Sum,
        "{USD}",
        None,
        frozenset({ga.GEN_AI_PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL}),
        frozenset({ga.GEN_AI_PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL}),
    ),
    "chatter.turn.cost": MetricSpec(
        Histogram,
        "{USD}",
        None,
        frozenset({ga.GEN_AI_WORKFLOW_NAME}),
        frozenset({ga.GEN_AI_WORKFLOW_NAME}),
    ),
}
STREAMING_ONLY = {
    gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
    gm.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK,
}


def _convention_names() -> frozenset[str]:
    """Every attribute name the opentelemetry-semantic-conventions package defines."""
    names: set[str] = set()
    for package in (attributes, _incubating.attributes):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            names |= {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    return frozenset(names)


CONVENTION_NAMES = _convention_names()


def _schema(name: str) -> dict[str, Any]:
    raw = (DATA / name).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256[name], f"{name} was edited"
    schema: dict[str, Any] = json.loads(raw)
    return schema


INPUT_SCHEMA = _schema("gen-ai-input-messages.json")
OUTPUT_SCHEMA = _schema("gen-ai-output-messages.json")


# --- the turns ---------------------------------------------------------------------------


@pytest.fixture
def cap() -> Iterator[CapturedTelemetry]:
    with capture_telemetry(capture_content=True) as captured:
        yield captured


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def api(tmp_path: Path, cap: CapturedTelemetry, fake: FakeOpenAIServer) -> AsyncIterator[Api]:
    async with running_service(
        f"sqlite:///{tmp_path}/c.db",
        cap.telemetry,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake.base_url,
        CHATTER_LLM_MAX_RETRIES=0,
    ) as api:
        yield api


PROVIDERS = ["offline", "openai"]


async def _fail(api: Api, fake: FakeOpenAIServer, cid: str, provider: str) -> None:
    if provider == "openai":
        fake.fail_with_status = 500
        r = await api.say(cid, "hello")
    else:
        r = await api.say(cid, "hello #fail")
    assert r.status_code == 502


# --- checks ------------------------------------------------------------------------------


def _genai_spans(cap: CapturedTelemetry) -> list[ReadableSpan]:
    return [s for s in cap.spans() if ga.GEN_AI_OPERATION_NAME in (s.attributes or {})]


def _check_span(span: ReadableSpan, lost: frozenset[str] = frozenset()) -> None:
    """``lost``: attributes the client library does not hand over in this case."""
    attrs = dict(span.attributes or {})
    operation = str(attrs[ga.GEN_AI_OPERATION_NAME])
    spec = SPANS[operation]
    assert span.kind is spec.kind, span.name
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == SCHEMA_URL
    failed = span.status.status_code is StatusCode.ERROR
    expected = (spec.required if failed else spec.required | spec.on_success) - lost
    assert expected <= attrs.keys(), (span.name, sorted(expected - attrs.keys()))
    unknown = {k for k in attrs if k not in CONVENTION_NAMES and not k.startswith("chatter.")}
    assert unknown == set(), span.name
    assert DEPRECATED.isdisjoint(attrs), span.name
    if operation == "chat":
        assert span.name == f"chat {attrs[ga.GEN_AI_REQUEST_MODEL]}"
    elif operation == "execute_tool":
        assert span.name == f"execute_tool {attrs[ga.GEN_AI_TOOL_NAME]}"
        assert (
            attrs[ga.GEN_AI_TOOL_TYPE] == "function"
        )  # gen_ai.tool.type examples: function, extension, datastore
    else:
        assert span.name == f"invoke_workflow {attrs[ga.GEN_AI_WORKFLOW_NAME]}"
    if failed:
        assert attrs[ea.ERROR_TYPE]
    for event in span.events:
        assert event.name == "exception" or event.name.startswith("chatter."), event.name
        if event.name == "exception":
            assert set(event.attributes or {}) == {
                xa.EXCEPTION_TYPE,
                xa.EXCEPTION_MESSAGE,
                xa.EXCEPTION_STACKTRACE,
            }
            assert span.status.description == (event.attributes or {})[xa.EXCEPTION_MESSAGE]
    if ga.GEN_AI_INPUT_MESSAGES in attrs:
        _check_messages(json.loads(str(attrs[ga.GEN_AI_INPUT_MESSAGES])), INPUT_SCHEMA)
    if ga.GEN_AI_OUTPUT_MESSAGES in attrs:
        output = json.loads(str(attrs[ga.GEN_AI_OUTPUT_MESSAGES]))
        _check_messages(output, OUTPUT_SCHEMA)
        assert {m["finish_reason"] for m in output} <= FINISH_REASONS


def _check_messages(messages: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(messages)
    # The schemas also accept any string as a role; the conventions' roles are the enum.
    assert {m["role"] for m in messages} <= ROLES
    assert {p["type"] for m in messages for p in m["parts"]} <= {
        "text",
        "tool_call",
        "tool_call_response",
    }


def _check_metrics(cap: CapturedTelemetry, streamed: bool) -> set[str]:
    data = cap.reader.get_metrics_data()
    assert data is not None
    seen: set[str] = set()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name != "chatter_otel":
                continue
            assert sm.scope.schema_url == SCHEMA_URL
            for metric in sm.metrics:
                spec = METRICS.get(metric.name)
                if spec is None:
                    assert metric.name.startswith("chatter."), metric.name
                    continue
                seen.add(metric.name)
                assert isinstance(metric.data, spec.instrument), metric.name
                assert metric.unit == spec.unit, metric.name
                for point in metric.data.data_points:
                    keys = set(point.attributes or {})
                    assert spec.required <= keys <= spec.allowed, (metric.name, keys)
                    if spec.buckets is not None:
                        assert tuple(getattr(point, "explicit_bounds", ())) == spec.buckets
    assert seen >= STREAMING_ONLY if streamed else STREAMING_ONLY.isdisjoint(seen)
    return seen


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_plain_turn_conforms(api: Api, cap: CapturedTelemetry, provider: str) -> None:
    cid = await api.conversation(llm_provider=provider)
    assert (await api.say(cid, "hello there")).status_code == 201
    spans = _genai_spans(cap)
    assert sorted(str((s.attributes or {})[ga.GEN_AI_OPERATION_NAME]) for s in spans) == [
        "chat",
        "invoke_workflow",
    ]
    for span in spans:
        _check_span(span)
    [chat] = [s for s in spans if s.kind is SpanKind.CLIENT]
    attrs = chat.attributes or {}
    assert not str(attrs[ga.GEN_AI_RESPONSE_ID]).startswith("lc_run")
    # "If and only if the request is streaming".
    assert ga.GEN_AI_REQUEST_STREAM not in attrs
    if provider == "openai":
        assert str(attrs[ga.GEN_AI_RESPONSE_ID]).startswith("chatcmpl-")
        assert attrs[oa.OPENAI_RESPONSE_SERVICE_TIER] == "default"
        assert attrs[oa.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] == "fp_fake0001"
        assert attrs[oa.OPENAI_API_TYPE] == oa.OpenaiApiTypeValues.CHAT_COMPLETIONS.value
    output = json.loads(str(attrs[ga.GEN_AI_OUTPUT_MESSAGES]))
    assert [(m["role"], m["finish_reason"]) for m in output] == [("assistant", "stop")]
    seen = _check_metrics(cap, streamed=False)
    assert seen == set(METRICS) - STREAMING_ONLY


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_calling_turn_conforms(api: Api, cap: CapturedTelemetry, provider: str) -> None:
    cid = await api.conversation(llm_provider=provider)
    assert (await api.say(cid, "please calculate 6*7")).status_code == 201
    spans = _genai_spans(cap)
    for span in spans:
        _check_span(span)
    first, second = [s for s in spans if s.kind is SpanKind.CLIENT]
    output = json.loads(str((first.attributes or {})[ga.GEN_AI_OUTPUT_MESSAGES]))
    [message] = output
    assert message["finish_reason"] == "tool_call"
    [call] = [p for p in message["parts"] if p["type"] == "tool_call"]
    assert (call["name"], call["arguments"]) == ("calculator", {"expression": "6*7"})
    prompt = json.loads(str((second.attributes or {})[ga.GEN_AI_INPUT_MESSAGES]))
    assert [m["role"] for m in prompt] == ["user", "assistant", "tool"]
    assert prompt[2]["parts"] == [
        {"type": "tool_call_response", "id": call["id"], "response": "42"}
    ]
    [tool] = [s for s in spans if s.name == "execute_tool calculator"]
    tool_attrs = tool.attributes or {}
    assert tool_attrs[ga.GEN_AI_TOOL_CALL_ID] == call["id"]
    assert json.loads(str(tool_attrs[ga.GEN_AI_TOOL_CALL_ARGUMENTS])) == {"expression": "6*7"}
    assert json.loads(str(tool_attrs[ga.GEN_AI_TOOL_CALL_RESULT])) == 42
    _check_metrics(cap, streamed=False)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streamed_turn_conforms(api: Api, cap: CapturedTelemetry, provider: str) -> None:
    cid = await api.conversation(llm_provider=provider)
    events = await api.stream(cid, "hello big world")
    assert events[-1][0] == "message"
    spans = _genai_spans(cap)
    # langchain-openai drops the completion id of streamed chunks (README: deviations).
    lost = frozenset({ga.GEN_AI_RESPONSE_ID}) if provider == "openai" else frozenset()
    for span in spans:
        _check_span(span, lost)
    [chat] = [s for s in spans if s.kind is SpanKind.CLIENT]
    attrs = chat.attributes or {}
    assert attrs[ga.GEN_AI_REQUEST_STREAM] is True
    first = attrs[ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert chat.end_time is not None and chat.start_time is not None
    assert isinstance(first, float) and 0 < first < (chat.end_time - chat.start_time) / 1e9
    _check_metrics(cap, streamed=True)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_failing_turn_conforms(
    api: Api, cap: CapturedTelemetry, fake: FakeOpenAIServer, provider: str
) -> None:
    cid = await api.conversation(llm_provider=provider)
    await _fail(api, fake, cid, provider)
    spans = _genai_spans(cap)
    for span in spans:
        _check_span(span)
    chat, workflow = (
        next(s for s in spans if s.kind is SpanKind.CLIENT),
        next(s for s in spans if s.name == "invoke_workflow chat"),
    )
    for span in (chat, workflow):
        assert span.status.status_code is StatusCode.ERROR
    error_type = (chat.attributes or {})[ea.ERROR_TYPE]
    # Recorded once, on the span where it was raised.
    exceptions = [(s.name, e) for s in spans for e in s.events if e.name == "exception"]
    assert [name for name, _ in exceptions] == [chat.name]
    exception_type = str(exceptions[0][1].attributes[xa.EXCEPTION_TYPE])  # type: ignore[index]
    assert exception_type.rsplit(".", 1)[-1] == error_type
    durations = cap.points(gm.GEN_AI_CLIENT_OPERATION_DURATION)
    assert [dict(p.attributes).get(ea.ERROR_TYPE) for p in durations] == [error_type]
    [run] = cap.points("gen_ai.workflow.duration")
    assert dict(run.attributes)[ea.ERROR_TYPE] == (workflow.attributes or {})[ea.ERROR_TYPE]
    assert dict(run.attributes)[c.CHATTER_WORKFLOW_OUTCOME] == "error"
    _check_metrics(cap, streamed=False)
