"""Regression: with --metrics-port 0 the worker's histograms cost a call, not a bisect."""

from __future__ import annotations

from collector.metrics import LocalHistogram, UnobservedHistogram, WorkerStats


def test_histograms_keep_nothing_when_metrics_are_off() -> None:
    off = WorkerStats(histograms=False)
    for h in (off.latency, off.flush_seconds, off.batch_size):
        assert isinstance(h, UnobservedHistogram)
        h.observe(0.25)
        assert h.take() == ([0], 0.0)
    on = WorkerStats()
    assert type(on.latency) is LocalHistogram
    on.latency.observe(0.25)
    counts, total = on.latency.take()
    assert sum(counts) == 1 and total == 0.25
