"""Token buckets with an injected clock: no sleeps."""

from __future__ import annotations

import pytest

from collector.ratelimit import RateLimit, RateLimiter, TokenBucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", None),
        ("10", RateLimit(10, 10)),
        ("0.5", RateLimit(0.5, 1)),
        ("5:20", RateLimit(5, 20)),
    ],
)
def test_parse(text: str, expected: RateLimit | None) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize("text", ["-1", "x", "5:0", "inf", "5:nan"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(text)


def test_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(RateLimit(2, 4), now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.5) == 0.0
    assert bucket.take(2, 0.5) == pytest.approx(1.0)


def test_limiter_answers_whole_seconds_and_keys_apart() -> None:
    limiter = RateLimiter(RateLimit(1, 2))
    assert limiter.check("a", 2, 0.0) == 0
    assert limiter.check("a", 1, 0.0) == 1  # Max-Age >= 1
    assert limiter.check("b", 2, 0.0) == 0  # another device has its own bucket
    assert limiter.check("a", 1, 1.0) == 0
    assert limiter.check("a", 5, 1.0) == 2  # larger than the burst: wait for a full one


def test_limiter_table_is_bounded_and_drops_full_buckets_first() -> None:
    limiter = RateLimiter(RateLimit(1, 1), max_keys=3)
    limiter.check("idle", 0, 0.0)
    limiter.check("x", 1, 0.0)
    limiter.check("y", 1, 0.0)
    limiter.check("z", 1, 0.0)
    assert len(limiter) == 3
    assert limiter.check("x", 1, 0.0) == 1  # x kept its debt: "idle" (full) went
