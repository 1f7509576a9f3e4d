"""The HTTP benchmark's decisiveness rule: rounds are added until its two halves in time agree.

The rule decides how long the benchmark runs and whether its table may call the on/off ratio
decisive, so it is specified here on hand-made rounds, without starting any service.
"""

from __future__ import annotations

import math

from benchmarks._http_gen import Load
from benchmarks._stats import halves, relative_gap
from benchmarks.http_load import Window, _decided

_LOAD = Load(requests=32, errors=0, seconds=6.0, p50_ms=50.0, p99_ms=90.0)


def _round(on_over_off: float) -> dict[str, Window]:
    return {
        "off": Window(_LOAD, cpu_ms=40.0, db_ms=4.0),
        "on": Window(_LOAD, cpu_ms=40.0 * on_over_off, db_ms=4.0),
    }


def test_halves_split_in_time_with_the_odd_one_in_the_second() -> None:
    assert halves([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])


def test_relative_gap_is_measured_from_the_smaller_figure_either_way_round() -> None:
    assert math.isclose(relative_gap(1.0, 1.05), 0.05)
    assert math.isclose(relative_gap(1.05, 1.0), 0.05)


def test_relative_gap_of_an_undefined_figure_is_never_an_agreement() -> None:
    assert relative_gap(math.nan, 1.0) == math.inf
    assert relative_gap(0.0, 1.0) == math.inf


def test_halves_whose_median_ratios_are_within_5_percent_are_decided() -> None:
    rounds = [_round(r) for r in (1.10, 1.00, 1.10, 1.15, 1.20, 1.15)]
    assert _decided(rounds, minimum=6)


def test_halves_whose_median_ratios_differ_by_more_than_5_percent_are_not() -> None:
    rounds = [_round(r) for r in (1.10, 1.00, 1.10, 1.16, 1.20, 1.16)]
    assert not _decided(rounds, minimum=6)


def test_agreeing_halves_below_the_least_number_of_rounds_are_not_decided() -> None:
    rounds = [_round(1.10) for _ in range(5)]
    assert not _decided(rounds, minimum=6)
    assert _decided([*rounds, _round(1.10)], minimum=6)
