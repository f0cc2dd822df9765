"""The capacity search against scripted servers: no sockets, no clock."""

from __future__ import annotations

import pytest
from loadgen.search import Verdict, capacity_search, round_rate


def server(limit: float, generator: float = float("inf"), flaky: set[float] | None = None):
    """A probe passing up to ``limit``; above ``generator`` the generator is the one
    failing; a rate in ``flaky`` fails its first try only."""
    tried: list[float] = []

    def probe(rate: float) -> Verdict:
        first = rate not in tried
        tried.append(rate)
        if flaky and rate in flaky and first:
            return Verdict(rate, False)
        if rate > generator:
            return Verdict(rate, False, generator_limited=True)
        return Verdict(rate, rate <= limit)

    return probe, tried


def test_climbs_past_any_fixed_ceiling_until_the_server_fails() -> None:
    probe, tried = server(limit=1_000_000)
    found = capacity_search(probe, 10_000, grow=1.5, refine=3)
    assert 0.9 * 1_000_000 <= found.capacity <= 1_000_000
    assert found.first_fail is not None and found.first_fail > 1_000_000
    assert not found.generator_limited
    assert max(tried) > 1_000_000


def test_walks_down_when_the_start_already_fails() -> None:
    probe, tried = server(limit=3000)
    found = capacity_search(probe, 50_000, refine=4, retries=0)
    assert 0.8 * 3000 <= found.capacity <= 3000
    assert tried[0] == 50_000 and min(tried) < 3000


def test_bisection_narrows_between_the_last_pass_and_the_first_failure() -> None:
    probe, _ = server(limit=12_345)
    coarse = capacity_search(probe, 10_000, grow=2.0, refine=0)
    probe, _ = server(limit=12_345)
    fine = capacity_search(probe, 10_000, grow=2.0, refine=6)
    assert coarse.capacity == 10_000
    assert 12_000 <= fine.capacity <= 12_345


def test_a_failure_is_retried_before_it_counts() -> None:
    probe, tried = server(limit=10_000, flaky={6000.0})
    found = capacity_search(probe, 5000, grow=1.2, refine=0, retries=1)
    assert tried.count(6000.0) == 2
    assert found.capacity >= 6000
    probe, _ = server(limit=10_000, flaky={6000.0})
    assert capacity_search(probe, 5000, grow=1.2, refine=0, retries=0).capacity == 5000


def test_says_when_the_generator_not_the_server_was_the_limit() -> None:
    probe, _ = server(limit=1e9, generator=80_000)
    found = capacity_search(probe, 20_000, grow=1.5, refine=2)
    assert found.generator_limited
    assert found.capacity <= 80_000
    probe, _ = server(limit=50_000, generator=80_000)
    assert not capacity_search(probe, 20_000, grow=1.5, refine=2).generator_limited


def test_nothing_passes_gives_zero_and_stops_at_the_floor() -> None:
    probe, tried = server(limit=0)
    found = capacity_search(probe, 1000, floor=100, retries=0)
    assert found.capacity == 0
    assert min(tried) == 100
    assert len(found.trail) == len(tried)


def test_a_probe_that_never_fails_is_bounded() -> None:
    probe, tried = server(limit=float("inf"))
    found = capacity_search(probe, 100, grow=2.0, max_probes=12)
    assert len(tried) == 12 and found.first_fail is None


@pytest.mark.parametrize(
    ("rate", "want"), [(123_456.7, 123_000.0), (999.4, 999.0), (51.2, 51.0), (0, 0.0)]
)
def test_rates_are_rounded_to_three_significant_digits(rate: float, want: float) -> None:
    assert round_rate(rate) == want


def test_bad_arguments_are_refused() -> None:
    probe, _ = server(limit=1)
    with pytest.raises(ValueError):
        capacity_search(probe, 0)
    with pytest.raises(ValueError):
        capacity_search(probe, 100, grow=1.0)
