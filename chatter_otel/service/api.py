"""The reference service's HTTP API (FastAPI, under ``/api/v1``).

It instruments itself exactly as a Chatter integrator would: ``setup_telemetry()`` and
``telemetry.instrument_app(app)``; nothing here touches spans or metrics directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, IntegrityError

from chatter_otel.service import validation
from chatter_otel.service.chat import ChatService, Delta, NotFound, TurnFailed
from chatter_otel.service.db import Database
from chatter_otel.service.llm import ProviderError, ProviderName, validate_model
from chatter_otel.service.models import Conversation, Message
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.service.workflow import CallUsage
from chatter_otel.telemetry import Telemetry, setup_telemetry

logger = logging.getLogger("chatter.api")
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"
UlidPath = Annotated[str, Path(pattern=ULID_PATTERN)]
MAX_BODY_BYTES = 1_048_576


Provider = ProviderName | None
Name = validation.Name
Text = validation.Text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserIn(_Strict):
    username: Name = Field(min_length=1, max_length=50)
    email: Name = Field(min_length=3, max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    username: str
    email: str


class ConversationIn(_Strict):
    user_id: str = Field(pattern=ULID_PATTERN)
    title: Name = Field(min_length=1, max_length=255)
    llm_provider: Provider = None
    llm_model: Name | None = Field(default=None, max_length=100)
    system_prompt: Text | None = Field(default=None, max_length=10_000)
    temperature: float | None = Field(default=None, ge=0, le=2)


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    user_id: str
    title: str
    status: str
    llm_provider: str | None
    llm_model: str | None
    message_count: int
    total_tokens: int
    total_cost: float
    last_message_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: Conversation) -> ConversationOut:
        data = {k: getattr(row, k) for k in cls.model_fields if k != "status"}
        return cls(status=row.status.name, **data)


class MessageIn(_Strict):
    content: Text = Field(min_length=1)
    provider: Provider = None
    model: Name | None = Field(default=None, max_length=100)


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    conversation_id: str
    role: str
    content: str
    sequence_number: int
    tool_calls: Any | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: float | None
    model_used: str | None
    provider_used: str | None
    finish_reason: str | None
    response_time_ms: int | None
    error_message: str | None
    extra_metadata: Any | None
    created_at: datetime | None

    @classmethod
    def of(cls, row: Message) -> MessageOut:
        data: dict[str, Any] = {k: getattr(row, k, None) for k in cls.model_fields}
        data["role"] = row.role.name
        return cls.model_validate(data)


class BodyLimitMiddleware:
    """Refuses bodies over ``MAX_BODY_BYTES`` with 413 before anything parses them."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for key, value in scope.get("headers", []):
                if key == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                    response = JSONResponse({"detail": "request body too large"}, status_code=413)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(
    settings: ServiceSettings | None = None,
    telemetry: Telemetry | None = None,
    *,
    shutdown_telemetry: bool | None = None,
) -> FastAPI:
    """The service; ``shutdown_telemetry`` drains and stops telemetry when the app stops
    (default: when this function set telemetry up itself)."""
    settings = settings or ServiceSettings()
    if shutdown_telemetry is None:
        shutdown_telemetry = telemetry is None
    telemetry = telemetry or setup_telemetry()
    db = Database(settings.database_url)
    service = ChatService(db, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await db.create_tables()
        yield
        await service.wait_for_streams(timeout_s=10.0)
        await db.dispose()
        if shutdown_telemetry:
            # Here, not after uvicorn.run(): uvicorn re-raises SIGTERM once the app has
            # stopped, so code after it never runs. The write-back drains (or spools) now.
            await asyncio.to_thread(telemetry.shutdown)

    app = FastAPI(
        title="Chatter (chatter-otel reference service)",
        lifespan=lifespan,
        responses=validation.ERROR_RESPONSES,
    )
    validation.install(app)
    app.state.service = service
    app.state.telemetry = telemetry
    app.add_middleware(BodyLimitMiddleware)
    telemetry.instrument_app(app)
    telemetry.capture_langchain()  # chat and tool spans with no code in the workflow's nodes
    telemetry.instrument_sqlalchemy(db.engine)

    def _content(body: MessageIn) -> str:
        if len(body.content) > settings.max_content_chars:
            raise HTTPException(422, f"content longer than {settings.max_content_chars} characters")
        return body.content

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ProviderError)
    async def _provider(_r: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TurnFailed)
    async def _failed(_r: Request, exc: TurnFailed) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the model call failed: {exc}", "message_id": exc.message.id},
            status_code=502,
        )

    @app.exception_handler(DBAPIError)
    async def _database(_r: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, IntegrityError):
            return JSONResponse({"detail": "conflicting write; retry"}, status_code=409)
        # The SQLSTATE names the cause (deadlock, lost connection...) without the message,
        # which may quote a value the client sent.
        state = getattr(exc.orig, "sqlstate", None) or "none: a client-side failure"
        logger.warning("database error: %s (SQLSTATE %s)", type(exc.orig).__name__, state)
        return JSONResponse({"detail": _unavailable(exc)}, status_code=503)

    @app.exception_handler(OSError)
    async def _os_error(_r: Request, exc: OSError) -> JSONResponse:
        logger.warning("database unreachable: %s", type(exc).__name__)
        return JSONResponse({"detail": _unavailable(exc)}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/users", status_code=201)
    async def create_user(body: UserIn) -> UserOut:
        try:
            user = await service.create_user(body.username, body.email)
        except IntegrityError:
            raise HTTPException(409, "username or email already exists") from None
        return UserOut.model_validate(user)

    @app.post("/api/v1/conversations", status_code=201)
    async def create_conversation(body: ConversationIn) -> ConversationOut:
        fields = body.model_dump(exclude={"user_id"}, exclude_none=True)
        if body.llm_model is not None:
            validate_model(body.llm_provider or settings.default_provider, body.llm_model)
        return ConversationOut.of(await service.create_conversation(body.user_id, **fields))

    @app.get("/api/v1/conversations")
    async def list_conversations(
        user_id: Annotated[str | None, Query(pattern=ULID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[ConversationOut]:
        rows = await service.list_conversations(user_id, limit, offset)
        return [ConversationOut.of(r) for r in rows]

    @app.get("/api/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: UlidPath) -> ConversationOut:
        return ConversationOut.of(await service.get_conversation(conversation_id))

    @app.get("/api/v1/conversations/{conversation_id}/messages")
    async def list_messages(
        conversation_id: UlidPath,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[MessageOut]:
        rows = await service.list_messages(conversation_id, limit, offset)
        return [MessageOut.of(r) for r in rows]

    @app.post("/api/v1/conversations/{conversation_id}/messages", status_code=201)
    async def post_message(conversation_id: UlidPath, body: MessageIn) -> MessageOut:
        message = await service.chat(conversation_id, _content(body), body.provider, body.model)
        return MessageOut.of(message)

    @app.post("/api/v1/conversations/{conversation_id}/messages/stream")
    async def stream_message(conversation_id: UlidPath, body: MessageIn) -> StreamingResponse:
        content = _content(body)
        events = await service.chat_stream(conversation_id, content, body.provider, body.model)

        async def sse() -> AsyncIterator[str]:
            try:
                async for item in events:
                    if isinstance(item, Delta):
                        yield _event("delta", {"content": item.content})
                    elif isinstance(item, CallUsage):
                        yield _event(
                            "usage",
                            {
                                "prompt_tokens": item.input_tokens,
                                "completion_tokens": item.output_tokens,
                                "total_tokens": item.total_tokens,
                            },
                        )
                    else:
                        yield _event("message", MessageOut.of(item).model_dump(mode="json"))
            except TurnFailed as exc:
                yield _event("error", {"detail": str(exc), "message_id": exc.message.id})
            except Exception as exc:  # headers are sent: report in the stream, never drop it
                logger.warning("stream failed: %s", type(exc).__name__)
                yield _event("error", {"detail": _unavailable(exc)})

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


def _unavailable(exc: BaseException) -> str:
    """What the client is told: the class of failure, never the SQL or a connection string."""
    return f"the database is unavailable ({type(exc).__name__}); retry later"


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
