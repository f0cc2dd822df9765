"""The supervisor's HTTP endpoint: /healthz, /readyz and Prometheus /metrics
(multiprocess mode: workers publish once a second, so counters are polled)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import coap
from coap import Code

from .conftest import Collector, event, free_tcp_port, start_collector

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    srv = start_collector(
        tmp_path_factory.mktemp("metrics"),
        workers=2,
        metrics_host="127.0.0.1",
        metrics_port=free_tcp_port(),
    )
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


def get(server: Collector, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.flags['metrics_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def samples(server: Collector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(server, "/metrics")
    assert status == 200
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            out[key] = out.get(key, 0.0) + s.value
    return out


def value(server: Collector, name: str, **labels: str) -> float:
    return samples(server).get((name, frozenset(labels.items())), 0.0)


def poll(server: Collector, name: str, target: float, **labels: str) -> float:
    """Wait (up to 8 s) until the metric reaches `target`; workers publish once a second."""
    deadline = time.monotonic() + 8.0
    while True:
        got = value(server, name, **labels)
        if got >= target or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def wait_ready(server: Collector, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status, _ = get(server, "/readyz")
        if status == 200 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_healthz_and_readyz(server: Collector) -> None:
    assert get(server, "/healthz") == (200, "ok\n")
    assert wait_ready(server) == 200
    assert get(server, "/nope")[0] == 404


REQUESTS = "iot_collector_requests_total"
POST_CREATED = {"code": "2.01", "method": "POST", "path": "/events"}


def test_request_and_event_counters_move(server: Collector) -> None:
    before_req = value(server, REQUESTS, **POST_CREATED)
    before_ev = value(server, "iot_collector_events_total", outcome="stored")
    with server.client() as client:
        for _ in range(5):
            assert client.post_events([event(), event()]).code == Code.CREATED
        assert client.request(Code.GET, "nope").code == Code.NOT_FOUND
    assert poll(server, REQUESTS, before_req + 5, **POST_CREATED) == before_req + 5
    assert (
        poll(server, "iot_collector_events_total", before_ev + 10, outcome="stored")
        == before_ev + 10
    )
    assert poll(server, REQUESTS, 1, code="4.04", method="GET", path="other") >= 1


def test_metric_names_follow_the_scheme(server: Collector) -> None:
    """One counter per fact: events_total{outcome} and no duplicated stored/rejected
    counters; the collector's own resends are named as such; build info is there."""
    names = {name for name, _labels in samples(server)}
    assert "iot_collector_events_stored_total" not in names
    assert "iot_collector_events_rejected_total" not in names
    assert "iot_collector_retransmissions_total" not in names
    assert "iot_collector_separate_response_retransmissions_total" in names
    from collector import __version__

    build = [labels for name, labels in samples(server) if name == "iot_collector_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0]


def test_the_event_alias_counts_as_the_events_resource(server: Collector) -> None:
    """`path` names the resource: /event (the thesis' path) is /events, for 2.01 and
    for the immediate answers alike."""
    created = value(server, REQUESTS, **POST_CREATED)
    refused = value(server, REQUESTS, code="4.15", method="POST", path="/events")
    wrong = value(server, REQUESTS, code="4.05", method="GET", path="/events")
    with server.client() as client:
        body = json.dumps(event()).encode()
        assert client.request(Code.POST, "event", body, fmt=50).code == Code.CREATED
        assert (
            client.request(Code.POST, "event", body, fmt=0).code == Code.UNSUPPORTED_CONTENT_FORMAT
        )
        assert client.request(Code.GET, "event").code == Code.METHOD_NOT_ALLOWED
    assert poll(server, REQUESTS, created + 1, **POST_CREATED) == created + 1
    assert (
        poll(server, REQUESTS, refused + 1, code="4.15", method="POST", path="/events")
        == refused + 1
    )
    assert poll(server, REQUESTS, wrong + 1, code="4.05", method="GET", path="/events") == wrong + 1
    assert value(server, "iot_collector_request_duration_seconds_count") > 0
    assert value(server, "iot_collector_batch_size_events_count") > 0


def test_duplicates_and_malformed_are_counted(server: Collector) -> None:
    before_dup = value(server, "iot_collector_duplicates_total")
    before_bad = value(server, "iot_collector_malformed_datagrams_total")
    with server.client() as client:
        msg = client.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
        for _ in range(5):
            assert client.exchange_raw(coap.encode(msg), 5.0) is not None
        assert client.exchange_raw(b"\x49\x01\x00\x01", 0.5) == b"\x70\x00\x00\x01"
    assert poll(server, "iot_collector_duplicates_total", before_dup + 4) == before_dup + 4
    assert poll(server, "iot_collector_malformed_datagrams_total", before_bad + 1) == before_bad + 1


def test_worker_restart_is_counted_and_readiness_returns(server: Collector) -> None:
    before = value(server, "iot_collector_worker_restarts_total")
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    assert poll(server, "iot_collector_worker_restarts_total", before + 1) == before + 1
    assert wait_ready(server) == 200
    assert victim not in server.workers()
    with server.client() as client:
        assert client.post_events(event()).code == Code.CREATED


def test_readyz_is_503_while_draining(collector: Callable[..., Collector]) -> None:
    import sqlite3

    server = collector(metrics_host="127.0.0.1", metrics_port=free_tcp_port(), drain_timeout=5)
    assert wait_ready(server) == 200
    # Keep the worker busy draining: one event waits on a held write lock.
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with server.client() as client:
            client.send(
                coap.encode(client.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50))
            )
            time.sleep(0.2)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3
            status = 200
            while status == 200 and time.monotonic() < deadline:
                status, _ = get(server, "/readyz")
            assert status == 503
            assert get(server, "/healthz")[0] == 200
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert server.proc.wait(10) == 0


def test_dedup_memory_is_capped(collector: Callable[..., Collector]) -> None:
    """With --dedup-capacity 8, the oldest exchange is forgotten once 8 newer ones are
    remembered: its retransmission is processed as new (not counted as a duplicate),
    while a recent one is still recognised."""
    server = collector(dedup_capacity=8, metrics_host="127.0.0.1", metrics_port=free_tcp_port())
    with server.client() as client:
        sent = []
        for _ in range(12):
            msg = client.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            assert client.transact(msg).code == Code.CREATED
            sent.append(coap.encode(msg))
        oldest, newest = sent[0], sent[-1]
        assert client.exchange_raw(newest, 2.0) is not None
        assert poll(server, "iot_collector_duplicates_total", 1) == 1
        assert client.exchange_raw(oldest, 2.0) is not None  # answered (processed anew)
        time.sleep(1.5)  # one publish period
        assert value(server, "iot_collector_duplicates_total") == 1
