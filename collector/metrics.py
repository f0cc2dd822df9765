"""Prometheus metrics, multiprocess mode, fed without touching the hot path.

Naming scheme: `iot_collector_<noun>[_<unit>]_total` for counters, base units
(seconds, events), and bounded label sets only: method and path come from closed
sets (anything else is "other"), code is the dotted response code.

prometheus-client's multiprocess values write to an mmap'd file on every update,
which costs more than a whole CoAP request does here. So a worker counts in plain
Python ints and local histogram buckets (`WorkerStats`) and `publish()` moves the
deltas into the Prometheus objects once a second. The supervisor sets and wipes
`PROMETHEUS_MULTIPROC_DIR` before any worker starts, marks dead workers, and serves
the merged view.

Counters stay monotonic across a worker's death: a dead worker's counter file stays
in the directory and keeps being summed (only its live gauges are dropped). What a
worker killed with -9 had counted but not yet published would be lost, so the event
outcomes, which operators compare with the rows in the store, are written through:
once the first publish has attached the Prometheus counters, each batch's outcome
counts go to the file at once, before its answers leave the worker.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from collections import Counter as Tally
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


def prepare_multiproc_dir() -> str | None:
    """Set PROMETHEUS_MULTIPROC_DIR (a fresh temp dir unless given) and wipe it.

    Must run before prometheus_client is imported anywhere in this process tree.
    Returns the path when it made a temporary directory (the caller removes it at
    exit), None when the directory was given.
    """
    made = None
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = made = tempfile.mkdtemp(prefix="iot-collector-metrics-")
        os.environ[MULTIPROC_ENV] = path
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)
    return made


class LocalHistogram:
    """Bucket counts kept in a list; published as deltas."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def take(self) -> tuple[list[int], float]:
        counts, total = self.counts, self.total
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        return counts, total


class UnobservedHistogram(LocalHistogram):
    """A LocalHistogram that keeps nothing: a worker without metrics (--metrics-port 0)
    pays one empty call per observation instead of a bisect and two additions."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(())

    def observe(self, value: float) -> None:
        """Discard `value`."""


_OUTCOMES = ("stored", "duplicate", "rejected", "failed")


def _event_count(outcome: str) -> property:
    """An events counter of WorkerStats that publishes each increment at once when a
    Prometheus child is attached (one mmap write per batch, not per request)."""
    slot = "_events_" + outcome

    def get(self: WorkerStats) -> int:
        return int(getattr(self, slot))

    def put(self: WorkerStats, value: int) -> None:
        child = self._event_children.get(outcome)
        if child is None:
            setattr(self, slot, value)
            return
        delta = value - getattr(self, slot)
        if delta > 0:
            child.inc(delta)
        setattr(self, slot, 0)

    return property(get, put, doc=f"events {outcome}, not yet published")


class WorkerStats:
    """A worker's counters between two publishes. Plain attributes: cheap to bump."""

    events_stored = _event_count("stored")
    events_duplicate = _event_count("duplicate")
    events_rejected = _event_count("rejected")
    events_failed = _event_count("failed")

    def __init__(self, histograms: bool = True) -> None:
        """`histograms` False (metrics off) makes the histograms keep nothing."""
        self.requests: Tally[tuple[str, str, str]] = Tally()
        self._event_children: dict[str, Any] = {}
        self._events_stored = 0
        self._events_duplicate = 0
        self._events_rejected = 0
        self._events_failed = 0
        self.malformed = 0
        self.duplicates = 0
        self.overloaded = 0
        self.retransmissions = 0  # separate responses the worker itself sent again
        self.rate_limited = 0  # requests answered 4.29 (--rate-limit), both transports
        if histograms:
            self.latency = LocalHistogram(LATENCY_BUCKETS)
            self.flush_seconds = LocalHistogram(LATENCY_BUCKETS)
            self.batch_size = LocalHistogram(tuple(float(b) for b in BATCH_BUCKETS))
        else:
            self.latency = self.flush_seconds = self.batch_size = UnobservedHistogram()

    @property
    def attached(self) -> bool:
        return bool(self._event_children)

    def attach_events(self, children: dict[str, Any]) -> None:
        """Write event outcomes through to these Prometheus children from now on,
        publishing what was counted so far."""
        pending = {o: getattr(self, "_events_" + o) for o in _OUTCOMES}
        self._event_children = children
        for outcome, count in pending.items():
            setattr(self, "_events_" + outcome, 0)
            if count:
                children[outcome].inc(count)


class PrometheusMetrics:
    """The Prometheus objects of one process. Create after fork, in the worker."""

    def __init__(self, worker: int) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.worker = str(worker)
        self.requests = Counter(
            "iot_collector_requests",
            "CoAP requests answered, by method, path and response code",
            ["method", "path", "code"],
            registry=None,
        )
        self.events = Counter(
            "iot_collector_events",
            "Events by outcome: stored, duplicate (already stored), rejected, failed",
            ["outcome"],
            registry=None,
        )
        self.malformed = Counter(
            "iot_collector_malformed_datagrams", "Datagrams that are not CoAP", registry=None
        )
        self.duplicates = Counter(
            "iot_collector_duplicates",
            "Duplicate requests absorbed or answered from the exchange cache",
            registry=None,
        )
        self.overloaded = Counter(
            "iot_collector_overload_rejections",
            "Requests answered 5.03 because max-pending events were waiting",
            registry=None,
        )
        self.rate_limited = Counter(
            "iot_collector_rate_limited",
            "Requests answered 4.29 Too Many Requests (--rate-limit)",
            registry=None,
        )
        self.retransmissions = Counter(
            "iot_collector_separate_response_retransmissions",
            "The collector's own resends of separate CON responses for want of an ACK",
            registry=None,
        )
        self.latency = Histogram(
            "iot_collector_request_duration_seconds",
            "Datagram in to response out",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.flush_seconds = Histogram(
            "iot_collector_flush_duration_seconds",
            "Duration of one store write",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.batch_size = Histogram(
            "iot_collector_batch_size_events",
            "Events per store write",
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self.pending = Gauge(
            "iot_collector_pending_events",
            "Events waiting for the store",
            ["worker"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.store_up = Gauge(
            "iot_collector_store_up",
            "1 when the worker's store accepts writes",
            ["worker"],
            multiprocess_mode="livemin",
            registry=None,
        )

    def publish(self, stats: WorkerStats, pending: int, store_up: bool) -> None:
        for labels, count in stats.requests.items():
            self.requests.labels(*labels).inc(count)
        stats.requests.clear()
        if not stats.attached:
            stats.attach_events({o: self.events.labels(o) for o in _OUTCOMES})
        for attr in ("malformed", "duplicates", "overloaded", "retransmissions", "rate_limited"):
            count = getattr(stats, attr)
            if count:
                getattr(self, attr).inc(count)
                setattr(stats, attr, 0)
        for attr in ("latency", "flush_seconds", "batch_size"):
            _add_histogram(getattr(self, attr), getattr(stats, attr))
        self.pending.labels(self.worker).set(pending)
        self.store_up.labels(self.worker).set(1 if store_up else 0)


def _add_histogram(histogram: object, local: LocalHistogram) -> None:
    """Add local bucket counts to a prometheus Histogram.

    prometheus-client has no public bulk-observe; its per-bucket values are
    `_buckets[i]` (non-cumulative, the exposition sums them) and `_sum`. The metrics
    tests pin this against a scrape, so a client change that breaks it fails loudly.
    """
    counts, total = local.take()
    if not any(counts):
        return
    buckets = histogram._buckets  # type: ignore[attr-defined]
    for i, count in enumerate(counts):
        if count:
            buckets[i].inc(count)
    histogram._sum.inc(total)  # type: ignore[attr-defined]


class SupervisorMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter

        self.restarts = Counter(
            "iot_collector_worker_restarts", "Workers restarted after dying", registry=None
        )


class _BuildInfo:
    """`iot_collector_build_info{version, python}` 1: which build a target runs."""

    def collect(self) -> list[Any]:
        import platform

        from prometheus_client.core import GaugeMetricFamily

        from collector import __version__

        family = GaugeMetricFamily(
            "iot_collector_build_info",
            "The collector's version and Python; always 1",
            labels=["version", "python"],
        )
        family.add_metric([__version__, platform.python_version()], 1.0)
        return [family]


class SpoolMetrics:
    """The spool's gauges and counters (collector/spool.py), one set per worker.

    Published by the spooling sink itself once a second: the spool is the sink's
    business, and the worker's publish path needs no change for it.
    """

    def __init__(self, worker: int) -> None:
        from prometheus_client import Counter, Gauge

        self.worker = str(worker)
        self.events = Gauge(
            "iot_collector_spool_events",
            "Events waiting in the spool for the store",
            ["worker"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.bytes = Gauge(
            "iot_collector_spool_bytes",
            "Bytes of spooled events (pending and dead letters) counted against the limit",
            ["worker"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.dead = Gauge(
            "iot_collector_spool_dead_letters",
            "Events in the spool's dead-letter table",
            ["worker"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.oldest = Gauge(
            "iot_collector_spool_oldest_event_age_seconds",
            "Age of the oldest event waiting in the spool (0 when empty)",
            ["worker"],
            multiprocess_mode="livemax",
            registry=None,
        )
        self.spooled = Counter(
            "iot_collector_spool_spooled_events",
            "Events written to the spool instead of the store",
            registry=None,
        )
        self.forwarded = Counter(
            "iot_collector_spool_forwarded_events",
            "Spooled events settled in the store (stored or already there)",
            registry=None,
        )
        self.dead_lettered = Counter(
            "iot_collector_spool_dead_lettered_events",
            "Spooled events the store rejected, moved to the dead-letter table",
            registry=None,
        )
        self.refused = Counter(
            "iot_collector_spool_refused_events",
            "Events neither store nor spool could take (spool full or failing): 5.03",
            registry=None,
        )
        self._last: dict[str, int] = {}

    def publish(self, sink: object) -> None:
        snap = sink.snapshot()  # type: ignore[attr-defined]
        self.events.labels(self.worker).set(snap["events"])
        self.bytes.labels(self.worker).set(snap["bytes"])
        self.dead.labels(self.worker).set(snap["dead_letters"])
        self.oldest.labels(self.worker).set(snap["oldest_age_s"])
        for name in ("spooled", "forwarded", "dead_lettered", "refused"):
            delta = snap[name] - self._last.get(name, 0)
            if delta > 0:
                getattr(self, name).inc(delta)
            self._last[name] = snap[name]


def render_metrics() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_BuildInfo())
    return generate_latest(registry), CONTENT_TYPE_LATEST
