"""A chat load through the HTTP API of a running service, and the latency/error summary of
its requests. Contains no tests itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

# The throwaway server of the write-back outage test, reused rather than duplicated.


@dataclass(frozen=True)
class Request:
    conversation: str
    started: float
    """time.monotonic() at send."""
    seconds: float
    status: int
    """HTTP status, 0 for a transport error."""
    message_id: str | None
    error: str = ""
    """The transport error (exception type) when there was no HTTP answer."""


def create_conversations(base_url: str, count: int, tag: str = "load") -> list[str]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        r = client.post(
            "/api/v1/users", json={"username": f"{tag}-{os.getpid()}", "email": f"{tag}@x.test"}
        )
        assert r.status_code == 201, r.text
        user = r.json()["id"]
        ids = []
        for index in range(count):
            r = client.post("/api/v1/conversations", json={"user_id": user, "title": f"c{index}"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


class ChatLoad:
    """One thread per conversation posting chat turns one after the other (a user waits
    for the answer before writing again) until stopped, ``max_turns`` or ``max_seconds``.

    ``targets`` rotates the turns of each conversation over several services (a load
    balancer in front of replicas). Every ``tool_every``-th turn asks for a computation: the
    offline model calls the calculator, a turn of two model calls (0: never).
    """

    def __init__(
        self,
        targets: Sequence[str],
        conversations: Sequence[str],
        *,
        pause: float = 0.0,
        max_turns: int = 10_000,
        max_seconds: float = 120.0,
        timeout: float = 60.0,
        tool_every: int = 3,
    ) -> None:
        self.targets = list(targets)
        self.tool_every = tool_every
        self.conversations = list(conversations)
        self.pause, self.max_turns, self.max_seconds = pause, max_turns, max_seconds
        self.timeout = timeout
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index, cid), daemon=True)
            for index, cid in enumerate(self.conversations)
        ]

    def __enter__(self) -> ChatLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def wait(self) -> None:
        """Until every conversation has run its turns (or its time)."""
        for thread in self._threads:
            thread.join(self.max_seconds + self.timeout + 5)

    def _run(self, index: int, cid: str) -> None:
        clients = [httpx.Client(base_url=t, timeout=self.timeout) for t in self.targets]
        # From the first request: on a loaded machine creating the clients (their TLS
        # contexts) alone took longer than a short load window.
        deadline = time.monotonic() + self.max_seconds
        try:
            for turn in range(self.max_turns):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                client = clients[(index + turn) % len(clients)]
                started = time.monotonic()
                status, mid, error = 0, None, ""
                try:
                    r = client.post(
                        f"/api/v1/conversations/{cid}/messages",
                        json={"content": self._text(index, turn)},
                    )
                    status = r.status_code
                    if status == 201:
                        mid = r.json()["id"]
                except httpx.HTTPError as exc:
                    status, error = 0, type(exc).__name__
                seconds = time.monotonic() - started
                with self._lock:
                    self.requests.append(Request(cid, started, seconds, status, mid, error))
                if status != 201:
                    self._stop.wait(0.05)  # a failing service: do not spin
                elif self.pause:
                    self._stop.wait(self.pause)
        finally:
            for client in clients:
                client.close()

    def _text(self, index: int, turn: int) -> str:
        if self.tool_every and turn % self.tool_every == self.tool_every - 1:
            return f"turn {turn} of conversation {index}, compute {turn} * 7 + {index}"
        return f"turn {turn} of conversation {index}, hello"

    def done(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.status == 201)

    def window(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if start <= r.started < end]


def metric(base_url: str, name: str) -> float:
    """Sum of a metric's samples on the service's Prometheus endpoint (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Window:
    requests: int
    succeeded: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def error_ratio(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, {self.succeeded} ok, {self.failed} failed "
            f"(error ratio {self.error_ratio:.1%}), p50 {self.p50_ms:.0f} ms, "
            f"p99 {self.p99_ms:.0f} ms, max {self.max_ms:.0f} ms"
        )


def summarize(requests: Sequence[Request]) -> Window:
    ms = [r.seconds * 1000 for r in requests]
    ok = sum(1 for r in requests if r.status == 201)
    return Window(
        len(requests),
        ok,
        len(requests) - ok,
        percentile(ms, 50),
        percentile(ms, 99),
        max(ms, default=0.0),
    )
