"""Medians and spreads of repeated, interleaved measurements.

The machine is shared and noisy: a single timing says little, and two variants timed one
after the other see different neighbours. Every figure in the table is therefore the median
of several repetitions in which the variants ran interleaved (in a shuffled order), with the
spread of those repetitions beside it so a reader can tell a difference from noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100), as numpy's default does."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Median and spread of one figure over its repetitions."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        return cls(
            median=percentile(values, 50),
            low=min(values),
            high=max(values),
            q1=percentile(values, 25),
            q3=percentile(values, 75),
            n=len(values),
        )

    def fmt(self, fmt: Callable[[float], str]) -> tuple[str, str]:
        """(median, "min–max, n=N") formatted with ``fmt``."""
        return fmt(self.median), f"{fmt(self.low)}–{fmt(self.high)}, n={self.n}"


def ratio(x: float) -> str:
    return f"{x:.3f}×" if math.isfinite(x) else "n/a"


def shuffled(items: Sequence[T], rng: random.Random) -> list[T]:
    out = list(items)
    rng.shuffle(out)
    return out


def human_ns(ns: float) -> str:
    if not math.isfinite(ns):
        return "n/a"
    size = abs(ns)
    if size >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if size >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if size >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def human_rate(per_s: float, unit: str) -> str:
    if not math.isfinite(per_s):
        return "n/a"
    if per_s >= 1e4:
        return f"{per_s / 1e3:.1f} k {unit}/s"
    return f"{per_s:,.0f} {unit}/s"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def halves(values: Sequence[T]) -> tuple[list[T], list[T]]:
    """The first and the second half in time (the second gets the odd one out)."""
    middle = len(values) // 2
    return list(values[:middle]), list(values[middle:])


def relative_gap(a: float, b: float) -> float:
    """How far apart two positive figures are, relative to the smaller (inf when undefined)."""
    if not (math.isfinite(a) and math.isfinite(b)) or min(a, b) <= 0:
        return math.inf
    return max(a, b) / min(a, b) - 1.0
