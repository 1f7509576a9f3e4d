"""What ``workflow_span`` yields: the turn's span plus its usage and cost so far."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, SpanContext, Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

from chatter_otel.usage import Usage

if TYPE_CHECKING:
    from chatter_otel._model_call import _Turn

__all__ = ["WorkflowRun"]


class WorkflowRun(Span):
    """What ``workflow_span`` yields: the turn's span, and its usage and cost so far.

    ``usage`` and ``cost`` add up the model calls recorded inside the turn exactly as the
    write-back does (each call once; tokens ``None`` when no call reported them; cost
    ``None`` when any call could not be priced), so an app can return them in its own
    response as soon as the workflow ends instead of waiting for the database row.
    It is a ``Span`` itself (every call is passed to ``span``): code written when
    ``workflow_span`` yielded the span keeps working.
    """

    def __init__(self, span: Span, turn: _Turn) -> None:
        self.span = span
        self._turn = turn

    @property
    def usage(self) -> Usage:
        return self._turn.usage

    @property
    def cost(self) -> Decimal | None:
        turn = self._turn
        if turn.unpriced_calls or not turn.priced_calls:
            return None
        return turn.cost

    @property
    def calls(self) -> int:
        """Model calls recorded so far (with or without usage)."""
        return self._turn.calls

    # --- opentelemetry.trace.Span, delegated ------------------------------------------
    def end(self, end_time: int | None = None) -> None:
        self.span.end(end_time)

    def get_span_context(self) -> SpanContext:
        return self.span.get_span_context()

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.span.set_attributes(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self.span.add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        self.span.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self.span.update_name(name)

    def is_recording(self) -> bool:
        return self.span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.span.set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.span.record_exception(exception, attributes, timestamp, escaped)
