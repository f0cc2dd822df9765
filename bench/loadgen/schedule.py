"""The open-loop clock: request i is due at ``start + i / rate``, whatever the server does.

Requests are numbered globally; with P generator processes, process p sends the
requests i with ``i % P == p``. Times are computed from the index, never by adding an
interval to the previous time, so there is no drift however long the run (a float
sum of 1/rate would drift by rounding). Latency is measured from these scheduled
times, so a server that stalls the generator cannot hide its queueing (no
coordinated omission).
"""

from __future__ import annotations

import math


class Schedule:
    """The send times of one generator process's share of a constant-rate run.

    ``start`` is a ``time.monotonic()`` value (CLOCK_MONOTONIC, shared by all
    processes of the machine); ``total`` is the number of requests of the whole run.
    """

    __slots__ = ("count", "index", "procs", "rate", "start", "total")

    def __init__(self, start: float, rate: float, total: int, index: int = 0, procs: int = 1):
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 <= index < procs:
            raise ValueError("index must be in [0, procs)")
        self.start = start
        self.rate = float(rate)
        self.total = int(total)
        self.index = index
        self.procs = procs
        # requests of this process: i = k * procs + index < total
        self.count = max(0, (self.total - index + procs - 1) // procs)

    def global_index(self, k: int) -> int:
        """The run-wide number of this process's k-th request."""
        return k * self.procs + self.index

    def time_of(self, k: int) -> float:
        """When this process's k-th request is due."""
        return self.start + (k * self.procs + self.index) / self.rate

    def due(self, now: float) -> int:
        """How many of this process's requests are due at ``now`` (capped at count)."""
        # highest due global index; the epsilon absorbs float rounding at exact due times
        i = math.floor((now - self.start) * self.rate + 1e-6)
        if i < self.index:
            return 0
        return min(self.count, (i - self.index) // self.procs + 1)
