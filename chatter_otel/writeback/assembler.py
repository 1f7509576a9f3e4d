"""From finished spans to one record per owner span, counting each LLM call once.

Runs on the processor's assembler thread only (no locking inside). An *owner* is a span with
``chatter.message.id`` (or ``chatter.message.unbound``, waiting for ``bind_message``); it owns
the LLM usage of its subtree down to the next owner. This module finds each span's owner, so
that the work per span is constant whatever else shares its trace (a constant
``traceparent`` puts every turn of a service in one trace). The parts: :mod:`.waiting` (spans
waiting for their owner), :mod:`.tally` (which calls count), :mod:`.recorder` (their sum),
:mod:`.finished` (finalized owners, for late spans), :mod:`.losses` (usage no owner takes).

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
from chatter_otel.writeback.extract import Call
from chatter_otel.writeback.finished import Finished, FinishedIndex
from chatter_otel.writeback.losses import WARN_EVERY, Losses
from chatter_otel.writeback.recorder import Recorder
from chatter_otel.writeback.records import KIND_LATE, KIND_TURN, TurnRecord
from chatter_otel.writeback.stats import Counters
from chatter_otel.writeback.tally import select
from chatter_otel.writeback.waiting import Calls, Links, OpenOwner, TraceState

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")

__all__ = ["MAX_INDEX", "R_BIND", "WARN_EVERY", "Assembler"]

R_BIND: Final = "bind_unmatched"
"""Rejection reason: a bind for a turn that already had a message id, or came too late."""
MAX_INDEX: Final = 200_000
"""Spans of finished turns kept for late spans (and spans waiting on a parent), at most."""


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
        max_index: int = MAX_INDEX,
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
        self._losses = Losses(counters)
        self._traces: OrderedDict[int, TraceState] = OrderedDict()
        self._finished = FinishedIndex(max_index)
        self._due: deque[tuple[float, OpenOwner]] = deque()
        self._unbound: deque[tuple[float, OpenOwner]] = deque()
        self._aging: deque[tuple[float, int, int]] = deque()
        """(arrival, trace id, span id) of unresolved plain spans and early binds."""
        self._aging_calls: deque[tuple[float, int, int]] = deque()
        self._ready: list[TurnRecord] = []
        self._made = 0

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
        if self._finished.get(trace_id, span_id) is not None or (
            state is not None and state.knows(span_id)
        ):
            self._counters.add("duplicates")
            return
        if state is None:
            if not extract.is_relevant(attrs):
                done = self._finished.get(trace_id, parent_id)
                if done is not None:  # a plain span ending after its turn: late children
                    self._finished.add(done, [span_id])
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
        state: TraceState,
        trace_id: int,
        span_id: int,
        parent_id: int | None,
        call: Call | None,
        now: float,
    ) -> None:
        """Puts a span that is not an owner where its parent leads."""
        if parent_id is None:
            # A root that is not an owner: nothing above it can own its subtree.
            links, calls = state.subtree(span_id, None, call)
            self._losses.subtree(links, calls, "no span above it carries " + c.CHATTER_MESSAGE_ID)
            return
        target = state.owner_of.get(parent_id)
        if target is not None:
            state.join(target, *state.subtree(span_id, parent_id, call))
            return
        done = self._finished.get(trace_id, parent_id)
        if done is not None:
            self._late(done, *state.subtree(span_id, parent_id, call))
            return
        if call is None and span_id not in state.children and len(state.links) >= self._max_spans:
            return  # nothing waits on it: only a late child could need it
        if call is not None and len(state.calls) >= self._max_spans:
            self._losses.subtree({span_id: parent_id}, {span_id: call}, "too many calls waiting")
            return
        state.wait(span_id, parent_id, call)
        queue = self._aging_calls if call is not None else self._aging
        queue.append((now, trace_id, span_id))

    def _open(
        self,
        state: TraceState,
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
        target = OpenOwner(trace_id, owner)
        state.join(target, *state.subtree(span_id, parent_id, call))
        bind = state.binds.pop(span_id, None)
        if owner.unbound and bind is not None:
            target.bind(*bind)
        if owner.unbound:
            self._unbound.append((now + self._message_ttl, target))
        else:
            self._due.append((now + self._grace, target))

    def _bind(
        self,
        state: TraceState,
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
            target.bind(message_id, conversation_id)
            self._due.append((now + self._grace, target))
        elif target is not None or self._finished.get(trace_id, parent_id) is not None:
            self._counters.reject(R_BIND)  # not a turn, or one already finalized
        else:
            state.binds[parent_id] = (message_id, conversation_id)
            self._aging.append((now, trace_id, parent_id))

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
        self._finished.expire(now)
        for queue, ttl in ((self._aging, self._trace_ttl), (self._aging_calls, self._call_ttl)):
            # Oldest first; beyond max_index entries the oldest go early (memory stays bounded).
            while queue and (queue[0][0] + ttl <= now or len(queue) > self._max_index):
                _, trace_id, span_id = queue.popleft()
                state = self._traces.get(trace_id)
                if state is not None:
                    self._forget(state, span_id)
                    if state.empty:
                        del self._traces[trace_id]
        self._losses.warn(time.monotonic())

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
            "index": len(self._finished),
            "finalized": self._finished.owners,
            "aging": len(self._aging) + len(self._aging_calls),
        }

    # --- trace state ------------------------------------------------------------------

    def _new_trace(self, trace_id: int, now: float) -> TraceState:
        if len(self._traces) >= self._max_traces:
            old_id, old = self._traces.popitem(last=False)
            self._evict(old_id, old, now)
        state = self._traces[trace_id] = TraceState()
        return state

    def _evict(self, trace_id: int, state: TraceState, now: float) -> None:
        """A trace pushed out by the trace limit: its owners are finalized now."""
        for target in {id(t): t for t in state.owner_of.values()}.values():
            if not target.finalized:
                self._finalize(target, now, state=state)
        if state.calls:
            self._counters.add("traces_evicted")
            self._losses.subtree(dict(state.links), dict(state.calls), "trace limit reached")

    def _forget(self, state: TraceState, span_id: int) -> None:
        """An aged unresolved span or early bind (see :meth:`TraceState.forget`)."""
        if state.binds.pop(span_id, None) is not None:
            self._counters.reject(R_BIND)
            logger.warning("a bind_message waited %.0f s for its turn's span", self._trace_ttl)
        dropped = state.forget(span_id)
        if dropped is not None:
            parent_id, call = dropped
            why = "its turn did not end in time"
            self._losses.subtree({span_id: parent_id}, {span_id: call}, why)

    # --- finalizing -------------------------------------------------------------------

    def _finalize(self, target: OpenOwner, now: float, *, state: TraceState | None = None) -> None:
        target.finalized = True
        trace_id, owner = target.trace_id, target.owner
        if state is None:
            state = self._traces.get(trace_id)
        if state is not None:
            state.release(target)
            if state.empty:
                self._traces.pop(trace_id, None)
        chosen = select(target.links, target.calls)
        self._counters.add("rollups_ignored", chosen.ignored)
        done = Finished(trace_id, owner, now + self._message_ttl)
        done.shadowed, done.call_ids = chosen.shadowed, chosen.call_ids
        self._finished.add(done, list(target.links))
        self._finished.keep(done)
        target.links, target.calls = {}, {}  # an unbound owner's timer still refers to it
        if owner.message_id is None:
            why = "its turn was never bound" if owner.unbound else "its message id was refused"
            self._losses.calls(chosen.counted, why)
            return
        self._made += 1
        self._ready.append(
            self._recorder.record(trace_id, owner, owner.span_id, chosen.counted, KIND_TURN)
        )

    def _late(self, done: Finished, links: Links, calls: Calls) -> None:
        """Spans that reached an owner after it was finalized."""
        self._finished.add(done, list(links))
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
            self._losses.calls(chosen.counted, "its turn was never bound")
            return
        for call in chosen.counted:
            if not call.valid:
                continue
            self._counters.add("late")
            self._made += 1
            self._ready.append(
                self._recorder.record(done.trace_id, owner, call.span_id, [call], KIND_LATE)
            )
