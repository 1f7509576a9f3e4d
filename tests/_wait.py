"""Bounded polling for the fault tests: every wait ends, with a message saying what
was not reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The throwaway server of the write-back outage test, reused rather than duplicated.


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = ""
) -> float:
    """Polls until ``predicate()``; returns the seconds it took, fails after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s: {what}")
        time.sleep(interval)
