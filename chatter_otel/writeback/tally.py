"""Which LLM spans of one owner's subtree count (:mod:`.recorder` sums them into a record).

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

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Final

from chatter_otel.writeback.extract import Call

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


def _verdict(
    links: Links,
    span_id: int,
    memo: dict[int, bool],
    *,
    exit_verdict: Callable[[int], bool],
    stop_at: Container[int] = (),
) -> bool:
    """Follows the parent links up from ``span_id`` to a verdict, shared by every span passed.

    The walk stops at a span of ``stop_at`` (True), at a span already decided (``memo``), at
    the first span outside the group (``exit_verdict`` of it), or at the top (False); a chain
    longer than ``MAX_DEPTH`` (malformed data) is False. Each span passed is memoised with
    the verdict, so a group is walked once whatever its shape."""
    path: list[int] = []
    node: int | None = span_id
    result = False
    for _ in range(MAX_DEPTH):
        if node is None:
            break
        if node in memo:
            result = memo[node]
            break
        if node in stop_at:
            result = True
            break
        if node not in links:
            result = exit_verdict(node)
            break
        path.append(node)
        node = links[node]
    for item in path:
        memo[item] = result
    return result


def _never(_span_id: int) -> bool:
    return False


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
        if outer_shadowed is not None and _verdict(
            links, span_id, memo, exit_verdict=outer_shadowed
        ):
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
    memo: dict[int, bool] = {}
    exit_verdict = outer if outer is not None else _never
    for span_id in links:
        _verdict(links, span_id, memo, exit_verdict=exit_verdict, stop_at=counted)
    return {span_id for span_id, shadow in memo.items() if shadow} | counted
