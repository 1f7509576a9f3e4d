"""Finalized owners, kept ``message_ttl`` seconds for the spans that end after their turn.

Once an owner's record is made, its subtree becomes a compact index (span id -> finalized
owner): a span ending later whose parent is in it reaches the same message as a ``late``
record. What the index remembers of each owner is what keeps a late span from being
counted twice (the spans at or below counted calls, the call ids already counted).
"""

from __future__ import annotations

from collections import deque

from chatter_otel.writeback.extract import Owner


class Finished:
    """A finalized owner, as the index keeps it for late spans."""

    __slots__ = ("call_ids", "expires", "owner", "shadowed", "spans", "trace_id")

    def __init__(self, trace_id: int, owner: Owner, expires: float) -> None:
        self.trace_id = trace_id
        self.owner = owner
        self.expires = expires
        self.spans: list[int] = []
        self.shadowed: set[int] = set()
        self.call_ids: set[str] = set()


class FinishedIndex:
    """Span id -> finalized owner; oldest owners leave first, on time or when it is full."""

    def __init__(self, max_spans: int) -> None:
        self._max_spans = max_spans
        self._index: dict[int, Finished] = {}
        """The trace id is checked on lookup (span ids are only unique within a trace)."""
        self._order: deque[Finished] = deque()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def owners(self) -> int:
        return len(self._order)

    def get(self, trace_id: int, span_id: int | None) -> Finished | None:
        if span_id is None:
            return None
        done = self._index.get(span_id)
        return done if done is not None and done.trace_id == trace_id else None

    def add(self, done: Finished, spans: list[int]) -> None:
        """Indexes spans of ``done`` (its subtree at finalizing, or late arrivals)."""
        index = self._index
        for span_id in spans:
            index[span_id] = done
        done.spans.extend(spans)

    def keep(self, done: Finished) -> None:
        """Starts the time-to-live of a newly finalized owner."""
        self._order.append(done)

    def expire(self, now: float) -> None:
        order, index = self._order, self._index
        while order and (order[0].expires <= now or len(index) > self._max_spans):
            done = order.popleft()
            for span_id in done.spans:
                if index.get(span_id) is done:
                    del index[span_id]
