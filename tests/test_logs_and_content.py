"""Log correlation and the content-capture switch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from opentelemetry import trace

from chatter_otel import configure_logging, workflow_span
from chatter_otel import conventions as c
from chatter_otel.testing import capture_telemetry
from tests.service_client import running_service

SECRET_PROMPT = "my card number is 4111 1111 1111 1111"


def _ids() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def test_stdlib_records_inside_a_span_carry_its_ids(caplog: pytest.LogCaptureFixture) -> None:
    with capture_telemetry(), workflow_span("chat"):
        logging.getLogger("chatter.test").warning("inside")
        trace_id, span_id = _ids()
    record = next(r for r in caplog.records if r.getMessage() == "inside")
    assert (record.otelTraceID, record.otelSpanID) == (trace_id, span_id)  # type: ignore[attr-defined]


def test_json_lines_carry_trace_id_for_stdlib_and_structlog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capture_telemetry():
        handler = configure_logging("json", "INFO")
        try:
            with workflow_span("chat"):
                trace_id, span_id = _ids()
                logging.getLogger("chatter.stdlib").warning("from stdlib")
                structlog.get_logger("chatter.structlog").warning("from structlog")
            logging.getLogger("chatter.stdlib").warning("outside")
        finally:
            logging.getLogger().removeHandler(handler)
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    by_event = {line["event"]: line for line in lines}
    for event in ("from stdlib", "from structlog"):
        assert (by_event[event]["trace_id"], by_event[event]["span_id"]) == (trace_id, span_id)
    assert "trace_id" not in by_event["outside"]


async def test_content_is_not_exported_by_default(tmp_path: Path) -> None:
    with capture_telemetry() as cap:
        async with running_service(f"sqlite:///{tmp_path}/c.db", cap.telemetry) as api:
            await api.say(await api.conversation(), SECRET_PROMPT)
        spans = cap.spans()
    assert spans
    for span in spans:
        for key, value in (span.attributes or {}).items():
            assert "4111" not in str(value), (span.name, key)
        for event in span.events:
            assert "4111" not in str(dict(event.attributes or {}))


async def test_content_capture_puts_prompt_and_completion_on_the_model_span(tmp_path: Path) -> None:
    with capture_telemetry(capture_content=True, instrument_langchain=False) as cap:
        async with running_service(f"sqlite:///{tmp_path}/c.db", cap.telemetry) as api:
            await api.say(await api.conversation(), "hello you")
        attrs = cap.span("chat offline-echo-1").attributes or {}
    assert json.loads(str(attrs[c.GEN_AI_INPUT_MESSAGES])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hello you"}]}
    ]
    assert json.loads(str(attrs[c.GEN_AI_OUTPUT_MESSAGES])) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "You said: hello you"}],
            "finish_reason": "stop",
        }
    ]
