"""What leaves the process by default: no prompt, no completion, no key, no password."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chatter_otel.testing import FakeOpenAIServer, capture_telemetry
from tests.service_client import running_service

PROMPT = "my passport number is X1234567"
KEY = "sk-proj-secret-key-0987654321"


@pytest.mark.parametrize("openinference", [False, True], ids=["default", "openinference"])
async def test_nothing_of_the_prompt_or_key_is_in_spans_metrics_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, openinference: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer() as fake, capture_telemetry(instrument_langchain=openinference) as cap:
        async with running_service(
            f"sqlite:///{tmp_path}/s.db",
            cap.telemetry,
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=fake.base_url,
        ) as api:
            cid = await api.conversation(llm_provider="openai")
            assert (await api.say(cid, PROMPT)).status_code == 201
            await api.stream(cid, PROMPT)
            await api.say(cid, f"{PROMPT} please calculate 2*3")
        kinds = {(s.attributes or {}).get("openinference.span.kind") for s in cap.spans()}
        assert ("LLM" in kinds) is openinference
        exported: list[str] = []
        for span in cap.spans():
            exported.append(str(dict(span.attributes or {})))
            exported.extend(str(dict(e.attributes or {})) for e in span.events)
        data = cap.reader.get_metrics_data()
        assert data is not None
        exported.append(data.to_json())
    # At the default level (INFO); database drivers' DEBUG lines echo SQL parameters, which is
    # the application's own logging, documented in the threat model.
    logs = [r.getMessage() + str(r.args) for r in caplog.records if r.levelno >= logging.INFO]
    assert logs
    for text in (*exported, *logs):
        assert "X1234567" not in text
        assert KEY not in text
    # the reply echoes the prompt, so this also proves completions are not exported
    assert "Echo:" not in " ".join(exported)


def test_database_password_is_masked_in_errors_and_check_config() -> None:
    from chatter_otel.dburl import masked

    assert masked("postgresql+asyncpg://chatter:pa55word@db:5432/chatter") == (
        "postgresql+asyncpg://chatter:***@db:5432/chatter"
    )
