"""From finished spans to one record per owner span, counting each LLM call once.

Runs on the processor's assembler thread only (no locking inside). An *owner* is a span with
``chatter.message.id`` (or ``chatter.message.unbound``, waiting for ``bind_message``); it owns
the LLM usage of its subtree down to the next owner. Which spans count is
:mod:`~chatter_otel.writeback.tally`'s job; this module finds each span's owner, so that the
work per span is constant whatever else shares its trace (a constant ``traceparent`` puts
every turn of a service in one trace):

* A span whose parent is already resolved joins that parent's owner at once.
* Otherwise it waits, *unresolved*, under its parent id (``children``); when that parent
  arrives and resolves, its waiting subtree is resolved with it, each span once.
* An owner is finalized ``grace`` seconds after it ended (children ending a little after it
  still join), or as soon as its bind arrives for an unbound owner. Its subtree then becomes a
  compact index (span id -> finalized owner) kept ``message_ttl`` seconds: a span that ends
  later and reaches the owner through it is added as a ``late`` record to the same message.
* Unresolved state ages out: a plain span after ``trace_ttl`` (its waiting children are
  re-linked to its parent, so a step that stays silent for long keeps its calls' path to the
  owner), an unresolved call after ``call_ttl``. Finalized owners leave the index after
  ``message_ttl``, or earlier, oldest first, when it holds ``max_index`` spans (the same
  limit applies to each queue of unresolved spans by age).

Usage that no owner takes (no owner above it, an owner whose message id was refused or never
bound, anything aged out or evicted) is counted as ``unowned`` and logged at WARNING (at most
once a minute, with the count).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.trace import ReadableSpan

from chatter_otel import conventions as c
from chatter_otel.writeback import extract
from chatter_otel.writeback.extract import Call, Owner
from chatter_otel.writeback.records import KIND_LATE, KIND_TURN, TurnRecord
from chatter_otel.writeback.stats import Counters
from chatter_otel.writeback.tally import Recorder, select

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")

WARN_EVERY: Final = 60.0
"""Seconds between two WARNING lines about unowned usage (the count covers the interval)."""
R_BIND: Final = "bind_unmatched"
"""Rejection reason: a bind for a turn that already had a message id, or came too late."""


class _Open:
    """An owner that arrived and is not finalized yet, with its subtree so far."""

    __slots__ = ("calls", "finalized", "links", "owner", "trace_id")

    def __init__(self, trace_id: int, owner: Owner) -> None:
        self.trace_id = trace_id
        self.owner = owner
        self.links: dict[int, int | None] = {}
        self.calls: dict[int, Call] = {}
        self.finalized = False


class _Done:
    """A finalized owner, as the index keeps it for late spans."""

    __slots__ = ("call_ids", "expires", "owner", "shadowed", "spans", "trace_id")

    def __init__(self, trace_id: int, owner: Owner, expires: float) -> None:
        self.trace_id = trace_id
        self.owner = owner
        self.expires = expires
        self.spans: list[int] = []
        self.shadowed: set[int] = set()
        self.call_ids: set[str] = set()


class _Trace:
    """The unresolved spans and the open owners of one trace."""

    __slots__ = ("binds", "calls", "children", "links", "owner_of")

    def __init__(self) -> None:
        self.links: dict[int, int] = {}
        """Unresolved span -> its parent id."""
        self.children: dict[int, set[int]] = {}
        """Span id (seen or not) -> its unresolved children."""
        self.calls: dict[int, Call] = {}
        """The unresolved spans that carry usage."""
        self.owner_of: dict[int, _Open] = {}
        """Spans resolved to an open owner (the owner span included)."""
        self.binds: dict[int, tuple[str, str | None]] = {}
        """Binds that arrived before the owner span they name."""

    @property
    def empty(self) -> bool:
        return not (self.links or self.owner_of or self.binds)


class Assembler:
    def __init__(
        self,
        *,
        pricing: PricingLike | None,
        counters: Counters,
        limits: tuple[int, int, int],
        grace: float,
        trace_ttl: float,
        max_traces: int,
        max_spans_per_trace: int,
        message_ttl: float = 300.0,
        call_ttl: float = 3600.0,
        max_index: int = 200_000,
        done_ttl: float | None = None,
    ) -> None:
        """``done_ttl`` is accepted from callers of the earlier interface and unused: late
        spans are now matched for ``message_ttl``."""
        self._counters = counters
        self._limits = limits
        self._grace = grace
        self._trace_ttl = trace_ttl
        self._message_ttl = message_ttl
        self._call_ttl = max(call_ttl, trace_ttl)
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self._max_index = max_index
        self._recorder = Recorder(pricing, counters.reject)
        self._traces: OrderedDict[int, _Trace] = OrderedDict()
        self._index: dict[int, _Done] = {}
        """Span id -> finalized owner (the trace id is checked on lookup)."""
        self._done: deque[_Done] = deque()
        self._due: deque[tuple[float, _Open]] = deque()
        self._unbound: deque[tuple[float, _Open]] = deque()
        self._aging: deque[tuple[float, int, int]] = deque()
        """(arrival, trace id, span id) of unresolved plain spans and early binds."""
        self._aging_calls: deque[tuple[float, int, int]] = deque()
        self._ready: list[TurnRecord] = []
        self._made = 0
        self._unowned_since_warning = 0
        self._warned_at = -WARN_EVERY

    # --- input ------------------------------------------------------------------------

    def add(self, span: ReadableSpan, now: float) -> None:
        context = span.context
        if context is None:
            return
        trace_id, span_id = context.trace_id, context.span_id
        parent = span.parent
        parent_id = parent.span_id if parent is not None else None
        attrs = extract.attributes_of(span)
        state = self._traces.get(trace_id)
        if self._done_for(trace_id, span_id) is not None or (
            state is not None and (span_id in state.links or span_id in state.owner_of)
        ):
            self._counters.add("duplicates")
            return
        if state is None:
            if not extract.is_relevant(attrs):
                done = self._done_for(trace_id, parent_id)
                if done is not None:  # a plain span ending after its turn: late children
                    self._index_spans(done, [span_id])
                return
            state = self._new_trace(trace_id, now)
        else:
            self._traces.move_to_end(trace_id)
        if extract.is_bind(attrs):
            self._bind(state, trace_id, parent_id, attrs, now)
        elif extract.is_owner(attrs):
            self._open(state, trace_id, span, span_id, parent_id, attrs, now)
        else:
            call = None
            if extract.has_usage(attrs):
                call = extract.read_call(span, attrs, self._counters.reject, self._limits)
            self._place(state, trace_id, span_id, parent_id, call, now)
        if state.empty:
            self._traces.pop(trace_id, None)

    def _place(
        self,
        state: _Trace,
        trace_id: int,
        span_id: int,
        parent_id: int | None,
        call: Call | None,
        now: float,
    ) -> None:
        """Puts a span that is not an owner where its parent leads."""
        if parent_id is not None:
            target = state.owner_of.get(parent_id)
            if target is not None:
                links, calls = self._subtree(state, span_id, parent_id, call)
                self._join(state, target, links, calls)
                return
            done = self._done_for(trace_id, parent_id)
            if done is not None:
                links, calls = self._subtree(state, span_id, parent_id, call)
                self._late(done, links, calls)
                return
            if (
                call is None
                and span_id not in state.children
                and len(state.links) >= self._max_spans
            ):
                return  # nothing waits on it: only a late child could need it
            if call is not None and len(state.calls) >= self._max_spans:
                self._unowned({span_id: parent_id}, {span_id: call}, "too many calls waiting")
                return
            state.links[span_id] = parent_id
            state.children.setdefault(parent_id, set()).add(span_id)
            if call is not None:
                state.calls[span_id] = call
                self._aging_calls.append((now, trace_id, span_id))
            else:
                self._aging.append((now, trace_id, span_id))
            return
        # A root that is not an owner: nothing above it can own its subtree.
        links, calls = self._subtree(state, span_id, None, call)
        self._unowned(links, calls, "no span above it carries " + c.CHATTER_MESSAGE_ID)

    def _open(
        self,
        state: _Trace,
        trace_id: int,
        span: ReadableSpan,
        span_id: int,
        parent_id: int | None,
        attrs: Mapping[str, Any],
        now: float,
    ) -> None:
        owner = extract.read_owner(span, attrs, self._counters.reject)
        call = None
        if extract.has_usage(attrs):
            call = extract.read_call(span, attrs, self._counters.reject, self._limits)
        target = _Open(trace_id, owner)
        links, calls = self._subtree(state, span_id, parent_id, call)
        self._join(state, target, links, calls)
        bind = state.binds.pop(span_id, None)
        if owner.unbound and bind is not None:
            self._apply_bind(target, *bind)
        if owner.unbound:
            self._unbound.append((now + self._message_ttl, target))
        else:
            self._due.append((now + self._grace, target))

    def _bind(
        self,
        state: _Trace,
        trace_id: int,
        parent_id: int | None,
        attrs: Mapping[str, Any],
        now: float,
    ) -> None:
        message_id, conversation_id = extract.read_ids(attrs, self._counters.reject)
        if message_id is None or parent_id is None:
            self._counters.reject(R_BIND)
            return
        target = state.owner_of.get(parent_id)
        if target is not None and target.owner.span_id == parent_id:
            if not target.owner.unbound:
                self._counters.reject(R_BIND)
                return
            self._apply_bind(target, message_id, conversation_id)
            self._due.append((now + self._grace, target))
        elif target is not None or self._done_for(trace_id, parent_id) is not None:
            self._counters.reject(R_BIND)  # not a turn, or one already finalized
        else:
            state.binds[parent_id] = (message_id, conversation_id)
            self._aging.append((now, trace_id, parent_id))

    @staticmethod
    def _apply_bind(target: _Open, message_id: str, conversation_id: str | None) -> None:
        owner = target.owner
        owner.message_id = message_id
        owner.conversation_id = owner.conversation_id or conversation_id
        owner.unbound = False

    # --- output -----------------------------------------------------------------------

    def take(self, now: float, *, force: bool = False) -> list[TurnRecord]:
        """Records of owners whose grace has passed (all bound ones when ``force``)."""
        while self._due and (force or self._due[0][0] <= now):
            _, target = self._due.popleft()
            if not target.finalized:
                self._finalize(target, now)
        ready, self._ready = self._ready, []
        if self._made:
            self._counters.add("records", self._made)
            self._made = 0
        return ready

    def expire(self, now: float) -> None:
        """Ages out unbound owners, unresolved spans and the index (see the module doc)."""
        while self._unbound and self._unbound[0][0] <= now:
            _, target = self._unbound.popleft()
            if not target.finalized and target.owner.unbound:
                self._finalize(target, now)
        while self._done and (self._done[0].expires <= now or len(self._index) > self._max_index):
            self._unindex(self._done.popleft())
        for queue, ttl in ((self._aging, self._trace_ttl), (self._aging_calls, self._call_ttl)):
            # Oldest first; beyond max_index entries the oldest go early (memory stays bounded).
            while queue and (queue[0][0] + ttl <= now or len(queue) > self._max_index):
                _, trace_id, span_id = queue.popleft()
                state = self._traces.get(trace_id)
                if state is not None:
                    self._forget(state, span_id)
                    if state.empty:
                        del self._traces[trace_id]
        self._warn(time.monotonic())

    @property
    def traces(self) -> int:
        return len(self._traces)

    @property
    def pending_owners(self) -> int:
        return len(self._due) + len(self._unbound)

    @property
    def sizes(self) -> dict[str, int]:
        """How much state is held (for tests and diagnostics)."""
        return {
            "traces": len(self._traces),
            "unresolved": sum(len(s.links) for s in self._traces.values()),
            "open": sum(len(s.owner_of) for s in self._traces.values()),
            "index": len(self._index),
            "finalized": len(self._done),
            "aging": len(self._aging) + len(self._aging_calls),
        }

    # --- resolution -------------------------------------------------------------------

    def _new_trace(self, trace_id: int, now: float) -> _Trace:
        if len(self._traces) >= self._max_traces:
            old_id, old = self._traces.popitem(last=False)
            self._evict(old_id, old, now)
        state = self._traces[trace_id] = _Trace()
        return state

    def _evict(self, trace_id: int, state: _Trace, now: float) -> None:
        """A trace pushed out by the trace limit: its owners are finalized now."""
        for target in {id(t): t for t in state.owner_of.values()}.values():
            if not target.finalized:
                self._finalize(target, now, state=state)
        if state.calls:
            self._counters.add("traces_evicted")
            self._unowned(dict(state.links), dict(state.calls), "trace limit reached")

    def _done_for(self, trace_id: int, span_id: int | None) -> _Done | None:
        if span_id is None:
            return None
        done = self._index.get(span_id)
        return done if done is not None and done.trace_id == trace_id else None

    @staticmethod
    def _subtree(
        state: _Trace, span_id: int, parent_id: int | None, call: Call | None
    ) -> tuple[dict[int, int | None], dict[int, Call]]:
        """The arriving span and its unresolved subtree, taken out of the waiting state."""
        links: dict[int, int | None] = {span_id: parent_id}
        calls: dict[int, Call] = {span_id: call} if call is not None else {}
        stack = [span_id]
        while stack:
            node = stack.pop()
            for child in state.children.pop(node, ()):
                if state.links.get(child) != node:
                    continue  # re-linked or resolved since
                links[child] = state.links.pop(child)
                found = state.calls.pop(child, None)
                if found is not None:
                    calls[child] = found
                stack.append(child)
        return links, calls

    def _join(
        self,
        state: _Trace,
        target: _Open,
        links: dict[int, int | None],
        calls: dict[int, Call],
    ) -> None:
        target.links.update(links)
        target.calls.update(calls)
        owner_of = state.owner_of
        for span_id in links:
            owner_of[span_id] = target

    def _forget(self, state: _Trace, span_id: int) -> None:
        """Drops an aged unresolved span; its waiting children now wait on its parent."""
        if state.binds.pop(span_id, None) is not None:
            self._counters.reject(R_BIND)
            logger.warning("a bind_message waited %.0f s for its turn's span", self._trace_ttl)
        parent_id = state.links.pop(span_id, None)
        if parent_id is None:
            return
        siblings = state.children.get(parent_id)
        if siblings is not None:
            siblings.discard(span_id)
            if not siblings:
                del state.children[parent_id]
        call = state.calls.pop(span_id, None)
        if call is not None:
            self._unowned({span_id: parent_id}, {span_id: call}, "its turn did not end in time")
        for child in state.children.pop(span_id, ()):
            if state.links.get(child) == span_id:
                state.links[child] = parent_id
                state.children.setdefault(parent_id, set()).add(child)

    # --- finalizing -------------------------------------------------------------------

    def _finalize(self, target: _Open, now: float, *, state: _Trace | None = None) -> None:
        target.finalized = True
        trace_id, owner = target.trace_id, target.owner
        if state is None:
            state = self._traces.get(trace_id)
        if state is not None:
            for span_id in target.links:
                if state.owner_of.get(span_id) is target:
                    del state.owner_of[span_id]
            if state.empty:
                self._traces.pop(trace_id, None)
        chosen = select(target.links, target.calls)
        self._counters.add("rollups_ignored", chosen.ignored)
        done = _Done(trace_id, owner, now + self._message_ttl)
        done.shadowed, done.call_ids = chosen.shadowed, chosen.call_ids
        self._index_spans(done, list(target.links))
        target.links, target.calls = {}, {}  # an unbound owner's timer still refers to it
        self._done.append(done)
        if owner.message_id is None:
            why = "its turn was never bound" if owner.unbound else "its message id was refused"
            self._unowned_calls(chosen.counted, why)
            return
        self._made += 1
        self._ready.append(
            self._recorder.record(trace_id, owner, owner.span_id, chosen.counted, KIND_TURN)
        )

    def _late(self, done: _Done, links: dict[int, int | None], calls: dict[int, Call]) -> None:
        """Spans that reached an owner after it was finalized."""
        self._index_spans(done, list(links))
        if not calls:
            return
        chosen = select(
            links, calls, counted_ids=done.call_ids, outer_shadowed=done.shadowed.__contains__
        )
        done.shadowed |= chosen.shadowed
        done.call_ids |= chosen.call_ids
        self._counters.add("rollups_ignored", chosen.ignored)
        if chosen.conflicts:
            self._counters.add("late_conflicts", chosen.conflicts)
            logger.info(
                "trace %032x: %d LLM span(s) ended after their owner was written, below a "
                "span already counted for them: not counted twice",
                done.trace_id,
                chosen.conflicts,
            )
        owner = done.owner
        if owner.message_id is None:
            self._unowned_calls(chosen.counted, "its turn was never bound")
            return
        for call in chosen.counted:
            if not call.valid:
                continue
            self._counters.add("late")
            self._made += 1
            self._ready.append(
                self._recorder.record(done.trace_id, owner, call.span_id, [call], KIND_LATE)
            )

    def _index_spans(self, done: _Done, spans: list[int]) -> None:
        index = self._index
        for span_id in spans:
            index[span_id] = done
        done.spans.extend(spans)

    def _unindex(self, done: _Done) -> None:
        index = self._index
        for span_id in done.spans:
            if index.get(span_id) is done:
                del index[span_id]

    # --- losses -----------------------------------------------------------------------

    def _unowned(self, links: dict[int, int | None], calls: dict[int, Call], why: str) -> None:
        if calls:
            self._unowned_calls(select(links, calls).counted, why)

    def _unowned_calls(self, calls: list[Call], why: str) -> None:
        lost = sum(1 for call in calls if call.valid)
        if not lost:
            return
        self._counters.add("unowned", lost)
        self._unowned_since_warning += lost
        logger.debug("%d LLM call(s) with usage not written: %s", lost, why)
        self._warn(time.monotonic(), why)

    def _warn(self, now: float, why: str | None = None) -> None:
        if not self._unowned_since_warning or now - self._warned_at < WARN_EVERY:
            return
        logger.warning(
            "write-back: %d LLM call(s) with usage had no message to go to (%s); "
            "counted as unowned",
            self._unowned_since_warning,
            why or "see DEBUG lines",
        )
        self._unowned_since_warning = 0
        self._warned_at = now
