"""The fake OpenAI server, driven by the real openai client: requests recorded, error statuses,
unknown paths, latency and the server's lifecycle.
"""

from __future__ import annotations

import http.client
import threading
import time

import httpx
import openai
import pytest

from chatter_otel.testing._fake_openai import FakeOpenAIServer
from tests._openai_clients import HELLO, client

pytestmark = pytest.mark.usefixtures("_close_clients")


def test_requests_record_body_and_headers(server: FakeOpenAIServer) -> None:
    client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        temperature=0.5,
    )
    assert server.requests == [{"model": "gpt-4o-mini", "messages": HELLO, "temperature": 0.5}]
    assert server.headers[0]["authorization"] == "Bearer sk-test"


def test_repr_never_shows_headers(server: FakeOpenAIServer) -> None:
    client(server).chat.completions.create(model="m", messages=HELLO)
    assert repr(server) == f"FakeOpenAIServer(port={server.port}, requests=1)"


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
        (403, openai.PermissionDeniedError, "permission_error"),
        (404, openai.NotFoundError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_fail_with_status_raises_the_openai_error_class(
    server: FakeOpenAIServer, status: int, error_class: type[openai.APIStatusError], error_type: str
) -> None:
    server.fail_with_status = status
    with pytest.raises(error_class) as raised:
        client(server).chat.completions.create(model="m", messages=HELLO)
    assert raised.value.status_code == status
    assert raised.value.type == error_type
    # openai 1.x quotes the whole error body in the message, later releases only its text.
    assert raised.value.message.startswith(f"Error code: {status} - ")
    assert f"Fake OpenAI server set to fail with HTTP {status}." in raised.value.message


def test_failed_requests_are_still_recorded(server: FakeOpenAIServer) -> None:
    server.fail_with_status = 500
    with pytest.raises(openai.InternalServerError):
        client(server).chat.completions.create(model="m", messages=HELLO)
    assert len(server.requests) == 1


def test_missing_model_is_a_bad_request(server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions", json={"messages": HELLO})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "you must provide a model parameter",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }


def test_unknown_path_is_not_found(server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: POST /v1/embeddings."


def test_models_endpoint_lists_the_configured_models() -> None:
    with FakeOpenAIServer(models=("gpt-4o-mini", "offline-echo-1")) as server:
        ids = [m.id for m in client(server).models.list()]
    assert ids == ["gpt-4o-mini", "offline-echo-1"]


def test_latency_delays_the_answer() -> None:
    with FakeOpenAIServer(latency_s=0.2) as server:
        started = time.perf_counter()
        client(server).chat.completions.create(model="m", messages=HELLO)
        elapsed = time.perf_counter() - started
    assert 0.2 <= elapsed < 0.8


def test_base_url_is_loopback_with_a_free_port(server: FakeOpenAIServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.port > 0


def test_stop_closes_idle_keep_alive_connections_and_the_port() -> None:
    server = FakeOpenAIServer().start()
    port = server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    connection.request("GET", "/v1/models")
    assert connection.getresponse().read()  # the connection stays open (keep-alive)
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 1.0
    assert [t.name for t in threading.enumerate() if t.name == f"fake-openai-{port}"] == []
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/v1/models")
    connection.close()


def test_stop_does_not_wait_out_the_latency() -> None:
    server = FakeOpenAIServer(latency_s=30).start()
    worker = threading.Thread(
        target=lambda: httpx.post(
            f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}
        ),
        daemon=True,
    )
    worker.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.perf_counter()
    server.stop()
    worker.join(5)
    assert time.perf_counter() - started < 1.0


def test_port_and_base_url_need_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAIServer().base_url
