"""Helpers of the test_writeback_db_* modules: the shared price table, the processor factory's
type (the ``make`` fixture is in conftest.py), bounded flushes and float comparison."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chatter_otel.pricing import Pricing
from tests.test_writeback_support import (
    Tracing,
    wait_until,
)

PRICING = Pricing()

Factory = Callable[..., Tracing]


def flush(t: Tracing, timeout_ms: int = 20_000) -> bool:
    return t.provider.force_flush(timeout_ms)


def flush_until_written(t: Tracing, timeout: float = 30.0) -> bool:
    """A flush says False at once when the database fails during it: ask again (bounded)."""
    return wait_until(lambda: t.provider.force_flush(5_000), timeout=timeout, interval=0.05)


def close(a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15)
