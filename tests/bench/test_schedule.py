"""The open-loop clock: no drift, every request scheduled exactly once."""

from __future__ import annotations

from fractions import Fraction

import pytest
from loadgen.schedule import Schedule


def test_send_times_are_start_plus_index_over_rate_without_drift() -> None:
    start, rate, total = 1234.5, 30_000.0, 10_000_000
    s = Schedule(start, rate, total)
    for k in (0, 1, 7, 999_999, total - 1):
        assert s.time_of(k) == start + k / rate
    # the last send time of a long run is within float rounding (not accumulated
    # error) of exact arithmetic
    exact = Fraction(start) + Fraction(total - 1) / Fraction(rate)
    assert abs(Fraction(s.time_of(total - 1)) - exact) < Fraction(1, 10**9)


def test_due_counts_requests_at_their_exact_times() -> None:
    s = Schedule(100.0, 1000.0, 5000)
    assert s.due(99.0) == 0
    assert s.due(100.0) == 1
    for k in (0, 1, 10, 4321):
        assert s.due(s.time_of(k)) == k + 1
        assert s.due(s.time_of(k) + 0.0004) == k + 1
    assert s.due(1e9) == 5000


@pytest.mark.parametrize("procs", [1, 2, 3, 7])
def test_processes_split_the_run_exactly_once(procs: int) -> None:
    rate, total = 777.0, 10_001
    seen: list[int] = []
    for index in range(procs):
        s = Schedule(0.0, rate, total, index, procs)
        seen += [s.global_index(k) for k in range(s.count)]
        for k in range(0, s.count, 997):
            assert s.time_of(k) == s.global_index(k) / rate
    assert sorted(seen) == list(range(total))


def test_share_due_matches_its_indices() -> None:
    s = Schedule(0.0, 100.0, 1000, index=1, procs=3)
    assert s.due(0.0) == 0  # global 0 belongs to process 0
    assert s.due(0.01) == 1  # global 1 is this process's first
    assert s.due(0.039) == 1
    assert s.due(0.04) == 2


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        Schedule(0.0, 0.0, 10)
    with pytest.raises(ValueError):
        Schedule(0.0, 10.0, 10, index=2, procs=2)
