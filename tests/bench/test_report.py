"""The capacity rule and the tables built from run summaries."""

from __future__ import annotations

from typing import Any

import pytest
from loadgen import report
from loadgen.generator import LoadSpec
from loadgen.histogram import LogHistogram


def raw(
    latencies_us: list[int], sent: int, codes: dict[str, int], timeouts: int = 0
) -> dict[str, Any]:
    h = LogHistogram()
    h.record_many(latencies_us)
    lag = LogHistogram()
    lag.record_many([10] * sent)
    answered = sum(codes.values())
    return {
        "measured_from": 0.0,
        "latency": h.to_dict(),
        "lag": lag.to_dict(),
        "codes": codes,
        "sent": sent,
        "answered": answered,
        "ok": sum(n for c, n in codes.items() if c.startswith("2.")),
        "timeouts": timeouts,
        "retransmissions": 0,
        "send_errors": 0,
        "icmp_errors": 0,
        "late_responses": 0,
        "separate_responses": 0,
        "rst": 0,
        "stale": 0,
        "cpu_s": 0.01,
        "sent_total": sent,
        "last_send": 1.0,
    }


SPEC = LoadSpec(host="127.0.0.1", port=1, rate=100.0, duration=1.0, warmup=0.0)


def test_a_clean_run_within_the_bound_passes() -> None:
    run = report.summarize([raw([1000] * 100, 100, {"2.01": 100})], SPEC, "x", "echo", 1)
    assert run["latency_ms"]["p99"] is not None and run["latency_ms"]["p99"] < 1.1
    assert report.passes(run, p99_bound_ms=5)
    assert not report.passes(run, p99_bound_ms=0.5)


def test_errors_or_timeouts_fail_whatever_the_latency() -> None:
    overloaded = report.summarize(
        [raw([1000] * 100, 100, {"2.01": 90, "5.03": 10})], SPEC, "x", "collector", 1
    )
    assert not report.passes(overloaded, p99_bound_ms=100)
    lost = report.summarize([raw([1000] * 95, 100, {"2.01": 95}, timeouts=5)], SPEC, "x", "c", 1)
    assert not report.passes(lost, p99_bound_ms=100)


def test_a_generator_that_did_not_offer_the_load_fails() -> None:
    short = report.summarize([raw([1000] * 50, 50, {"2.01": 50})], SPEC, "x", "echo", 1)
    assert not report.passes(short, p99_bound_ms=100)
    assert not short["generator_kept_up"]


def test_tables_show_every_configuration() -> None:
    a = report.summarize([raw([1000] * 100, 100, {"2.01": 100})], SPEC, "1 replica", "c", 1)
    b = report.summarize([raw([500] * 100, 100, {"2.01": 100})], SPEC, "3 replicas", "c", 3)
    side = report.side_by_side([a, b])
    assert "| latency (ms) | 1 replica | 3 replicas |" in side
    assert "| p99 | 1.00 | 0.50 |" in side
    table = report.runs_table([a, b])
    assert table.count("\n") == 3


def test_processes_merge_into_one_run() -> None:
    """Two generator processes' shares: counters and codes add, histograms merge (the
    percentiles are the union's), timelines add slot by slot, CPU adds."""
    slow = raw([20_000] * 10, 50, {"2.01": 10})
    fast = raw([1000] * 90, 50, {"2.01": 88, "5.03": 2})
    slow.update(timeline=[5, 5, 0], wall_s=1.0, cpu_s=0.9, runq_wait_s=0.05, start=0.0)
    fast.update(timeline=[1, 2, 3, 4], wall_s=1.0, cpu_s=0.2, runq_wait_s=0.3, start=0.0)
    m = report.merge([slow, fast])
    assert m["sent"] == 100 and m["answered"] == 100 and m["ok"] == 98
    assert m["codes"] == {"2.01": 98, "5.03": 2}
    assert m["timeline"] == [6, 7, 3, 4]
    assert m["cpu_s"] == pytest.approx(1.1)
    assert m["cpu_share"] == pytest.approx(0.9) and m["runq_share"] == pytest.approx(0.3)
    assert m["latency"].count == 100 and m["latency"].max == 20_000
    two = SPEC.__class__(**{**SPEC.__dict__, "procs": 2})
    run = report.summarize([slow, fast], two, "x", "echo", 1)
    assert run["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.01)
    assert run["latency_ms"]["p99"] == pytest.approx(20.0, rel=0.01)
    assert run["generator_saturated"]  # one process was on a CPU 90% of the run
    assert report.generator_limited(run)
    assert run["generator_cpu_us_per_request"] == pytest.approx(11_000)


def test_a_stalling_server_shows_its_stalls_and_its_rate_between_them() -> None:
    # 10 slots per second: 1 s at 1000/s, a 0.5 s pause, 1 s at 1000/s, a short dip
    timeline = [100] * 10 + [0] * 5 + [100] * 10 + [3] + [100] * 4
    st = report.stalls(timeline, 10, 0, len(timeline))
    assert st["count"] == 1  # the one-slot dip is not a stall
    assert st["stalled_s"] == pytest.approx(0.5) and st["longest_s"] == pytest.approx(0.5)
    assert st["between_rate"] == pytest.approx(1000 * 24 / 25 + 3 / 25 * 10, rel=0.01)
    assert st["overall_rate"] < st["between_rate"]
    steady = report.stalls([100] * 20, 10, 0, 20)
    assert steady["count"] == 0 and steady["between_rate"] == steady["overall_rate"] == 1000


def test_spread_is_median_min_max() -> None:
    assert report.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert report.spread([1.0, 2.0])["median"] == 1.5
    assert report.spread([])["median"] is None
