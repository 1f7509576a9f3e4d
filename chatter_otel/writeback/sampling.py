"""A sampler that lets the write-back see every span while only the sample is exported.

The SDK's ``AlwaysRecordSampler`` (1.45) turns ``DROP`` into ``RECORD_ONLY`` but keeps the
*result's* attributes, and every SDK sampler returns ``None`` attributes with ``DROP``. The
SDK builds a span from the sampling result's attributes, so each span that is not sampled
loses the attributes given when it was started (``chatter.message.id``, the model, ...):
with 1% sampling, 99% of the turns would reach the processor without their message id.

This one keeps the attributes the span was started with, which is what the specification
of ``AlwaysRecord`` asks for ("functionally equivalent to the original").
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


class AlwaysRecordSampler(Sampler):
    """``root``'s decision, except that ``DROP`` becomes ``RECORD_ONLY`` (attributes kept)."""

    def __init__(self, root: Sampler) -> None:
        self._root = root

    @property
    def root(self) -> Sampler:
        return self._root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._root.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"AlwaysRecordSampler{{{self._root.get_description()}}}"
