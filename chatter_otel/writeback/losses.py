"""Usage that no message takes: counted as ``unowned``, and said at WARNING once a minute.

Every path of the assembler that gives up on a call (no owner above it, an owner whose
message id was refused or never bound, anything aged out or evicted) ends here, so no
owned usage is dropped without a count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Final

from chatter_otel.writeback.extract import Call
from chatter_otel.writeback.stats import Counters
from chatter_otel.writeback.tally import select

logger = logging.getLogger("chatter_otel.writeback")

WARN_EVERY: Final = 60.0
"""Seconds between two WARNING lines about unowned usage (the count covers the interval)."""


class Losses:
    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._since_warning = 0
        self._warned_at = -WARN_EVERY

    def subtree(self, links: Mapping[int, int | None], calls: Mapping[int, Call], why: str) -> None:
        """A group of spans no owner takes: its calls, each counted once, are lost."""
        if calls:
            self.calls(select(links, calls).counted, why)

    def calls(self, calls: Iterable[Call], why: str) -> None:
        lost = sum(1 for call in calls if call.valid)
        if not lost:
            return
        self._counters.add("unowned", lost)
        self._since_warning += lost
        logger.debug("%d LLM call(s) with usage not written: %s", lost, why)
        self.warn(time.monotonic(), why)

    def warn(self, now: float, why: str | None = None) -> None:
        """The WARNING line, when there is something to say and a minute has passed."""
        if not self._since_warning or now - self._warned_at < WARN_EVERY:
            return
        logger.warning(
            "write-back: %d LLM call(s) with usage had no message to go to (%s); "
            "counted as unowned",
            self._since_warning,
            why or "see DEBUG lines",
        )
        self._since_warning = 0
        self._warned_at = now
