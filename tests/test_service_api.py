"""The reference Chatter service: chat turns, streaming, persistence and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.engine import URL

from chatter_otel.testing import CapturedTelemetry, capture_telemetry
from tests.service_client import Api, running_service


@pytest.fixture
def captured() -> Iterator[CapturedTelemetry]:
    with capture_telemetry() as cap:
        yield cap


@pytest.fixture
async def api(db_url: URL, captured: CapturedTelemetry) -> AsyncIterator[Api]:
    async with running_service(
        db_url.render_as_string(hide_password=False), captured.telemetry
    ) as api:
        yield api


async def test_plain_turn_stores_user_and_assistant_messages(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "Hello there")
    assert r.status_code == 201
    assert r.json()["content"] == "You said: Hello there"
    rows = await api.messages(cid)
    assert [(m["sequence_number"], m["role"], m["content"]) for m in rows] == [
        (0, "USER", "Hello there"),
        (1, "ASSISTANT", "You said: Hello there"),
    ]


async def test_tool_calling_turn_stores_both_messages_with_the_tool_call(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "Please calculate 12*7")
    assert r.status_code == 201
    rows = await api.messages(cid)
    assert [m["role"] for m in rows] == ["USER", "ASSISTANT"]
    assert rows[1]["content"] == "The result is 84."
    assert rows[1]["tool_calls"] == [
        {
            "id": rows[1]["tool_calls"][0]["id"],
            "name": "calculator",
            "arguments": '{"expression": "12*7"}',
            "result": "84",
        }
    ]


async def test_streaming_turn_sends_deltas_then_the_stored_message(api: Api) -> None:
    cid = await api.conversation()
    events = await api.stream(cid, "hello big world")
    deltas = "".join(data["content"] for name, data in events if name == "delta")
    assert deltas == "You said: hello big world"
    assert events[-1][0] == "message"
    stored = await api.messages(cid)
    assert stored[1]["id"] == events[-1][1]["id"]
    assert stored[1]["content"] == "You said: hello big world"


async def test_history_is_sent_to_the_model_on_later_turns(api: Api) -> None:
    cid = await api.conversation(system_prompt="Be brief.")
    await api.say(cid, "one")
    r = await api.say(cid, "two")
    assert r.json()["content"] == "You said: two"
    assert [m["sequence_number"] for m in await api.messages(cid)] == [0, 1, 2, 3]


async def test_concurrent_turns_get_distinct_sequence_numbers(api: Api) -> None:
    cid = await api.conversation()
    responses = await asyncio.gather(*(api.say(cid, f"turn {i}") for i in range(8)))
    assert [r.status_code for r in responses] == [201] * 8
    rows = await api.messages(cid)
    assert sorted(m["sequence_number"] for m in rows) == list(range(16))
    assert (await api.get(cid))["message_count"] == 16


async def test_failed_turn_answers_502_and_stores_the_error(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "break #fail")
    assert r.status_code == 502
    rows = await api.messages(cid)
    assert rows[1]["id"] == r.json()["message_id"]
    assert (
        rows[1]["error_message"] == "OfflineModelError: offline provider failure requested by #fail"
    )


async def test_unknown_conversation_is_404(api: Api) -> None:
    r = await api.say("01ARZ3NDEKTSV4RRFFQ69G5FAV", "hi")
    assert r.status_code == 404
    assert r.json() == {"detail": "conversation 01ARZ3NDEKTSV4RRFFQ69G5FAV not found"}


async def test_non_ulid_conversation_id_is_422(api: Api) -> None:
    r = await api.say("not-a-ulid'; DROP TABLE messages;--", "hi")
    assert r.status_code == 422


@pytest.mark.parametrize("content", ["", "   "])
async def test_empty_content_is_422(api: Api, content: str) -> None:
    cid = await api.conversation()
    assert (await api.say(cid, content)).status_code == 422
    assert await api.messages(cid) == []


async def test_oversized_content_is_422(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "x" * 32_001)
    assert r.status_code == 422
    assert await api.messages(cid) == []


async def test_unknown_provider_is_422(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "hi", provider="skynet")
    assert r.status_code == 422
    assert "Input should be 'offline', 'openai' or 'anthropic'" in r.text
    assert await api.messages(cid) == []


async def test_unknown_model_is_422_and_stores_nothing(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "hi", model="gpt-made-up-by-a-client")
    assert r.status_code == 422
    assert r.json() == {"detail": "unknown model 'gpt-made-up-by-a-client' for provider 'offline'"}
    assert await api.messages(cid) == []


async def test_configured_unpriced_model_is_accepted(api: Api) -> None:
    cid = await api.conversation()
    assert (await api.say(cid, "hi", model="offline-unpriced-1")).status_code == 201


async def test_conversation_with_an_unknown_model_is_422(api: Api) -> None:
    user = await api.user()
    r = await api.client.post(
        "/api/v1/conversations", json={"user_id": user, "title": "t", "llm_model": "nope-1"}
    )
    assert r.status_code == 422
    assert r.json() == {"detail": "unknown model 'nope-1' for provider 'offline'"}


async def test_lone_surrogate_in_json_is_422_without_echoing_it(api: Api) -> None:
    cid = await api.conversation()
    r = await api.client.post(
        f"/api/v1/conversations/{cid}/messages",
        content=b'{"content": "hi \\ud800 there"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["detail"] == [
        {
            "type": "string_unicode",
            "loc": ["body", "content"],
            "msg": "Input should be a valid string, unable to parse raw data as a unicode string",
        }
    ]
    assert "ud800" not in r.text
    assert await api.messages(cid) == []


@pytest.mark.parametrize(
    ("path", "field"),
    [("messages", "content"), ("messages", "model"), ("conversations", "title")],
)
async def test_nul_in_a_text_field_is_422(api: Api, path: str, field: str) -> None:
    cid = await api.conversation()
    if path == "messages":
        body: dict[str, str] = {"content": "hi", field: "a\x00b"}
        url = f"/api/v1/conversations/{cid}/messages"
    else:
        body = {"user_id": await api.user("nul"), field: "a\x00b"}
        url = "/api/v1/conversations"
    r = await api.client.post(url, json=body)
    assert r.status_code == 422
    assert "NUL" in r.text or "control characters" in r.text
    assert await api.messages(cid) == []


async def test_openapi_documents_errors_and_providers(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    post = schema["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]
    assert {"404", "409", "413", "422", "502", "503"} <= set(post["responses"])
    provider = schema["components"]["schemas"]["MessageIn"]["properties"]["provider"]
    enums = [choice.get("enum") for choice in provider["anyOf"]]
    assert ["offline", "openai", "anthropic"] in enums


async def test_openai_without_a_key_is_422_and_stores_nothing(api: Api) -> None:
    cid = await api.conversation()
    r = await api.say(cid, "hi", provider="openai")
    assert r.status_code == 422
    assert r.json() == {"detail": "provider 'openai' needs OPENAI_API_KEY"}
    assert await api.messages(cid) == []


async def test_malformed_json_is_422(api: Api) -> None:
    cid = await api.conversation()
    r = await api.client.post(
        f"/api/v1/conversations/{cid}/messages",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


async def test_wrong_types_are_422(api: Api) -> None:
    cid = await api.conversation()
    r = await api.client.post(f"/api/v1/conversations/{cid}/messages", json={"content": 42})
    assert r.status_code == 422


async def test_body_over_one_mebibyte_is_413(api: Api) -> None:
    cid = await api.conversation()
    r = await api.client.post(f"/api/v1/conversations/{cid}/messages", content=b"x" * 1_048_577)
    assert r.status_code == 413


async def test_conversation_for_unknown_user_is_404(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/conversations", json={"user_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "title": "t"}
    )
    assert r.status_code == 404


async def test_list_conversations_filters_by_user(api: Api) -> None:
    alice, bob = await api.user("alice"), await api.user("bob")
    mine = await api.conversation(alice)
    await api.conversation(bob)
    r = await api.client.get(f"/api/v1/conversations?user_id={alice}")
    assert [c["id"] for c in r.json()] == [mine]


async def test_healthz(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.json() == {"status": "ok"}


async def test_a_streamed_turn_whose_message_cannot_be_stored_ends_with_an_error_event(
    pg_url: URL, captured: CapturedTelemetry
) -> None:
    """The turn's task stores the message; when the database refuses it (here a trigger, as
    when the database goes down mid-turn), the stream used to wait for that message forever
    (the demo hung). It must end with an error event."""
    from sqlalchemy import text

    from tests.test_writeback_support import engine_for

    async with running_service(
        pg_url.render_as_string(hide_password=False), captured.telemetry
    ) as api:
        cid = await api.conversation()
        engine = engine_for(pg_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_assistant() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'assistant rows refused'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_assistant BEFORE INSERT ON messages FOR EACH ROW "
                    "WHEN (NEW.role = 'ASSISTANT') EXECUTE FUNCTION refuse_assistant()"
                )
            )
        engine.dispose()
        events = await asyncio.wait_for(api.stream(cid, "hello big world"), timeout=30)
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1] == {"detail": "the database is unavailable (DBAPIError); retry later"}
