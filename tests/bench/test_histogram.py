"""The log-bucketed histogram against numpy's exact order statistics."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loadgen.histogram import (
    MAX_VALUE,
    N_BUCKETS,
    LogHistogram,
    bucket_bounds,
    bucket_of,
    percentile_key,
)

PS = (0, 1, 10, 50, 90, 99, 99.9, 100)


def _exact(data: np.ndarray, p: float) -> int:
    """numpy's ``inverted_cdf`` order statistic, with the rank in exact arithmetic
    (numpy computes n*p in floats: 20000 * 0.999 rounds up to the next rank)."""
    rank = max(1, math.ceil(Fraction(str(p)) * len(data) / 100))
    return int(np.sort(data)[rank - 1])


def _within_bucket(got: int, exact: int) -> bool:
    # never below the order statistic, at most one bucket width (< 1/128) above it
    return exact <= got <= exact + max(1, exact // 128)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_numpy_on_lognormal_latencies(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.lognormal(mean=6.0, sigma=1.5, size=20_000).astype(np.int64)
    h = LogHistogram()
    h.record_many(int(v) for v in data)
    assert _exact(data, 50) == int(np.percentile(data, 50, method="inverted_cdf"))
    for p in PS:
        got = h.percentile(p)
        assert got is not None
        assert _within_bucket(got, _exact(data, p)), (p, got, _exact(data, p))
    assert h.max == int(data.max())
    assert h.min == int(data.min())
    assert h.count == len(data)


def test_small_values_are_exact() -> None:
    h = LogHistogram()
    h.record_many(range(1, 101))
    assert h.percentile(50) == 50
    assert h.percentile(99) == 99
    assert h.percentile(100) == 100


def test_empty_histogram_has_no_percentiles() -> None:
    assert LogHistogram().percentile(50) is None


def test_percentile_out_of_range_is_rejected() -> None:
    h = LogHistogram()
    h.record(5)
    with pytest.raises(ValueError):
        h.percentile(101)


@given(st.integers(min_value=0, max_value=MAX_VALUE))
def test_every_value_falls_in_its_bucket(value: int) -> None:
    index = bucket_of(value)
    assert 0 <= index < N_BUCKETS
    lo, hi = bucket_bounds(index)
    assert lo <= value <= hi
    assert hi - lo <= max(0, lo // 128)


def test_buckets_tile_the_range_without_gaps() -> None:
    prev_hi = -1
    for index in range(N_BUCKETS):
        lo, hi = bucket_bounds(index)
        assert lo == prev_hi + 1
        prev_hi = hi


@settings(max_examples=50)
@given(
    st.lists(st.integers(min_value=0, max_value=10**8), min_size=1, max_size=300),
    st.lists(st.integers(min_value=0, max_value=10**8), min_size=1, max_size=300),
    st.sampled_from(PS),
)
def test_merge_equals_recording_everything(a: list[int], b: list[int], p: float) -> None:
    ha, hb, hall = LogHistogram(), LogHistogram(), LogHistogram()
    ha.record_many(a)
    hb.record_many(b)
    hall.record_many(a + b)
    ha.merge(hb)
    assert ha.percentile(p) == hall.percentile(p)
    assert ha.max == hall.max and ha.min == hall.min
    got = ha.percentile(p)
    assert got is not None
    assert _within_bucket(got, _exact(np.array(a + b), p))


def test_dict_round_trip_keeps_percentiles() -> None:
    h = LogHistogram()
    h.record_many([3, 700, 700, 12_345, 9_999_999])
    back = LogHistogram.from_dict(h.to_dict())
    assert [back.percentile(p) for p in PS] == [h.percentile(p) for p in PS]
    assert (back.min, back.max) == (3, 9_999_999)


def test_percentile_keys() -> None:
    assert percentile_key(50) == "p50"
    assert percentile_key(99.9) == "p99.9"
