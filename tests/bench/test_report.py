"""The capacity rule and the tables built from run summaries."""

from __future__ import annotations

from typing import Any

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
