"""A local stand-in for the OpenAI chat completions API, on loopback.

Tests and benchmarks point the real ``openai`` client or ``langchain_openai.ChatOpenAI`` at
it, so instrumentation meets the same HTTP, JSON and SSE framing as in production, with
replies and usage numbers a test can compute by hand.

Replies, from the request's messages:

- last message is a tool result: ``"The result is {result}."``, finish_reason ``stop``;
- last user message asks to calculate / compute / "what is" an arithmetic expression and the
  request offers a function tool named ``calculator`` (and ``tool_choice`` is not
  ``"none"``): a ``calculator`` call with arguments ``{"expression": "<expr>"}``,
  finish_reason ``tool_calls``;
- otherwise ``"Echo: {last user text}"``, finish_reason ``stop``.

Usage numbers:

- ``prompt_tokens`` = for every request message, its whitespace-separated words + 3;
- ``completion_tokens`` = words of the reply text (for a tool call: 1 for the name + words
  of the JSON arguments) + ``reasoning_tokens``;
- ``total_tokens`` = prompt + completion;
- ``prompt_tokens_details.cached_tokens`` = ``cached_tokens`` (capped at prompt_tokens);
  ``prompt_tokens_details.cache_write_tokens`` only when ``cache_write_tokens`` is set (an
  extension some OpenAI-compatible gateways send; langchain-openai reads it);
- ``completion_tokens_details.reasoning_tokens`` = ``reasoning_tokens``.

Error statuses 429 and 5xx are retried by the openai client: build it with
``max_retries=0`` when testing ``fail_with_status``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

from chatter_otel.testing._fake_replies import (
    PER_MESSAGE_TOKENS,
    Completion,
    Reply,
    reply_to,
    token,
    words,
)

__all__ = ["FakeOpenAIServer"]

_STOP_TIMEOUT_S: Final = 5.0
_POLL_S: Final = 0.05

# (error.type, error.code) the real API sends for a status.
_ERRORS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "overloaded"),
}


class FakeOpenAIServer:
    """OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` on 127.0.0.1.

    Controls are plain attributes, read on every request, so a test may change them
    between calls. ``requests`` and ``headers`` record every chat completion request (body
    and lower-cased headers, same index); headers hold the API key, so never print them.
    """

    def __init__(
        self,
        *,
        cached_tokens: int = 0,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int = 0,
        response_model: str | None = None,
        fail_with_status: int | None = None,
        omit_usage: bool = False,
        interrupt_stream_after: int | None = None,
        latency_s: float = 0.0,
        chunk_interval_s: float = 0.0,
        hold_after_usage: bool = False,
        models: tuple[str, ...] = ("gpt-4o-mini",),
    ) -> None:
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.response_model = response_model
        """Model named in responses; ``None`` echoes the request's model."""
        self.fail_with_status = fail_with_status
        self.omit_usage = omit_usage
        self.interrupt_stream_after = interrupt_stream_after
        """Close the connection after this many SSE chunks (never sending usage or [DONE])."""
        self.latency_s = latency_s
        self.chunk_interval_s = chunk_interval_s
        """Pause before each SSE chunk, so a client can leave in the middle of a stream."""
        self.hold_after_usage = hold_after_usage
        """After a stream's usage chunk send nothing more (no ``[DONE]``) until the client
        hangs up or the server stops: a provider stalling at the very end, so a client can
        leave after its usage arrived. ``abandoned`` is set when the client hangs up."""
        self.abandoned = threading.Event()
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        state = f"port={self.port}" if self._httpd else "stopped"
        return f"FakeOpenAIServer({state}, requests={len(self.requests)})"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError("FakeOpenAIServer already started")
        self._stopping.clear()
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; returns within a few seconds at most."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()  # wakes handlers sleeping for latency_s
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        thread.join(_STOP_TIMEOUT_S)
        httpd.join_handlers(_STOP_TIMEOUT_S)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._httpd.server_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- request handling ---------------------------------------------------------------

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self._counter += 1
            return self._counter

    def _wait_latency(self) -> None:
        if self.latency_s > 0:
            self._stopping.wait(self.latency_s)

    def _chat(self, handler: _Handler) -> None:
        try:
            body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))
        except (ValueError, UnicodeDecodeError):
            handler.send_error_json(400, "We could not parse the JSON body of your request.")
            return
        if not isinstance(body, dict):
            handler.send_error_json(400, "The request body must be a JSON object.")
            return
        number = self._record(body, {k.lower(): v for k, v in handler.headers.items()})
        self._wait_latency()
        if self.fail_with_status is not None:
            status = self.fail_with_status
            handler.send_error_json(status, f"Fake OpenAI server set to fail with HTTP {status}.")
            return
        messages = body.get("messages")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            handler.send_error_json(400, "you must provide a model parameter", param="model")
            return
        if not isinstance(messages, list) or not messages:
            handler.send_error_json(400, "'messages' must be a non-empty array", param="messages")
            return
        reply = reply_to(messages, body.get("tools"), body.get("tool_choice"))
        completion = Completion(
            id="chatcmpl-" + token(f"completion {number}", 29),
            created=int(time.time()),
            model=self.response_model or model,
            reply=reply,
            tool_call_id="call_" + token(f"call {number}", 24),
            usage=None if self.omit_usage else self._usage(messages, reply),
        )
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = (
                bool(options.get("include_usage")) if isinstance(options, dict) else False
            )
            handler.send_stream(completion.chunks(include_usage), self.interrupt_stream_after)
        else:
            handler.send_json(200, completion.response())

    def _usage(self, messages: list[Any], reply: Reply) -> dict[str, Any]:
        prompt = sum(words(m) + PER_MESSAGE_TOKENS for m in messages)
        completion = reply.words + self.reasoning_tokens
        cached = min(self.cached_tokens, prompt)
        details: dict[str, int] = {"cached_tokens": cached}
        if self.cache_write_tokens is not None:
            details["cache_write_tokens"] = min(self.cache_write_tokens, prompt - cached)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": details,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end on their own
    # Headers and body go out in separate sends: with Nagle's algorithm and the client's
    # delayed ACK every response would wait ~40 ms on loopback.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the default writes every request line to stderr."""

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "chatter-otel"}
                for m in self.server.fake.models
            ]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.send_error_json(404, f"Unknown request URL: GET {self.path}.")

    def do_POST(self) -> None:
        if self.path.rstrip("/") == "/v1/chat/completions":
            self.server.fake._chat(self)
        else:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_error_json(404, f"Unknown request URL: POST {self.path}.")

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", "req_" + token(self.requestline, 24))
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str, *, param: str | None = None) -> None:
        kind, code = _ERRORS.get(status, ("api_error", None))
        error = {"message": message, "type": kind, "param": param, "code": code}
        self.send_json(status, {"error": error})

    def send_stream(
        self, chunks: Iterator[tuple[bool, dict[str, Any]]], interrupt_after: int | None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        fake = self.server.fake
        for sent, (is_usage, payload) in enumerate(chunks):
            if fake.chunk_interval_s > 0:
                fake._stopping.wait(fake.chunk_interval_s)
            if interrupt_after is not None and (sent >= interrupt_after or is_usage):
                # No terminating zero-length chunk: the client sees a broken body, as
                # when a proxy or the provider drops the connection.
                self.wfile.flush()
                self.close_connection = True
                return
            self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())
            if is_usage and fake.hold_after_usage:
                if self._wait_for_hang_up():
                    fake.abandoned.set()
                self.close_connection = True
                return
        if interrupt_after is not None:
            self.close_connection = True
            return
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _wait_for_hang_up(self) -> bool:
        """Block until the client closes the connection (True) or the server stops."""
        stopping = self.server.fake._stopping
        while not stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], _POLL_S)
            if not readable:
                continue
            try:
                closed = self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:  # reset by the peer
                closed = True
            if closed:  # by the client, or by stop() shutting the socket down
                return not stopping.is_set()
            stopping.wait(_POLL_S)  # bytes from a client that should be waiting: ignore
        return False

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeOpenAIServer) -> None:
        self.fake = fake
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections[connection] = threading.current_thread()

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.pop(connection, None)

    def close_connections(self) -> None:
        """Unblock handlers waiting on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._connections_lock:
            threads = list(self._connections.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-response is routine in tests (interrupted streams).
        pass
