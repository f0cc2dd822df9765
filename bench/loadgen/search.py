"""The capacity search: the highest open-loop rate a server holds under the rule.

There is no fixed ceiling. From a start rate (a share of the server's closed-loop
max) the search climbs by a factor while runs pass, walks down by halves while they
fail, and then bisects between the last pass and the first failure. A failing rate
is tried again (``retries``): a shared machine stalls now and then, so a rate fails
only when every try does. The run that ended the climb says who failed: when the
generator fell behind its own schedule or was out of CPU, the figure is a lower
bound set by the generator, and the result says so (``generator_limited``).

``probe(rate)`` does the run; the search itself has no clock and no sockets, so its
tests feed it scripted verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    """One run's outcome under the capacity rule."""

    rate: float
    passed: bool
    generator_limited: bool = False  # the generator, not the server, missed the rule
    note: str = ""  # why, in a few words, when it failed


@dataclass
class Capacity:
    """What the search found; ``capacity`` 0 when even ``floor`` failed."""

    capacity: float
    first_fail: float | None
    generator_limited: bool
    trail: list[Verdict] = field(default_factory=list)
    note: str = ""  # the note of the failure that bounds the capacity


def round_rate(rate: float) -> float:
    """Rates are probed at three significant digits (readable labels, stable keys)."""
    if rate <= 0:
        return 0.0
    digits = len(str(int(rate))) - 3
    return float(round(rate, -digits if digits > 0 else 0))


def capacity_search(
    probe: Callable[[float], Verdict],
    start: float,
    *,
    grow: float = 1.25,
    refine: int = 2,
    retries: int = 1,
    floor: float = 50.0,
    max_probes: int = 40,
) -> Capacity:
    """Find the highest rate ``probe`` passes; see the module docstring.

    ``max_probes`` only bounds a probe that never fails (a broken one): a real
    server or generator always fails at some rate. Raises ValueError for a
    non-positive ``start`` or a ``grow`` of at most 1.
    """
    if start <= 0 or grow <= 1.0:
        raise ValueError("start must be positive and grow above 1")
    trail: list[Verdict] = []

    def attempt(rate: float) -> Verdict:
        v = probe(rate)
        trail.append(v)
        for _ in range(retries):
            if v.passed or len(trail) >= max_probes:
                break
            v = probe(rate)
            trail.append(v)
        return v

    rate = round_rate(max(start, floor))
    v = attempt(rate)
    lo: float | None
    hi: float | None
    ended = v
    if v.passed:
        lo, hi = rate, None
        while len(trail) < max_probes:
            rate = round_rate(lo * grow)
            v = attempt(rate)
            if not v.passed:
                hi, ended = rate, v
                break
            lo = rate
    else:
        lo, hi = None, rate
        while rate > floor and len(trail) < max_probes:
            rate = round_rate(max(floor, rate / 2))
            v = attempt(rate)
            if v.passed:
                lo = rate
                break
            hi, ended = rate, v
    if lo is None:
        return Capacity(0.0, hi, ended.generator_limited, trail, ended.note)
    for _ in range(refine if hi is not None else 0):
        assert hi is not None
        mid = round_rate((lo + hi) / 2)
        if mid <= lo or mid >= hi or len(trail) >= max_probes:
            break
        v = attempt(mid)
        if v.passed:
            lo = mid
        else:
            hi, ended = mid, v
    bounded = hi is not None
    return Capacity(
        lo, hi, bounded and ended.generator_limited, trail, ended.note if bounded else ""
    )


__all__ = ["Capacity", "Verdict", "capacity_search", "round_rate"]
