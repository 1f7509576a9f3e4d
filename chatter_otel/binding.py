"""``bind_message``: the one line that tells the write-back which row a turn produced.

An application that creates the assistant message the way it always did (its own id, after
the workflow) calls ``chatter_otel.bind_message(message.id)`` where it creates the row. A
``workflow_span`` opened without ``message_id`` (and not inside another turn) marks its span
``chatter.message.unbound`` and, when it ends, leaves its span context in this module's
context variable; ``bind_message`` emits a tiny span below that turn carrying the id, and the
write-back gives the turn's usage to that row. The turn's usage waits for it up to the message
time-to-live (``CHATTER_OTEL_WRITEBACK_MESSAGE_TTL``).

The variable is per context: call ``bind_message`` in the task (request) that ran the
workflow, after it ended.
"""

from __future__ import annotations

import contextvars
import logging

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext

from chatter_otel import _runtime
from chatter_otel import conventions as c
from chatter_otel.writeback.records import is_ulid

logger = logging.getLogger("chatter_otel")

BIND_SPAN_NAME = "bind_message"

_last_turn: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "chatter_otel_unbound_turn", default=None
)


def turn_started() -> None:
    """A new turn begins in this context: an earlier one left unbound can no longer be bound
    (a thread reused for another request must not give it a later request's row)."""
    _last_turn.set(None)


def turn_ended(context: SpanContext) -> None:
    """Called by ``workflow_span`` when an unbound turn ends: the one ``bind_message`` binds."""
    _last_turn.set(context)


def bind_message(message_id: str, *, conversation_id: str | None = None) -> bool:
    """Gives the most recent unbound turn of this context to the message ``message_id``.

    Returns ``False`` (and logs a warning) when there is no such turn or the id is not a
    ULID; telemetry never raises into the application. Each turn is bound once.
    """
    turn = _last_turn.get()
    if turn is None or not turn.is_valid:
        logger.warning(
            "bind_message: no turn without a message id ended in this context; "
            "call it after the workflow_span, in the same task"
        )
        return False
    if not is_ulid(message_id) or (conversation_id is not None and not is_ulid(conversation_id)):
        logger.warning("bind_message: message and conversation ids must be ULIDs; not bound")
        return False
    _last_turn.set(None)
    attributes: dict[str, str | bool] = {
        c.CHATTER_MESSAGE_BIND: True,
        c.CHATTER_MESSAGE_ID: message_id,
    }
    if conversation_id is not None:
        attributes[c.CHATTER_CONVERSATION_ID] = conversation_id
    try:
        parent = trace.set_span_in_context(NonRecordingSpan(turn))
        _runtime.get().tracer.start_span(
            BIND_SPAN_NAME, context=parent, attributes=attributes
        ).end()
    except Exception:  # never let telemetry break the application
        logger.debug("bind_message failed", exc_info=True)
        return False
    return True
