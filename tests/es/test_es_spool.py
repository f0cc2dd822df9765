"""The durable spool end to end: `iot-collector serve --spool-path` against a real
Elasticsearch reached through a TCP forwarder (tests/es/proxy.py) that cuts the path.

Outage length: the issue's 60 s outage is SPOOL_OUTAGE_S=60 (run once, figures in the
README); CI uses 15 s by default. The property under test (no 5.03 while the spool has
room, every ack in Elasticsearch once, the spool empty afterwards) does not depend on
the length: only the amount spooled does, and 15 s at this load spools thousands of
events in many batches, through the same paths.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from coap import Code, Message, OptionNumber, Type
from collector.events import scoped_id
from tests.es.test_es_collector import (
    OLD_DAY,
    OLD_DAY_ISO,
    Load,
    body,
    client_ids_present,
    wait_for,
)
from tests.server.conftest import free_tcp_port

from .helpers import CoapClient, Collector, start_collector
from .proxy import TcpProxy

pytestmark = [pytest.mark.es, pytest.mark.integration]

OUTAGE_S = float(os.environ.get("SPOOL_OUTAGE_S", "15"))


@pytest.fixture
def proxy(es_url: str):
    port = int(es_url.rsplit(":", 1)[1])
    p = TcpProxy(port)
    yield p
    p.close()


@pytest.fixture
def spooled(tmp_path: Path, proxy: TcpProxy, es_prefix: str):
    started: list[Collector] = []

    def make(**flags: Any) -> Collector:
        opts: dict[str, Any] = {"spool_path": str(tmp_path / "spool"), "store_wait": 5}
        opts.update(flags)
        server = start_collector(tmp_path / f"c{len(started)}", proxy.url, es_prefix, **opts)
        started.append(server)
        return server

    yield make
    for server in started:
        server.terminate()


def spool_counts(directory: Path) -> tuple[int, int]:
    """(pending events, dead letters) over every worker's spool file, read-only."""
    pending = dead = 0
    for path in directory.glob("spool-*.db"):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            pending += conn.execute("SELECT COALESCE(SUM(events), 0) FROM batches").fetchone()[0]
            dead += conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    return pending, dead


def health_status(port: int) -> tuple[int, bytes]:
    """GET /health padded with an elective option, so the status word fits (§11.3)."""
    with CoapClient(port) as client:
        msg = Message(
            Type.CON,
            Code.GET,
            client.next_mid(),
            os.urandom(4),
            ((int(OptionNumber.URI_PATH), b"health"), (65004, b"p" * 48)),
        )
        reply = client.transact(msg, timeout=5)
    assert reply is not None
    return reply.code, reply.payload


def stored_once(es: Elasticsearch, prefix: str, ids: list[str]) -> tuple[set[str], int]:
    """The acked ids present, and how many documents carry them (all indices)."""
    present = client_ids_present(es, f"{prefix}-*", ids)
    keys = [scoped_id("default", "e2e", i) for i in ids]  # body()'s stored ids
    hits = 0
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        hits += es.count(index=f"{prefix}-*", query={"ids": {"values": chunk}})["count"]
    return present, hits


def test_outage_under_load_is_absorbed_by_the_spool_and_drained_after(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    metrics_port = free_tcp_port()
    server = spooled(metrics_port=metrics_port)
    load = Load(server.port, devices=8, max_seconds=OUTAGE_S + 60).start()
    # SPOOL_OUTAGE_COMPARE=1: a collector without spool on the same path, for the
    # README's figures (what devices see without one).
    plain_load = None
    if os.environ.get("SPOOL_OUTAGE_COMPARE") == "1":
        plain = start_collector(tmp_path / "plain", proxy.url, es_prefix, store_wait=5)
        plain_load = Load(plain.port, devices=8, max_seconds=OUTAGE_S + 60).start()
    try:
        assert wait_for(lambda: load.count(Code.CREATED) >= 200, 30)
        proxy.down()
        cut = time.monotonic()
        time.sleep(min(3.0, OUTAGE_S / 2))
        code, payload = health_status(server.port)
        assert (code, payload) == (Code.CONTENT, b"1")  # HEALTH_DEGRADED: spooling
        metrics = _scrape(metrics_port)
        assert _metric(metrics, "iot_collector_spool_events") > 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut)))
        during = load.count(Code.CREATED)
        proxy.up()
        back = time.monotonic()
        assert wait_for(lambda: spool_counts(tmp_path / "spool")[0] == 0, 120, step=0.5)
        drained = time.monotonic() - back
        time.sleep(1.0)
    finally:
        load.finish()
        if plain_load is not None:
            plain_load.finish()
            plain.terminate()
    if plain_load is not None:
        from tests.es.test_es_cluster import longest_5_03_stretch

        print(
            f"outage {OUTAGE_S:g} s: without spool {plain_load.count(Code.SERVICE_UNAVAILABLE)} "
            f"answers 5.03, longest stretch {longest_5_03_stretch(plain_load):.1f} s; with spool "
            f"{load.count(Code.SERVICE_UNAVAILABLE)} answers 5.03, {len(load.acked())} acked, "
            f"drained {drained:.1f} s after the store returned"
        )
    spooled_total = _metric(_scrape(metrics_port), "iot_collector_spool_spooled_events_total")
    assert spooled_total > 0, "nothing went through the spool"
    assert load.count(Code.SERVICE_UNAVAILABLE) == 0
    assert all(a[3] == Code.CREATED for a in load.answers), {a[3] for a in load.answers}
    acked = load.acked()
    assert during > 200 and len(acked) == len(set(acked))
    present, hits = stored_once(es, es_prefix, acked)
    assert present == set(acked), f"{len(set(acked) - present)} acknowledged ids missing"
    assert hits == len(acked)
    assert wait_for(lambda: health_status(server.port)[1] == b"0", 10, step=0.5)


def test_kill_9_of_the_worker_while_it_forwards_loses_and_doubles_nothing(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    server = spooled(batch_max=50)
    proxy.down()
    load = Load(server.port, devices=8, max_requests=3000, max_seconds=60).start()
    load.stop.wait(8)
    load.finish()
    acked = load.acked()
    assert len(acked) >= 300 and load.count(Code.SERVICE_UNAVAILABLE) == 0
    assert spool_counts(tmp_path / "spool")[0] == len(acked)
    # A slow store: each forward takes a while, so the kills land mid-forward.
    proxy.delay = 0.3
    proxy.up()
    kills = 0
    for _ in range(3):
        if not wait_for(lambda: 0 < spool_counts(tmp_path / "spool")[0] < len(acked), 30, 0.05):
            break
        (worker,) = server.workers()
        os.kill(worker, signal.SIGKILL)
        kills += 1
        assert wait_for(lambda w=worker: server.workers() not in ([], [w]), 30)
    assert kills >= 1
    proxy.delay = 0.0
    assert wait_for(lambda: spool_counts(tmp_path / "spool")[0] == 0, 90, step=0.5)
    present, hits = stored_once(es, es_prefix, acked)
    assert present == set(acked) and hits == len(acked)


def test_a_full_spool_answers_5_03_with_max_age_and_keeps_what_it_acked(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    server = spooled(spool_max_bytes="32k")
    proxy.down()
    acked: list[str] = []
    refused = None
    with CoapClient(server.port) as client:
        for _ in range(1000):
            event = body()
            reply = client.post_json(event, timeout=5)
            assert reply is not None
            if reply.code == Code.CREATED:
                acked.append(event["id"])
            else:
                refused = reply
                break
    assert refused is not None and refused.code == Code.SERVICE_UNAVAILABLE
    assert dict(refused.options).get(int(OptionNumber.MAX_AGE)), "5.03 without Max-Age"
    assert 50 < len(acked) < 1000
    proxy.up()
    assert wait_for(lambda: spool_counts(tmp_path / "spool")[0] == 0, 60, step=0.5)
    present, hits = stored_once(es, es_prefix, acked)
    assert present == set(acked) and hits == len(acked)
    with CoapClient(server.port) as client:  # room again: 2.01
        reply = client.post_json(body(), timeout=10)
    assert reply is not None and reply.code == Code.CREATED


def test_events_elasticsearch_rejects_item_by_item_land_in_the_dead_letter_table(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    # A day index whose mapping disagrees with the template: `sender` is a number.
    es.indices.create(
        index=f"{es_prefix}-{OLD_DAY:%Y.%m.%d}",
        mappings={"properties": {"sender": {"type": "long"}}},
    )
    server = spooled()
    proxy.down()
    bad = body(timestamp=OLD_DAY_ISO, sender="not-a-number")
    good = body()
    with CoapClient(server.port) as client:
        assert [client.post_json(e, timeout=10).code for e in (bad, good)] == [Code.CREATED] * 2
    proxy.up()
    assert wait_for(lambda: spool_counts(tmp_path / "spool") == (0, 1), 60, step=0.5)
    (path,) = (tmp_path / "spool").glob("spool-*.db")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        ((event_id, reason),) = conn.execute("SELECT event_id, reason FROM dead_letters").fetchall()
    assert event_id == scoped_id("default", "not-a-number", bad["id"]) and "sender" in reason
    assert client_ids_present(es, f"{es_prefix}-*", [good["id"]]) == {good["id"]}
    assert client_ids_present(es, f"{es_prefix}-*", [bad["id"]], bad["sender"]) == set()


def test_sigterm_with_elasticsearch_down_keeps_the_spool_and_the_next_start_drains_it(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    server = spooled(drain_timeout=2)
    proxy.down()
    events = [body() for _ in range(20)]
    with CoapClient(server.port) as client:
        assert all(client.post_json(e, timeout=10).code == Code.CREATED for e in events)
    assert server.terminate() == 0
    assert spool_counts(tmp_path / "spool")[0] == 20
    proxy.up()
    spooled()  # a new process on the same spool directory
    assert wait_for(lambda: spool_counts(tmp_path / "spool")[0] == 0, 60, step=0.5)
    ids = [e["id"] for e in events]
    assert client_ids_present(es, f"{es_prefix}-*", ids) == set(ids)


def test_a_store_slower_than_ack_delay_is_spooled_not_waited_for(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    server = spooled(ack_delay=0.2)
    # A store that takes far longer than the device waits: a 2.01 within the device's
    # timeout can only come from the spool.
    proxy.delay = 30.0
    event = body()
    with CoapClient(server.port) as client:
        reply = client.post_json(event, timeout=10)
    assert reply is not None and reply.code == Code.CREATED
    assert spool_counts(tmp_path / "spool")[0] == 1
    proxy.delay = 0.0
    assert wait_for(lambda: client_ids_present(es, f"{es_prefix}-*", [event["id"]]), 60, step=0.5)


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_with_elasticsearch_up_drains_the_spool_before_exiting(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    """Scale-down: the pod's spool goes into Elasticsearch before the process exits."""
    server = spooled(drain_timeout=10)
    proxy.down()
    events = [body() for _ in range(30)]
    with CoapClient(server.port) as client:
        assert all(client.post_json(e, timeout=10).code == Code.CREATED for e in events)
    time.sleep(6.0)  # the forwarder has backed off to its longest pause
    proxy.up()
    pending = spool_counts(tmp_path / "spool")[0]
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert pending == 30, "the forwarder drained before SIGTERM: nothing left to test"
    assert spool_counts(tmp_path / "spool")[0] == 0
    ids = [e["id"] for e in events]
    assert client_ids_present(es, f"{es_prefix}-*", ids) == set(ids)


def test_each_worker_spools_into_its_own_file_and_drains_it(
    spooled: Any, proxy: TcpProxy, es: Elasticsearch, es_prefix: str, tmp_path: Path
):
    server = spooled(workers=2)
    proxy.down()
    events = []
    for _ in range(8):  # eight source ports: the kernel spreads them over both workers
        with CoapClient(server.port) as client:
            for _ in range(5):
                e = body()
                assert client.post_json(e, timeout=10).code == Code.CREATED
                events.append(e)
    files = sorted(p.name for p in (tmp_path / "spool").glob("spool-*.db"))
    assert files == ["spool-0.db", "spool-1.db"]
    assert spool_counts(tmp_path / "spool")[0] == 40
    proxy.up()
    assert wait_for(lambda: spool_counts(tmp_path / "spool")[0] == 0, 60, step=0.5)
    ids = [e["id"] for e in events]
    assert client_ids_present(es, f"{es_prefix}-*", ids) == set(ids)
