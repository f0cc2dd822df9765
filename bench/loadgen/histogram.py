"""A log-bucketed latency histogram in the style of HdrHistogram.

Values are non-negative integers (microseconds here). Values below 2**SUB_BITS are
counted exactly; above, each power-of-two range is split into 2**(SUB_BITS-1) equal
buckets, so a bucket is never wider than 1/128 of its values (two significant
decimal digits, HdrHistogram's usual setting). Recording is one ``bit_length`` and
one list increment, cheap enough for the generator's hot loop, which inlines
:func:`bucket_of`. Histograms from several generator processes merge by adding
counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SUB_BITS = 8
_EXACT = 1 << SUB_BITS  # values below this have a bucket each
_HALF = 1 << (SUB_BITS - 1)  # buckets per power of two above it
MAX_VALUE = (1 << 40) - 1  # ~12.7 days in microseconds; larger values are clamped
N_BUCKETS = _EXACT + (40 - SUB_BITS) * _HALF


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer ``value`` (clamped to MAX_VALUE)."""
    if value < _EXACT:
        return max(value, 0)
    if value > MAX_VALUE:
        value = MAX_VALUE
    e = value.bit_length() - SUB_BITS
    return _EXACT + ((e - 1) << (SUB_BITS - 1)) + (value >> e) - _HALF


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value counted by bucket ``index`` (inclusive)."""
    if index < _EXACT:
        return index, index
    e = (index - _EXACT) // _HALF + 1
    m = (index - _EXACT) % _HALF + _HALF
    return m << e, ((m + 1) << e) - 1


class LogHistogram:
    """Counts of values per log bucket, with the exact min, max and sum on the side."""

    __slots__ = ("counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.total = 0
        self.min: int | None = None
        self.max = 0

    def record(self, value: int) -> None:
        """Count one value (negative values count as 0)."""
        value = max(int(value), 0)
        self.counts[bucket_of(value)] += 1
        self.total += 1
        if value > self.max:
            self.max = value
        if self.min is None or value < self.min:
            self.min = value

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s counts to this histogram."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min

    def percentile(self, p: float) -> int | None:
        """The value at percentile ``p`` (0..100), None when empty.

        The rank is the smallest one whose cumulative share reaches ``p`` (numpy's
        ``inverted_cdf``); the answer is the highest value of that rank's bucket
        (HdrHistogram's "highest equivalent value"), capped at the exact maximum, so
        it is never below the true order statistic and at most one bucket above.
        """
        n = self.count
        if n == 0:
            return None
        if not 0 <= p <= 100:
            raise ValueError(f"percentile out of range: {p}")
        rank = max(1, math.ceil(p / 100.0 * n - 1e-9))
        seen = 0
        for index, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max  # pragma: no cover - unreachable, counts sum to n

    def percentiles(self, ps: Sequence[float]) -> dict[str, int | None]:
        """``{"p50": v, ...}`` for each p in ``ps`` (keys drop a trailing ``.0``)."""
        return {percentile_key(p): self.percentile(p) for p in ps}

    def to_dict(self) -> dict[str, object]:
        """A compact JSON-able form: sparse ``[index, count]`` pairs plus min/max."""
        return {
            "sub_bits": SUB_BITS,
            "buckets": [[i, c] for i, c in enumerate(self.counts) if c],
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LogHistogram:
        h = cls()
        buckets = data.get("buckets", [])
        assert isinstance(buckets, list)
        for i, c in buckets:
            h.counts[int(i)] += int(c)
        h.total = sum(h.counts)
        mn, mx = data.get("min"), data.get("max")
        h.min = int(mn) if isinstance(mn, int) else None
        h.max = int(mx) if isinstance(mx, int) else 0
        return h


def percentile_key(p: float) -> str:
    """``50 -> "p50"``, ``99.9 -> "p99.9"``."""
    text = f"{p:g}"
    return f"p{text}"
