"""Failures: recorded once, where they happened, as the exception conventions say.

``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN`` picks the signal: unset, an ``exception`` span event;
``logs``, a log record (the GenAI ``gen_ai.client.operation.exception`` for a chat call);
``logs/dup``, both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
except ImportError:  # opentelemetry-sdk < 1.39 names it InMemoryLogExporter
    from opentelemetry.sdk._logs.export import (  # type: ignore[no-redef, unused-ignore]
        InMemoryLogExporter as InMemoryLogRecordExporter,
    )
from opentelemetry.trace import StatusCode

from chatter_otel import _runtime, model_span, tool_span, workflow_span
from chatter_otel import conventions as c
from chatter_otel.errors import EMITS_LOG_RECORDS, SIGNAL_OPT_IN
from chatter_otel.testing import CapturedTelemetry, capture_telemetry


class ProviderDown(RuntimeError):
    pass


PROVIDER_DOWN = "tests.test_errors.ProviderDown"


@dataclass
class Captured:
    telemetry: CapturedTelemetry
    logs: InMemoryLogRecordExporter

    def exception_events(self) -> list[str]:
        """Names of the spans carrying an ``exception`` event."""
        spans = self.telemetry.spans()
        return [s.name for s in spans for e in s.events if e.name == "exception"]

    def log_events(self) -> list[tuple[str | None, str | None]]:
        """(event name, exception.type) of every log record emitted."""
        return [
            (r.log_record.event_name, str((r.log_record.attributes or {})[c.EXCEPTION_TYPE]))
            for r in self.logs.get_finished_logs()
        ]


needs_keyword_emit = pytest.mark.skipif(
    not EMITS_LOG_RECORDS,
    reason="log records from keywords need opentelemetry-api >= 1.39 (the opt-in is ignored)",
)


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    monkeypatch.delenv(SIGNAL_OPT_IN, raising=False)
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    with capture_telemetry() as captured:
        runtime = _runtime.get()
        _runtime.install(replace(runtime, event_logger=provider.get_logger("chatter_otel")))
        try:
            yield Captured(captured, exporter)
        finally:
            _runtime.install(runtime)
    provider.shutdown()


def _failing_turn() -> None:
    with (
        pytest.raises(ProviderDown),
        workflow_span("chat"),
        model_span(provider="offline", model="offline-echo-1"),
    ):
        raise ProviderDown("upstream 503")


def test_default_is_one_span_event_on_the_span_that_failed(cap: Captured) -> None:
    _failing_turn()
    assert cap.exception_events() == ["chat offline-echo-1"]
    assert cap.log_events() == []


def test_every_failed_span_has_error_status_type_and_message(cap: Captured) -> None:
    _failing_turn()
    for name in ("chat offline-echo-1", "invoke_workflow chat"):
        span = cap.telemetry.span(name)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "upstream 503"
        assert (span.attributes or {})[c.ERROR_TYPE] == "ProviderDown"


@needs_keyword_emit
def test_logs_mode_emits_the_genai_exception_event_instead(
    cap: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIGNAL_OPT_IN, "logs")
    _failing_turn()
    assert cap.exception_events() == []
    assert cap.log_events() == [(c.EVENT_GEN_AI_CLIENT_OPERATION_EXCEPTION, PROVIDER_DOWN)]
    [record] = cap.logs.get_finished_logs()
    assert record.log_record.severity_number is SeverityNumber.WARN
    chat = cap.telemetry.span("chat offline-echo-1")
    assert chat.context is not None
    assert record.log_record.span_id == chat.context.span_id


@needs_keyword_emit
def test_logs_dup_mode_emits_both(cap: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNAL_OPT_IN, "logs/dup")
    _failing_turn()
    assert cap.exception_events() == ["chat offline-echo-1"]
    assert cap.log_events() == [(c.EVENT_GEN_AI_CLIENT_OPERATION_EXCEPTION, PROVIDER_DOWN)]


@needs_keyword_emit
def test_a_tool_failure_is_a_generic_exception_event(
    cap: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIGNAL_OPT_IN, "logs")
    with pytest.raises(LookupError), tool_span("search"):
        raise LookupError("no index")
    assert cap.log_events() == [("exception", "LookupError")]


def test_the_span_event_names_the_fully_qualified_type(cap: Captured) -> None:
    _failing_turn()
    [event] = cap.telemetry.span("chat offline-echo-1").events
    assert (event.attributes or {})[c.EXCEPTION_TYPE] == PROVIDER_DOWN
