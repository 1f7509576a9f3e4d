"""From finished spans to one record per owner span, counting each LLM call once.

Runs on the processor's assembler thread only (no locking inside). Per trace it keeps:

* the LLM spans carrying usage (``calls``) and the owner spans (``owners``, spans with
  ``chatter.message.id``), and once a trace has either, the parent link of every later span,
  so usage deep inside LangGraph/CHAIN/tool spans connects to its owner;
* which calls were already attributed (``consumed``) and counted (``counted``).

Rules, applied when an owner is finalized (``grace`` seconds after it ended, to let children
that end a little after their parent arrive):

* A call belongs to its nearest owner: the first owner span met walking up from the call
  (itself included). Nested owners therefore split the usage, never share it.
* Only innermost usage counts: a call with a usage-carrying descendant anywhere in the trace
  is a roll-up (a parent summing its children) or a duplicate (two instrumentations wrapping
  the same provider call: our ``chat`` span around openinference's LLM span), and is ignored.
* A duplicate that is ignored still lends what the counted span lacks (cost taken from a
  span, model, provider, finish reason) when its input and output tokens are the same.
* A rejected call (invalid token counts) counts as a call of unknown usage: it adds nothing
  and still hides the spans above it, so a bad value can never promote a roll-up.
* A call that ends after its owner was finalized still counts, as a separate "late" record
  for the same message, unless an ancestor already counted for it (then it is a duplicate).

Trace state is bounded: complete traces are dropped after ``done_ttl`` idle seconds, all
traces after ``trace_ttl`` idle seconds, the oldest when ``max_traces`` is exceeded.
Usage no owner ever claimed is counted as ``unowned`` and logged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from opentelemetry.sdk.trace import ReadableSpan

from chatter_otel import conventions as c
from chatter_otel.writeback import extract
from chatter_otel.writeback.extract import Call, Owner
from chatter_otel.writeback.records import (
    INT32_MAX,
    KIND_LATE,
    KIND_TURN,
    MAX_COST,
    TurnRecord,
)
from chatter_otel.writeback.stats import Counters

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")

MAX_DEPTH: Final = 1024
"""Longest parent chain followed (a guard against cycles from malformed span data)."""


_SPENT: Final = Call(0, 0, False, None, None, None, None, None, None, None, None, None)
"""Stands for a call whose values were used already (``valid`` False: lends nothing)."""


class _Trace:
    __slots__ = (
        "calls",
        "consumed",
        "counted",
        "finalized",
        "last_seen",
        "owners",
        "pairs",
        "parents",
    )

    def __init__(self, now: float) -> None:
        self.parents: dict[int, int | None] = {}
        self.calls: dict[int, Call] = {}
        self.owners: dict[int, Owner] = {}
        self.finalized: dict[int, Owner] = {}
        self.consumed: set[int] = set()
        self.counted: set[int] = set()
        self.pairs: dict[int, int] = {}
        """Sibling duplicates matched so far (both directions): one call, two spans."""
        self.last_seen = now

    @property
    def complete(self) -> bool:
        return len(self.finalized) == len(self.owners) and len(self.consumed) == len(self.calls)


def _compact(state: _Trace) -> None:
    """A complete trace is kept only for children that may still end late: what they need is
    the span tree, which calls exist, the owners, and the counted calls (a late sibling
    duplicate is recognized against them). The values of the other calls are spent."""
    for span_id in state.calls:
        if span_id not in state.counted:
            state.calls[span_id] = _SPENT


class Assembler:
    def __init__(
        self,
        *,
        pricing: PricingLike | None,
        counters: Counters,
        limits: tuple[int, int, int],
        grace: float,
        trace_ttl: float,
        done_ttl: float,
        max_traces: int,
        max_spans_per_trace: int,
    ) -> None:
        self._pricing = pricing
        self._counters = counters
        self._limits = limits
        self._grace = grace
        self._trace_ttl = trace_ttl
        self._done_ttl = done_ttl
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self._traces: OrderedDict[int, _Trace] = OrderedDict()
        self._due: deque[tuple[float, int, int]] = deque()
        self._late_check: set[int] = set()
        self._ready: list[TurnRecord] = []
        self._pricing_failed = False
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
        relevant = extract.is_relevant(attrs)
        state = self._traces.get(trace_id)
        if state is None:
            if not relevant:
                return
            if len(self._traces) >= self._max_traces:
                self._evict_oldest()
            state = self._traces[trace_id] = _Trace(now)
        else:
            self._traces.move_to_end(trace_id)
            state.last_seen = now
        if span_id in state.parents:
            self._counters.add("duplicates")
            return
        if not relevant:
            if len(state.parents) < self._max_spans:
                state.parents[span_id] = parent_id
            if state.finalized and len(state.consumed) < len(state.calls):
                self._late_check.add(trace_id)
            return
        state.parents[span_id] = parent_id
        if extract.has_usage(attrs):
            state.calls[span_id] = extract.read_call(
                span, attrs, self._counters.reject, self._limits
            )
        if c.CHATTER_MESSAGE_ID in attrs:
            state.owners[span_id] = extract.read_owner(span, attrs, self._counters.reject)
            self._due.append((now + self._grace, trace_id, span_id))
        if state.finalized and len(state.consumed) < len(state.calls):
            self._late_check.add(trace_id)

    # --- output -----------------------------------------------------------------------

    def take(self, now: float, *, force: bool = False) -> list[TurnRecord]:
        """Records of owners whose grace has passed (all of them when ``force``)."""
        while self._due and (force or self._due[0][0] <= now):
            _, trace_id, span_id = self._due.popleft()
            state = self._traces.get(trace_id)
            if state is None or span_id in state.finalized:
                continue
            owner = state.owners.get(span_id)
            if owner is not None:
                self._finalize(trace_id, state, owner)
                if state.complete:
                    _compact(state)
        if self._late_check:
            for trace_id in self._late_check:
                state = self._traces.get(trace_id)
                if state is not None:
                    self._late(trace_id, state)
            self._late_check.clear()
        ready, self._ready = self._ready, []
        if self._made:
            self._counters.add("records", self._made)
            self._made = 0
        return ready

    def expire(self, now: float) -> None:
        """Drops idle trace state (complete after ``done_ttl``, any after ``trace_ttl``)."""
        drop: list[int] = []
        for trace_id, state in self._traces.items():
            idle = now - state.last_seen
            if idle < self._done_ttl:
                break  # ordered by last activity: the rest are newer
            if (state.complete and not self._pending_in(state)) or idle >= self._trace_ttl:
                drop.append(trace_id)
        for trace_id in drop:
            self._drop(trace_id, self._traces.pop(trace_id), evicted=False)

    @property
    def traces(self) -> int:
        return len(self._traces)

    @property
    def pending_owners(self) -> int:
        return len(self._due)

    # --- internals --------------------------------------------------------------------

    def _pending_in(self, state: _Trace) -> bool:
        return len(state.finalized) < len(state.owners)

    def _evict_oldest(self) -> None:
        trace_id, state = self._traces.popitem(last=False)
        self._drop(trace_id, state, evicted=True)

    def _drop(self, trace_id: int, state: _Trace, *, evicted: bool) -> None:
        for owner in list(state.owners.values()):
            if owner.span_id not in state.finalized:
                self._finalize(trace_id, state, owner)
        unowned = [
            call for sid, call in state.calls.items() if sid not in state.consumed and call.valid
        ]
        if evicted and not state.complete:
            self._counters.add("traces_evicted")
        if unowned:
            self._counters.add("unowned", len(unowned))
            logger.debug(
                "trace %032x: %d LLM call(s) with usage had no span carrying %s",
                trace_id,
                len(unowned),
                c.CHATTER_MESSAGE_ID,
            )

    def _nearest_owner(self, state: _Trace, span_id: int) -> int | None:
        node: int | None = span_id
        for _ in range(MAX_DEPTH):
            if node is None:
                return None
            if node in state.owners:
                return node
            if node not in state.parents:
                return None  # a link we have not seen (yet)
            node = state.parents[node]
        return None

    def _rollups(self, state: _Trace) -> set[int]:
        """Calls with a usage-carrying descendant: roll-ups and outer duplicates."""
        marked: set[int] = set()
        calls, parents = state.calls, state.parents
        for span_id in calls:
            node = parents.get(span_id)
            for _ in range(MAX_DEPTH):
                if node is None:
                    break
                if node in calls:
                    if node in marked:
                        break  # everything above was marked by an earlier walk
                    marked.add(node)
                node = parents.get(node)
        return marked

    def _has_counted_ancestor(self, state: _Trace, span_id: int, stop: int) -> bool:
        node = state.parents.get(span_id)
        for _ in range(MAX_DEPTH):
            if node is None:
                return False
            if node in state.counted:
                return True
            if node == stop:
                return False
            node = state.parents.get(node)
        return False

    def _complete(self, state: _Trace, call: Call) -> None:
        """Fills what the counted span lacks from the spans that duplicate it.

        Two instrumentations around one provider call nest; the inner span counts, but the
        outer one may know more (openinference reports no cost and no finish reason, our
        ``chat`` span does). An ancestor with the same input and output tokens is the same
        call: its cost (taken from a span before any pricing), model, provider and finish
        reason fill the gaps. A real roll-up of several calls has other totals and is not
        used.
        """
        if not call.valid or not call.reported:
            return
        node = state.parents.get(call.span_id)
        for _ in range(MAX_DEPTH):
            if node is None:
                return
            other = state.calls.get(node)
            if other is not None:
                if not (
                    other.valid
                    and other.input_tokens == call.input_tokens
                    and other.output_tokens == call.output_tokens
                ):
                    return
                call.cost = call.cost if call.cost is not None else other.cost
                call.model = call.model or other.model
                call.provider = call.provider or other.provider
                call.finish_reason = call.finish_reason or other.finish_reason
            node = state.parents.get(node)

    def _drop_sibling_duplicates(self, state: _Trace, counted: list[Call]) -> list[Call]:
        """One provider call reported by two instrumentations that do not nest.

        In a LangGraph node, openinference parents its LLM span on the node's CHAIN span
        (LangChain's run tree), not on the OTel context, so our ``chat`` span and its LLM
        span for the same call end up siblings. A span in another convention whose interval
        lies inside a GenAI-convention span's, with the same input and output tokens, is
        that call again: it is dropped (one-to-one, so parallel calls still count apart).
        """
        ours = [k for k in counted if k.genai and k.valid and k.reported]
        if not ours or len(ours) == len(counted):
            return counted
        matched: set[int] = set()
        dropped: set[int] = set()
        for other in counted:
            if other.genai or not other.valid or not other.reported:
                continue
            for mine in ours:
                if (
                    mine.span_id not in matched
                    and mine.start_ns <= other.start_ns
                    and other.end_ns <= mine.end_ns
                    and mine.input_tokens == other.input_tokens
                    and mine.output_tokens == other.output_tokens
                ):
                    matched.add(mine.span_id)
                    dropped.add(other.span_id)
                    state.pairs[mine.span_id] = other.span_id
                    state.pairs[other.span_id] = mine.span_id
                    mine.model = mine.model or other.model
                    mine.provider = mine.provider or other.provider
                    mine.finish_reason = mine.finish_reason or other.finish_reason
                    break
        if dropped:
            self._counters.add("rollups_ignored", len(dropped))
        return [k for k in counted if k.span_id not in dropped]

    def _finalize(self, trace_id: int, state: _Trace, owner: Owner) -> None:
        state.finalized[owner.span_id] = owner
        rollups: set[int] | None = None
        counted: list[Call] = []
        for span_id, call in state.calls.items():
            if span_id in state.consumed or self._nearest_owner(state, span_id) != owner.span_id:
                continue
            if rollups is None:
                rollups = self._rollups(state)
            state.consumed.add(span_id)
            if span_id in rollups:
                self._counters.add("rollups_ignored")
                continue
            state.counted.add(span_id)
            self._complete(state, call)
            counted.append(call)
        counted = self._drop_sibling_duplicates(state, counted)
        if owner.message_id is None:
            return  # rejected (and counted) when read; its usage is not given to anyone else
        self._emit(trace_id, owner, owner.span_id, counted, KIND_TURN)

    def _late(self, trace_id: int, state: _Trace) -> None:
        rollups: set[int] | None = None
        for span_id, call in list(state.calls.items()):
            if span_id in state.consumed:
                continue
            owner_id = self._nearest_owner(state, span_id)
            if owner_id is None or owner_id not in state.finalized:
                continue
            if rollups is None:
                rollups = self._rollups(state)
            state.consumed.add(span_id)
            if span_id in rollups:
                self._counters.add("rollups_ignored")
                continue
            if self._has_counted_ancestor(state, span_id, owner_id):
                self._counters.add("late_conflicts")
                logger.info(
                    "trace %032x: LLM span %016x ended after its owner was written, below a "
                    "span already counted for it: not counted twice",
                    trace_id,
                    span_id,
                )
                continue
            if self._late_sibling_duplicate(state, call):
                self._counters.add("rollups_ignored")
                continue
            state.counted.add(span_id)
            self._complete(state, call)
            owner = state.finalized[owner_id]
            if owner.message_id is None or not call.valid:
                continue
            self._counters.add("late")
            self._emit(trace_id, owner, span_id, [call], KIND_LATE)

    def _late_sibling_duplicate(self, state: _Trace, call: Call) -> bool:
        """A late span that repeats a counted call of the other convention (see
        :meth:`_drop_sibling_duplicates`): whichever of the two ended last is the duplicate."""
        if not call.valid or not call.reported or call.span_id in state.pairs:
            return False
        for span_id in state.counted:
            other = state.calls.get(span_id)
            if (
                other is None
                or other is _SPENT
                or span_id in state.pairs
                or other.genai == call.genai
                or not other.valid
                or other.input_tokens != call.input_tokens
                or other.output_tokens != call.output_tokens
            ):
                continue
            mine, theirs = (other, call) if other.genai else (call, other)
            if mine.start_ns <= theirs.start_ns and theirs.end_ns <= mine.end_ns:
                state.pairs[span_id] = call.span_id
                state.pairs[call.span_id] = span_id
                return True
        return False

    def _price(self, call: Call) -> Decimal | None:
        if self._pricing is None:
            return None
        try:
            amount = self._pricing.cost(call.provider, call.model, call.usage())
        except Exception:
            if not self._pricing_failed:
                self._pricing_failed = True
                logger.exception("pricing failed: cost left unpriced")
            return None
        if amount is None:
            return None
        if not isinstance(amount, Decimal) or not (
            amount.is_finite() and Decimal(0) <= amount <= MAX_COST
        ):
            self._counters.reject(extract.R_COST)
            return None
        return amount

    def _emit(
        self, trace_id: int, owner: Owner, key_span: int, calls: list[Call], kind: str
    ) -> None:
        assert owner.message_id is not None
        valid = [call for call in calls if call.valid]
        if len(valid) > 1:
            valid.sort(key=lambda x: (x.end_ns, x.span_id))
        prompt = completion = tokens = None
        model = provider = finish = None
        cost = Decimal(0)
        priced = unpriced = False
        for call in valid:  # oldest first: the newest model, provider and reason win
            if call.input_tokens is not None:
                prompt = (prompt or 0) + call.input_tokens
            if call.output_tokens is not None:
                completion = (completion or 0) + call.output_tokens
            if call.total_tokens is not None:
                tokens = (tokens or 0) + call.total_tokens
            model = call.model or model
            provider = call.provider or provider
            finish = call.finish_reason or finish
            amount = call.cost
            if amount is None:
                if not call.reported and call.total_tokens is None:
                    continue  # neither usage nor cost: nothing to price
                amount = self._price(call) if call.reported else None
                if amount is None:
                    unpriced = True
                    continue
            cost += amount
            priced = True
        if (
            (prompt is not None and prompt > INT32_MAX)
            or (completion is not None and completion > INT32_MAX)
            or (tokens is not None and tokens > INT32_MAX)
        ):
            self._counters.reject(extract.R_TOKENS_TOO_LARGE)
            prompt = completion = tokens = None
        if cost > MAX_COST:
            self._counters.reject(extract.R_COST)
            unpriced = True
        response_ms: int | None = None
        end_ns = owner.end_ns
        if kind == KIND_TURN:
            if owner.start_ns > 0 and owner.end_ns >= owner.start_ns:
                response_ms = min((owner.end_ns - owner.start_ns + 500_000) // 1_000_000, INT32_MAX)
        elif valid:
            end_ns = max(end_ns, valid[-1].end_ns)
        self._made += 1
        self._ready.append(
            TurnRecord(
                trace_id=f"{trace_id:032x}",
                span_id=f"{key_span:016x}",
                message_id=owner.message_id,
                conversation_id=owner.conversation_id,
                kind=kind,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=tokens,
                cost=cost if priced and not unpriced else None,
                cost_unpriced=unpriced,
                usage_missing=prompt is None and completion is None and tokens is None,
                calls=len(valid),
                model=model,
                provider=provider,
                finish_reason=finish,
                last_call_end_ns=valid[-1].end_ns if valid else None,
                response_time_ms=response_ms,
                end_ns=max(end_ns, 0),
                user_id=owner.user_id,
            )
        )
