"""One chat turn end to end: persist the user message, run the workflow inside a
``workflow_span``, persist the assistant message under the id the span announced.

Usage, cost and model are not written here: they travel on the spans and the write-back
processor puts them into the row, which is exactly how it fixes Chatter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from chatter_otel.conventions import CHATTER_STREAMING
from chatter_otel.service.db import Database
from chatter_otel.service.llm import DEFAULT_MODELS, make_chat_model, validate_provider
from chatter_otel.service.models import Conversation, Message, MessageRole, User, new_ulid
from chatter_otel.service.settings import ServiceSettings
from chatter_otel.service.workflow import (
    WORKFLOW_NAME,
    CallUsage,
    TurnInput,
    TurnResult,
    run_turn,
    stream_turn,
    with_usage,
)
from chatter_otel.spans import WorkflowRun, workflow_span

logger = logging.getLogger("chatter.chat")
HISTORY_LIMIT = 20
INSERT_ATTEMPTS = 8


class NotFound(LookupError):
    pass


class TurnFailed(RuntimeError):
    """The workflow failed; the assistant message row records the error."""

    def __init__(self, message: Message, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.message = message


class ClientDisconnected(RuntimeError):
    """The client closed a streamed response before its turn ended."""


@dataclass
class Delta:
    content: str


class ChatService:
    def __init__(self, db: Database, settings: ServiceSettings) -> None:
        self.db, self.settings = db, settings
        self._sqlite_lock = asyncio.Lock()
        self._streams: set[asyncio.Task[None]] = set()

    # --- users and conversations -------------------------------------------------------
    async def create_user(self, username: str, email: str) -> User:
        async with self.db.sessions.begin() as session:
            user = User(id=new_ulid(), username=username, email=email)
            session.add(user)
        return user

    async def create_conversation(self, user_id: str, **fields: Any) -> Conversation:
        if fields.get("llm_provider"):
            validate_provider(fields["llm_provider"])
        async with self.db.sessions.begin() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"user {user_id} not found")
            conversation = Conversation(id=new_ulid(), user_id=user_id, **fields)
            session.add(conversation)
        return await self.get_conversation(conversation.id)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        async with self.db.sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFound(f"conversation {conversation_id} not found")
        return conversation

    async def list_conversations(
        self, user_id: str | None, limit: int, offset: int
    ) -> Sequence[Conversation]:
        query = select(Conversation).order_by(
            Conversation.created_at.desc(), Conversation.id.desc()
        )
        if user_id:
            query = query.where(Conversation.user_id == user_id)
        async with self.db.sessions() as session:
            return (await session.scalars(query.limit(limit).offset(offset))).all()

    async def list_messages(
        self, conversation_id: str, limit: int, offset: int
    ) -> Sequence[Message]:
        await self.get_conversation(conversation_id)
        query = (
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.sequence_number)
            .limit(limit)
            .offset(offset)
        )
        async with self.db.sessions() as session:
            return (await session.scalars(query)).all()

    # --- messages ----------------------------------------------------------------------
    async def _insert(self, session: AsyncSession, message: Message) -> None:
        cid = message.conversation_id
        if not self.db.is_sqlite:
            # Serialises writers of one conversation so sequence numbers never collide.
            await session.execute(
                select(Conversation.id).where(Conversation.id == cid).with_for_update()
            )
        message.sequence_number = await session.scalar(  # type: ignore[assignment]
            select(func.coalesce(func.max(Message.sequence_number) + 1, 0)).where(
                Message.conversation_id == cid
            )
        )
        session.add(message)
        await session.flush()
        await session.execute(
            update(Conversation)
            .where(Conversation.id == cid)
            .values(message_count=Conversation.message_count + 1)
        )

    async def add_message(self, message: Message) -> Message:
        """Insert with the next sequence number; a unique-key race is retried, bounded."""
        for attempt in range(INSERT_ATTEMPTS):
            try:
                if self.db.is_sqlite:
                    async with self._sqlite_lock, self.db.sessions.begin() as session:
                        await self._insert(session, message)
                else:
                    async with self.db.sessions.begin() as session:
                        await self._insert(session, message)
                return message
            except (IntegrityError, OperationalError):
                if attempt == INSERT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * 2**attempt)
                message = _fresh_copy(message)
        raise AssertionError("unreachable")

    async def _history(self, conversation: Conversation) -> list[BaseMessage]:
        async with self.db.sessions() as session:
            rows = (
                await session.scalars(
                    select(Message)
                    .where(
                        Message.conversation_id == conversation.id,
                        Message.role.in_([MessageRole.USER, MessageRole.ASSISTANT]),
                        Message.error_message.is_(None),
                    )
                    .order_by(Message.sequence_number.desc())
                    .limit(HISTORY_LIMIT)
                )
            ).all()
        history: list[BaseMessage] = []
        if conversation.system_prompt:
            history.append(SystemMessage(conversation.system_prompt))
        for row in reversed(rows):
            cls = HumanMessage if row.role is MessageRole.USER else AIMessage
            history.append(cls(row.content))
        return history

    def _turn_input(
        self, conversation: Conversation, provider: str | None, model: str | None, streaming: bool
    ) -> TurnInput:
        provider = validate_provider(
            provider or conversation.llm_provider or self.settings.default_provider
        )
        if model is None and provider == (
            conversation.llm_provider or self.settings.default_provider
        ):
            model = conversation.llm_model
        model = model or DEFAULT_MODELS[provider]
        return TurnInput(
            llm=make_chat_model(provider, model, self.settings),
            provider=provider,
            model=model,
            streaming=streaming,
            max_tool_rounds=self.settings.max_tool_rounds,
        )

    async def _begin_turn(
        self,
        conversation_id: str,
        content: str,
        provider: str | None,
        model: str | None,
        streaming: bool,
    ) -> tuple[Conversation, TurnInput, list[BaseMessage]]:
        conversation = await self.get_conversation(conversation_id)
        turn = self._turn_input(conversation, provider, model, streaming)
        await self.add_message(
            Message(
                id=new_ulid(),
                conversation_id=conversation.id,
                role=MessageRole.USER,
                content=content,
            )
        )
        return conversation, turn, await self._history(conversation)

    async def _finish_turn(
        self,
        conversation: Conversation,
        message_id: str,
        result: TurnResult | None,
        error: BaseException | None,
    ) -> Message:
        message = Message(
            id=message_id,
            conversation_id=conversation.id,
            role=MessageRole.ASSISTANT,
            content=result.content if result else "",
            tool_calls=(result.tool_calls or None) if result else None,
            error_message=f"{type(error).__name__}: {error}"[:2000] if error else None,
            extra_metadata={"workflow": WORKFLOW_NAME},
        )
        return await self.add_message(message)

    async def chat(
        self,
        conversation_id: str,
        content: str,
        provider: str | None = None,
        model: str | None = None,
    ) -> Message:
        """One turn: returns the stored assistant message (usage arrives via the write-back)."""
        conversation, turn, history = await self._begin_turn(
            conversation_id, content, provider, model, False
        )
        message_id = new_ulid()
        try:
            async with _workflow(conversation, message_id, streaming=False) as run:
                result = await run_turn(turn, history)
        except Exception as exc:
            logger.warning("chat turn failed: %s", type(exc).__name__)
            stored = await self._finish_turn(conversation, message_id, None, exc)
            raise TurnFailed(stored, exc) from exc
        # The response shows the turn's usage now; the write-back stores the same numbers.
        return with_usage(await self._finish_turn(conversation, message_id, result, None), run)

    async def chat_stream(
        self,
        conversation_id: str,
        content: str,
        provider: str | None = None,
        model: str | None = None,
    ) -> AsyncIterator[Delta | CallUsage | Message]:
        """Checks and stores the user message now, so bad input fails before any byte is
        streamed; the iterator yields text deltas and the usage model calls report, then the
        stored assistant message, and raises TurnFailed at the end on error."""
        conversation, turn, history = await self._begin_turn(
            conversation_id, content, provider, model, True
        )
        return self._stream(conversation, turn, history)

    async def _stream(
        self, conversation: Conversation, turn: TurnInput, history: list[BaseMessage]
    ) -> AsyncIterator[Delta | CallUsage | Message]:
        """The turn runs in a task of its own and the response only relays its deltas.

        A client that disconnects closes this generator (from another task, once the
        server notices): the turn is then cancelled, its spans end in the task that opened
        them, and the assistant message is stored all the same, with the text streamed so
        far and the usage known at that point (none reported: NULL, never 0).
        """
        message_id = new_ulid()
        queue: asyncio.Queue[Delta | CallUsage | Message | Exception] = asyncio.Queue()
        parts: list[str] = []
        producer = asyncio.create_task(
            self._produce(conversation, message_id, turn, history, parts, queue)
        )
        saver = asyncio.create_task(
            self._save_stream(conversation, message_id, producer, parts, queue)
        )
        self._streams.add(saver)
        saver.add_done_callback(self._streams.discard)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):  # TurnFailed, or the store's own failure
                    raise item
                yield item
                if isinstance(item, Message):
                    return
        finally:
            if not producer.done():
                producer.cancel()  # nobody reads the answer any more: stop generating it

    async def _produce(
        self,
        conversation: Conversation,
        message_id: str,
        turn: TurnInput,
        history: list[BaseMessage],
        parts: list[str],
        queue: asyncio.Queue[Delta | CallUsage | Message | Exception],
    ) -> tuple[TurnResult, WorkflowRun]:
        async with _workflow(conversation, message_id, streaming=True) as run:
            async for item in stream_turn(turn, history):
                if isinstance(item, TurnResult):
                    return item, run
                if isinstance(item, CallUsage):
                    queue.put_nowait(item)
                    continue
                parts.append(item)
                queue.put_nowait(Delta(item))
        raise RuntimeError("the workflow ended without a result")

    async def _save_stream(
        self,
        conversation: Conversation,
        message_id: str,
        producer: asyncio.Task[tuple[TurnResult, WorkflowRun]],
        parts: list[str],
        queue: asyncio.Queue[Delta | CallUsage | Message | Exception],
    ) -> None:
        result: TurnResult | None = None
        run: WorkflowRun | None = None
        error: BaseException | None = None
        try:
            result, run = await producer
        except asyncio.CancelledError:
            if not producer.cancelled():
                raise  # this task itself is cancelled (the server is stopping)
            error = ClientDisconnected("the client disconnected before the turn ended")
        except Exception as exc:
            error = exc
            logger.warning("streamed chat turn failed: %s", type(exc).__name__)
        if result is None:
            result = TurnResult(content="".join(parts), finish_reason=None) if parts else None
        try:
            stored = await self._finish_turn(conversation, message_id, result, error)
        except Exception as exc:  # the database failed too: the reader must not wait forever
            logger.warning("streamed chat turn not stored: %s", type(exc).__name__)
            queue.put_nowait(exc)
            return
        if error is not None:
            queue.put_nowait(TurnFailed(stored, error))
        else:
            queue.put_nowait(stored if run is None else with_usage(stored, run))

    async def wait_for_streams(self, timeout_s: float) -> None:
        """Lets streamed turns still being stored finish (server shutdown)."""
        if self._streams:
            await asyncio.wait(set(self._streams), timeout=timeout_s)


def _workflow(conversation: Conversation, message_id: str, *, streaming: bool) -> workflow_span:
    """The turn's span, naming the assistant message (``message_id``) it will store."""
    return workflow_span(
        WORKFLOW_NAME,
        conversation_id=conversation.id,
        message_id=message_id,
        user_id=conversation.user_id,
        attributes={CHATTER_STREAMING: True} if streaming else None,
    )


def _fresh_copy(message: Message) -> Message:
    return Message(
        id=message.id,
        conversation_id=message.conversation_id,
        role=message.role,
        content=message.content,
        tool_calls=message.tool_calls,
        error_message=message.error_message,
        extra_metadata=message.extra_metadata,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
