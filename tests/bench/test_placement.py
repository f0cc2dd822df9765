"""Where started servers go: --cpu-limit is per collector worker, and the cores taken."""

from __future__ import annotations

import loadtest
from loadgen import servers


def test_a_collectors_quota_is_the_cpu_limit_per_worker() -> None:
    assert servers.collector_quota(0.45, 1) == 0.45
    assert servers.collector_quota(0.45, 2) == 0.9
    assert servers.collector_quota(None, 4) is None


def test_workers_under_a_quota_share_the_cores_it_rounds_up_to() -> None:
    # Two workers of 0.45 CPU fit one core, so the generator keeps the other one.
    assert loadtest.server_cores("collector", 2, 1, 0.45) == 1
    assert loadtest.server_cores("collector", 3, 1, 0.45) == 2
    assert loadtest.server_cores("collector", 2) == 2  # no quota: a core a worker
    assert loadtest.server_cores("collector", 1, 3, 0.2) == 3  # a core a replica
    assert loadtest.server_cores("californium", 1, 1, 0.3) == 1
