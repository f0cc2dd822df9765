"""Per-device rate limits: a token bucket per key, with no clock of its own.

`--rate-limit RATE[:BURST]` gives each identity (DTLS) or source address (plain
CoAP) RATE events per second with bursts of BURST (default: one second's worth).
A request whose events do not fit is refused whole with 4.29 Too Many Requests and a
Max-Age saying when they would (RFC 8516 §3), so nothing of it is stored.

Pure objects: the caller passes `now` (monotonic seconds), so tests need no sleeps.
The table of buckets is bounded; a full bucket carries no information (a fresh one
starts full), so the least recently used full buckets are the ones dropped, and a
table that is all debt drops its oldest entry: that device gets a fresh burst, which
is the cheap failure (it cannot evict another device's debt faster than it pays its
own).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# RFC 8516 §3: Max-Age of a 4.29 is the seconds after which the client may retry;
# at least 1 because Max-Age is whole seconds and 0 would mean "now".
MIN_RETRY_AFTER = 1
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """RATE events per second, bursts of BURST events."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """`RATE` or `RATE:BURST`; `0` turns the limit off (returns None).

        Raises ValueError with a short reason.
        """
        rate_text, _, burst_text = text.strip().partition(":")
        rate = float(rate_text)
        if not math.isfinite(rate) or rate < 0:
            raise ValueError("rate must be a finite number >= 0")
        if rate == 0:
            return None
        burst = float(burst_text) if burst_text else max(1.0, rate)
        if not math.isfinite(burst) or burst < 1:
            raise ValueError("burst must be a finite number >= 1")
        return cls(rate, burst)

    def __str__(self) -> str:
        return f"{self.rate:g}:{self.burst:g}"


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; a take is all or nothing."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.rate
        self.burst = limit.burst
        self.tokens = limit.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, count: float, now: float) -> float:
        """Take `count` tokens: 0.0 when they were there, else seconds until they are.

        A request larger than the burst can never fit; it is told to wait for a full
        bucket, and then refused again, which is the right answer for it.
        """
        self._refill(now)
        if count <= self.tokens:
            self.tokens -= count
            return 0.0
        return (min(count, self.burst) - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class RateLimiter:
    """One bucket per key (identity or source address), the table bounded."""

    def __init__(self, limit: RateLimit, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: Hashable, events: int, now: float) -> int:
        """0 when `key` may store `events` now, else the Max-Age (whole seconds, >= 1)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            bucket = self._buckets[key] = TokenBucket(self.limit, now)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(events, now)
        if wait == 0.0:
            return 0
        return max(MIN_RETRY_AFTER, math.ceil(wait))

    def _evict(self, now: float) -> None:
        # Oldest first; a few full buckets are usually at the front.
        for key in list(self._buckets)[:64]:
            if self._buckets[key].full(now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
