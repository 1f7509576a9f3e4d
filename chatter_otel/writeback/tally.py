"""Which LLM spans of one owner's subtree count, and the record they make.

The rules, applied to a group of spans (an owner's subtree when it is finalized, or the
spans that reach an already finalized owner late):

* Identity first: spans carrying the same ``chatter.call.id`` are one provider call (our
  ``chat`` span and another instrumentation's span for the same LangChain run), counted once.
  The innermost of them wins; between spans that do not nest, a valid one, then one in the
  current GenAI convention, then the first to end. The others lend what the winner lacks.
* Only innermost usage counts: a span with a usage-carrying descendant is a roll-up (a
  parent summing its children) or a duplicate (two instrumentations nesting around one call)
  and is ignored. Spans without a call id are otherwise distinct calls, whatever their timing
  or tokens: parallel calls with equal usage count apart.
* An ignored ancestor with the same input and output tokens is the same call: its cost (taken
  from a span before any pricing), model, provider and finish reason fill the winner's gaps.
* A rejected call (invalid token counts) counts as a call of unknown usage: it adds nothing,
  no cost either, and still hides the spans above it, so a bad value never promotes a roll-up.
* Late spans: a span below an already counted call (``shadowed``), or carrying a call id the
  owner already counted, is that call again and is not counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from chatter_otel.writeback import extract
from chatter_otel.writeback.extract import Call, Owner
from chatter_otel.writeback.records import INT32_MAX, KIND_TURN, MAX_COST, TurnRecord

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")

MAX_DEPTH: Final = 1024
"""Longest parent chain followed (a guard against cycles from malformed span data)."""

Links = Mapping[int, "int | None"]


@dataclass
class Selection:
    counted: list[Call] = field(default_factory=list)
    """The calls that count, one per provider call."""
    ignored: int = 0
    """Roll-ups and duplicates (nested, same call id)."""
    conflicts: int = 0
    """Late spans below an already counted call."""
    shadowed: set[int] = field(default_factory=set)
    """Spans of the group at or below a counted call (a late span below them is a duplicate)."""
    call_ids: set[str] = field(default_factory=set)
    """Every call id the group carried."""


def _rollups(links: Links, calls: Mapping[int, Call]) -> set[int]:
    """Calls of the group with a usage-carrying descendant in the group."""
    marked: set[int] = set()
    for span_id in calls:
        node = links.get(span_id)
        for _ in range(MAX_DEPTH):
            if node is None or node == span_id or node not in links:
                break  # the top of the group (or malformed data: a cycle back to the call)
            if node in calls:
                if node in marked:
                    break  # everything above was marked by an earlier walk
                marked.add(node)
            node = links[node]
    return marked


def _exits_shadowed(
    links: Links, span_id: int, outer: Callable[[int], bool], memo: dict[int, bool]
) -> bool:
    """Whether the chain above ``span_id`` leaves the group at a shadowed span."""
    path: list[int] = []
    node: int | None = span_id
    result = False
    for _ in range(MAX_DEPTH):
        if node is None:
            break
        if node in memo:
            result = memo[node]
            break
        if node not in links:
            result = outer(node)
            break
        path.append(node)
        node = links[node]
    for item in path:
        memo[item] = result
    return result


def _same_call(call: Call, other: Call) -> bool:
    return (
        other.valid
        and other.input_tokens == call.input_tokens
        and other.output_tokens == call.output_tokens
    )


def _lend(call: Call, other: Call, *, cost: bool) -> None:
    if cost and call.cost is None:
        call.cost = other.cost
    call.model = call.model or other.model
    call.provider = call.provider or other.provider
    call.finish_reason = call.finish_reason or other.finish_reason


def _complete(call: Call, links: Links, calls: Mapping[int, Call], same_id: list[Call]) -> None:
    """Fills what the counted span lacks from the spans that are the same call."""
    if not call.valid or not call.reported:
        return
    for other in same_id:
        if other is not call:
            _lend(call, other, cost=_same_call(call, other))
    node = links.get(call.span_id)
    for _ in range(MAX_DEPTH):
        if node is None or node not in links:
            return
        ancestor = calls.get(node)
        if ancestor is not None:
            if not _same_call(call, ancestor):
                return  # a real roll-up of several calls: other totals
            _lend(call, ancestor, cost=True)
        node = links[node]


def _rank(call: Call) -> tuple[bool, bool, int, int]:
    return (not call.valid, not call.genai, call.end_ns, call.span_id)


def select(
    links: Links,
    calls: Mapping[int, Call],
    *,
    counted_ids: set[str] | frozenset[str] = frozenset(),
    outer_shadowed: Callable[[int], bool] | None = None,
) -> Selection:
    """Applies the rules to a group: ``links`` are the parent links of all its spans,
    ``calls`` its usage-carrying spans. For a late group, ``counted_ids`` are the call ids the
    owner already counted and ``outer_shadowed`` tells whether the span a chain leaves the
    group at is shadowed."""
    out = Selection()
    rollups = _rollups(links, calls)
    memo: dict[int, bool] = {}
    by_id: dict[str, list[Call]] = {}
    plain: list[Call] = []
    for span_id, call in calls.items():
        if call.call_id is not None:
            out.call_ids.add(call.call_id)
        if outer_shadowed is not None and _exits_shadowed(links, span_id, outer_shadowed, memo):
            out.conflicts += 1
            continue
        if call.call_id is not None:
            by_id.setdefault(call.call_id, []).append(call)
            continue
        if span_id in rollups:
            out.ignored += 1
            continue
        plain.append(call)
    for call in plain:
        _complete(call, links, calls, [])
        out.counted.append(call)
    for call_id, group in by_id.items():
        if call_id in counted_ids:
            out.ignored += len(group)
            continue
        inner = [k for k in group if k.span_id not in rollups]
        if not inner:  # every span of this call wraps another call: a roll-up
            out.ignored += len(group)
            continue
        winner = min(inner, key=_rank)
        out.ignored += len(group) - 1
        _complete(winner, links, calls, group)
        out.counted.append(winner)
    out.shadowed = _shadowed(links, {k.span_id for k in out.counted}, outer_shadowed)
    return out


def _shadowed(links: Links, counted: set[int], outer: Callable[[int], bool] | None) -> set[int]:
    """Spans of the group at or below a counted call (or below a shadowed exit)."""
    status: dict[int, bool] = {}
    for span_id in links:
        path: list[int] = []
        node: int | None = span_id
        result = False
        for _ in range(MAX_DEPTH):
            if node is None:
                break
            if node in status:
                result = status[node]
                break
            if node in counted:
                result = True
                break
            if node not in links:
                result = outer(node) if outer is not None else False
                break
            path.append(node)
            node = links[node]
        for item in path:
            status[item] = result
    return {span_id for span_id, shadow in status.items() if shadow} | counted


class Recorder:
    """Prices counted calls and sums them into one record for one message."""

    def __init__(self, pricing: PricingLike | None, reject: Callable[[str], None]) -> None:
        self._pricing = pricing
        self._reject = reject
        self._pricing_failed = False

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
            self._reject(extract.R_COST)
            return None
        return amount

    def record(
        self, trace_id: int, owner: Owner, key_span: int, calls: list[Call], kind: str
    ) -> TurnRecord:
        assert owner.message_id is not None
        valid = sorted((k for k in calls if k.valid), key=lambda x: (x.end_ns, x.span_id))
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
        if any(n is not None and n > INT32_MAX for n in (prompt, completion, tokens)):
            # The tokens cannot be stored: the cost computed from them is refused with them.
            self._reject(extract.R_TOKENS_TOO_LARGE)
            prompt = completion = tokens = None
            priced = unpriced = False
        if cost > MAX_COST:
            self._reject(extract.R_COST)
            unpriced = True
        response_ms: int | None = None
        end_ns = owner.end_ns
        if kind == KIND_TURN:
            if owner.start_ns > 0 and owner.end_ns >= owner.start_ns:
                response_ms = min((owner.end_ns - owner.start_ns + 500_000) // 1_000_000, INT32_MAX)
        elif valid:
            end_ns = max(end_ns, valid[-1].end_ns)
        return TurnRecord(
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
