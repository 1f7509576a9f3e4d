"""The record of one owner: its counted calls priced and summed (after :mod:`.tally`).

Sums are exact integers and decimals; a sum the message columns cannot hold is refused with
its cost (never truncated), and a cost no price covers leaves the record unpriced rather
than low.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from chatter_otel.writeback import validation
from chatter_otel.writeback.extract import Call, Owner
from chatter_otel.writeback.records import INT32_MAX, KIND_TURN, MAX_COST, TurnRecord

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel.writeback")


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
            self._reject(validation.R_COST)
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
            self._reject(validation.R_TOKENS_TOO_LARGE)
            prompt = completion = tokens = None
            priced = unpriced = False
        if cost > MAX_COST:
            self._reject(validation.R_COST)
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
