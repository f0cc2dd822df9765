"""A three-node Elasticsearch (scripts/es.sh, ES_NODES=3) under node failures.

Two collectors run side by side on the same cluster and index, each under its own
bounded load: one without a spool (what devices see: the longest stretch of 5.03s is
printed) and one with a spool (no device may see a 5.03). After each fault, every
acknowledged id of both is in Elasticsearch exactly once.

Marked `cluster` (three JVMs, minutes on a small box); `make test` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from coap import Code
from collector.events import scoped_id
from tests.es.test_es_collector import Load, client_ids_present, wait_for

from .helpers import ES_SH, Collector, free_port, start_collector

# Node restarts take a minute each on a loaded 2-core box: a longer limit than the
# suite's 300 s.
pytestmark = [
    pytest.mark.es,
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.timeout(900),
]


@dataclass
class Cluster:
    port: int  # the first node's HTTP port: names the cluster for es.sh
    state_dir: str
    urls: list[str]

    def es(self, *args: str, timeout: float = 300) -> str:
        env = dict(os.environ, ES_PORT=str(self.port), ES_STATE_DIR=self.state_dir)
        done = subprocess.run(
            ["bash", str(ES_SH), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"es.sh {args} failed: {done.stderr[-2000:]}")
        return done.stdout

    def node_of(self, name: str) -> int:
        """1-based node number of the node called `name` (es-<http port>)."""
        return [f"es-{u.rsplit(':', 1)[1]}" for u in self.urls].index(name) + 1


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A cluster of our own; or, with ES_CLUSTER_PORT and ES_CLUSTER_STATE_DIR, one
    already started by `ES_NODES=3 bash scripts/es.sh start` (kept running)."""
    given = os.environ.get("ES_CLUSTER_PORT")
    if given:
        c = Cluster(int(given), os.environ["ES_CLUSTER_STATE_DIR"], [])
        c.urls = c.es("url").strip().split(",")
        yield c
        return
    port = free_port()
    state = f"/tmp/iot-collector-es-cluster-{uuid.uuid4().hex[:8]}"
    c = Cluster(port, state, [])
    try:
        c.urls = _start(c).strip().splitlines()[-1].split(",")
        assert len(c.urls) == 3
        yield c
    finally:
        try:
            c.es("stop", timeout=180)
        finally:
            shutil.rmtree(state, ignore_errors=True)


def _start(c: Cluster) -> str:
    env = dict(os.environ, ES_PORT=str(c.port), ES_STATE_DIR=c.state_dir, ES_NODES="3")
    done = subprocess.run(
        ["bash", str(ES_SH), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"cluster start failed: {done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Elasticsearch]:
    es = Elasticsearch(cluster.urls, request_timeout=30, max_retries=3, retry_on_timeout=True)
    yield es
    es.close()


@pytest.fixture
def pair(tmp_path: Path, cluster: Cluster, client: Elasticsearch):
    """Two collectors on the cluster, one prefix: (without spool, with spool)."""
    prefix = f"c{uuid.uuid4().hex[:12]}"
    url = ",".join(cluster.urls)
    plain = start_collector(tmp_path / "plain", url, prefix)
    spooled = start_collector(
        tmp_path / "spooled", url, prefix, spool_path=str(tmp_path / "spool"), ack_delay=0.5
    )
    servers: list[Collector] = [plain, spooled]
    yield prefix, plain, spooled, tmp_path / "spool"
    for s in servers:
        s.terminate()
    client.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
    client.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")


def longest_5_03_stretch(load: Load) -> float:
    """Seconds from the first to the last answer of the longest run of 5.03s in a row."""
    answers = sorted(load.answers, key=lambda a: a[1])
    longest = 0.0
    run_start: float | None = None
    for began, ended, _id, code, _age in answers:
        if code == Code.SERVICE_UNAVAILABLE:
            run_start = began if run_start is None else run_start
            longest = max(longest, ended - run_start)
        else:
            run_start = None
    return longest


def check_once(client: Elasticsearch, prefix: str, acked: list[str]) -> None:
    assert len(acked) == len(set(acked))
    present = client_ids_present(client, f"{prefix}-*", acked)
    assert present == set(acked), f"{len(set(acked) - present)} acknowledged ids missing"
    keys = [scoped_id("default", "e2e", i) for i in acked]  # the stored ids of body()'s
    hits = 0
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        hits += client.count(index=f"{prefix}-*", query={"ids": {"values": chunk}})["count"]
    assert hits == len(acked), "an acknowledged id is stored twice"


def spool_empty(directory: Path) -> bool:
    import sqlite3
    from contextlib import closing

    for path in directory.glob("spool-*.db"):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0]:
                return False
    return True


def report(name: str, **figures: Any) -> None:
    """Figures for the README/issue note: printed, and appended to $CLUSTER_REPORT."""
    line = json.dumps({"case": name, **figures})
    print(line)
    path = os.environ.get("CLUSTER_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def test_template_keeps_one_replica_on_the_cluster(pair: Any, client: Elasticsearch):
    prefix, plain, _spooled, _ = pair
    with plain.client() as device:
        assert (
            device.post_events(  # the first event creates the index: slow when loaded
                [{"sender": "s", "origin": "o", "payload": {"type": "t", "value": 1}}], timeout=60
            ).code
            == Code.CREATED
        )
    settings = client.indices.get_settings(index=f"{prefix}-*")
    (index,) = settings.body.values()
    assert index["settings"]["index"]["number_of_replicas"] == "1"
    assert (
        client.cluster.health(index=f"{prefix}-*", wait_for_status="green", timeout="60s")["status"]
        == "green"
    )


def run_fault(pair: Any, client: Elasticsearch, fault: Any, name: str) -> None:
    prefix, plain, spooled, spool_dir = pair
    loads = [Load(plain.port, devices=4, max_seconds=600).start(),
             Load(spooled.port, devices=4, max_seconds=600).start()]  # fmt: skip
    began = time.monotonic()
    try:
        assert wait_for(lambda: all(load.count(Code.CREATED) >= 100 for load in loads), 60)
        fault()
        time.sleep(3.0)  # load on the recovered cluster too
    finally:
        for load in loads:
            load.finish()
    assert wait_for(lambda: spool_empty(spool_dir), 120, step=0.5)
    without, with_spool = loads
    report(
        name,
        seconds=round(time.monotonic() - began, 1),
        without_spool={
            "acked": len(without.acked()),
            "answered_5_03": without.count(Code.SERVICE_UNAVAILABLE),
            "longest_5_03_stretch_s": round(longest_5_03_stretch(without), 2),
        },
        with_spool={
            "acked": len(with_spool.acked()),
            "answered_5_03": with_spool.count(Code.SERVICE_UNAVAILABLE),
            "unanswered": sum(1 for a in with_spool.answers if a[3] is None),
        },
    )
    assert with_spool.count(Code.SERVICE_UNAVAILABLE) == 0, "a device saw 5.03 with the spool"
    check_once(client, prefix, without.acked() + with_spool.acked())


def test_rolling_restart_of_all_three_nodes(pair: Any, cluster: Cluster, client: Elasticsearch):
    prefix = pair[0]

    def rolling_restart() -> None:
        for n in (1, 2, 3):
            client.cluster.health(index=f"{prefix}-*", wait_for_status="green", timeout="120s")
            cluster.es("node-stop", str(n), timeout=120)
            cluster.es("node-start", str(n), timeout=300)
        client.cluster.health(index=f"{prefix}-*", wait_for_status="green", timeout="120s")

    run_fault(pair, client, rolling_restart, "rolling restart of 3 nodes")


def test_kill_9_of_the_node_holding_the_primary(pair: Any, cluster: Cluster, client: Elasticsearch):
    prefix = pair[0]

    def kill_primary_holder() -> None:
        assert wait_for(
            lambda: bool(client.cat.shards(index=f"{prefix}-*", format="json").body), 30
        )
        # Both copies started first: killing the only started copy loses the index,
        # which is not the node failure this test is about.
        health = client.cluster.health(index=f"{prefix}-*", wait_for_status="green", timeout="120s")
        assert health["status"] == "green"
        shards = client.cat.shards(index=f"{prefix}-*", format="json", h="prirep,node").body
        (primary,) = [s["node"] for s in shards if s["prirep"] == "p"]
        n = cluster.node_of(primary)
        cluster.es("node-kill", str(n))
        time.sleep(5.0)  # the cluster promotes the replica while the load runs
        # The node stays down (the last test of the module: a restart costs a minute
        # on a small box); the promoted primary serves the reads below.

    run_fault(pair, client, kill_primary_holder, "kill -9 of the primary's node")
