"""An in-process client for the reference service on a given database and telemetry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from chatter_otel.service.api import create_app
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.telemetry import Telemetry


@dataclass
class Api:
    client: httpx.AsyncClient

    async def user(self, name: str = "alice") -> str:
        r = await self.client.post(
            "/api/v1/users", json={"username": name, "email": f"{name}@example.com"}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def conversation(self, user_id: str | None = None, **options: Any) -> str:
        user_id = user_id or await self.user()
        r = await self.client.post(
            "/api/v1/conversations", json={"user_id": user_id, "title": "t", **options}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def say(self, cid: str, content: str, **extra: Any) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/conversations/{cid}/messages", json={"content": content, **extra}
        )

    async def stream(self, cid: str, content: str, **extra: Any) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        async with self.client.stream(
            "POST",
            f"/api/v1/conversations/{cid}/messages/stream",
            json={"content": content, **extra},
        ) as r:
            assert r.status_code == 200, await r.aread()
            body = "".join([c async for c in r.aiter_text()])
        for block in body.strip().split("\n\n"):
            name, data = block.split("\n", 1)
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return events

    async def messages(self, cid: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/api/v1/conversations/{cid}/messages")
        assert r.status_code == 200, r.text
        return list(r.json())

    async def get(self, cid: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/conversations/{cid}")
        assert r.status_code == 200, r.text
        return dict(r.json())


@asynccontextmanager
async def running_service(
    database_url: str, telemetry: Telemetry, **settings: Any
) -> AsyncIterator[Api]:
    app = create_app(
        ServiceSettings.model_validate({"DATABASE_URL": database_url, **settings}), telemetry
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://chatter.test", timeout=30
        ) as client,
    ):
        yield Api(client)
