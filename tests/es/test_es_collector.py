"""End to end: CoAP over real UDP into `iot-collector serve`, stored in a real Elasticsearch.

The collector runs as a subprocess with the elasticsearch sink; the test speaks CoAP from
its own sockets and reads the index with the Python client. Load loops are bounded in
count and time and send to loopback only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import orjson
import pytest
from elasticsearch import Elasticsearch

from coap import Code, ContentFormat, OptionNumber, Type
from collector.events import scoped_id
from tests.server.conftest import COLLECTOR_BIN

from .helpers import (
    CoapClient,
    Collector,
    EsInstance,
    es_ids_present,
    free_port,
    start_collector,
)

pytestmark = [pytest.mark.es, pytest.mark.integration]

# Event times inside the accepted window (--max-event-age, default 7d): an hour ago,
# and noon of two days ago (a day of its own index, the mapping test's).
HOUR_AGO = datetime.fromtimestamp(int(time.time()) - 3600, tz=UTC)
HOUR_AGO_ISO = HOUR_AGO.strftime("%Y-%m-%dT%H:%M:%S.771Z")
OLD_DAY = datetime.fromtimestamp(time.time() - 2 * 86400, tz=UTC)
OLD_DAY_ISO = OLD_DAY.strftime("%Y-%m-%dT12:00:00.000Z")


def body(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "sender": "e2e",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
        "id": f"e2e-{uuid.uuid4().hex}",
    }
    event.update(overrides)
    return event


def client_ids_present(
    client: Elasticsearch, index: str, client_ids: list[str], sender: str = "e2e"
) -> set[str]:
    """Which of `body()`'s client ids are stored: by `_id`, the id scoped by namespace
    and sender (an older index may map the other fields dynamically)."""
    by_id = {scoped_id("default", sender, c): c for c in client_ids}
    return {by_id[i] for i in es_ids_present(client, index, list(by_id))}


def search(es: Elasticsearch, prefix: str, **term: Any) -> list[dict[str, Any]]:
    es.indices.refresh(index=f"{prefix}-*", allow_no_indices=True)
    res = es.search(index=f"{prefix}-*", query={"term": term}, size=100)
    return [h["_source"] | {"_id": h["_id"]} for h in res["hits"]["hits"]]


@pytest.fixture
def collector(tmp_path: Path, es_url: str, es_prefix: str):
    started: list[Collector] = []

    def make(url: str = es_url, prefix: str = es_prefix, **flags: Any) -> Collector:
        server = start_collector(tmp_path / f"c{len(started)}", url, prefix, **flags)
        started.append(server)
        return server

    yield make
    for server in started:
        server.terminate()


def test_json_cbor_senml_are_stored_with_their_values(
    collector: Any, es: Elasticsearch, es_prefix: str
):
    server = collector()
    tag = uuid.uuid4().hex[:8]
    as_json = body(origin=f"json-{tag}", timestamp=HOUR_AGO_ISO)
    as_cbor = body(origin=f"cbor-{tag}", payload={"type": "door", "value": True})
    now = time.time()
    senml_pack = [{"bn": f"senml-{tag}/", "bt": now, "n": "humidity", "v": 41.5, "u": "%RH"}]
    with CoapClient(server.port) as client:
        replies = [
            client.post_json(as_json),
            client.request(Code.POST, "events", cbor2.dumps(as_cbor), ContentFormat.CBOR),
            client.request(Code.POST, "events", orjson.dumps(senml_pack), ContentFormat.SENML_JSON),
        ]
    assert [r.code if r else None for r in replies] == [Code.CREATED] * 3

    (doc,) = search(es, es_prefix, origin=f"json-{tag}")
    assert doc["_id"] == scoped_id("default", "e2e", as_json["id"])
    assert doc["client_id"] == as_json["id"] and "identity" not in doc
    assert doc["@timestamp"] == int(HOUR_AGO.timestamp()) * 1000 + 771
    assert doc["payload"] == {"type": "temperature", "value": 15.5, "unit": "Cel"}
    assert doc["sender"] == "e2e" and doc["namespace"] == "default"
    assert doc["source"].startswith("127.0.0.1:")
    (doc,) = search(es, es_prefix, origin=f"cbor-{tag}")
    assert doc["payload"] == {"type": "door", "value_bool": True}
    (doc,) = search(es, es_prefix, origin=f"senml-{tag}")
    assert doc["payload"] == {"type": "humidity", "value": 41.5, "unit": "%RH"}
    assert abs(doc["@timestamp"] - now * 1000) <= 1
    # The template's types are in force for what the collector wrote.
    assert len(search(es, es_prefix, **{"payload.value_bool": True})) == 1
    es.indices.refresh(index=f"{es_prefix}-*")
    hits = es.search(
        index=f"{es_prefix}-*", query={"range": {"payload.value": {"gt": 41, "lt": 42}}}
    )
    assert [h["_source"]["origin"] for h in hits["hits"]["hits"]] == [f"senml-{tag}"]


def test_retransmissions_and_resent_ids_make_one_document_and_a_reused_id_409(
    collector: Any, es: Elasticsearch, es_prefix: str
):
    server = collector(ack_delay=1.0)
    event = body()
    with CoapClient(server.port) as client:
        msg = client.build(Code.POST, "events", orjson.dumps(event), ContentFormat.JSON)
        first = client.transact(msg)
        # Four retransmissions of the same CON (same MID): each gets the exchange's ACK
        # again, the piggybacked 2.01, or an empty ACK when the answer went separately.
        acks = []
        for _ in range(4):
            client.send(msg)
            acks.append(client.recv_for_mid(msg.mid, timeout=5.0))
    # Same idempotency key in brand-new exchanges (new MID, token, source port): the
    # same event is a duplicate (2.01), other content under it a conflict (4.09).
    with CoapClient(server.port) as other:
        again = other.post_json(event)
        reused = other.post_json(event | {"payload": {"type": "temperature", "value": 99.0}})
    assert first is not None and first.code == Code.CREATED
    expected = first.code if first.type == Type.ACK else Code.EMPTY
    assert [(a.type, a.code) if a else None for a in acks] == [(Type.ACK, expected)] * 4
    assert again is not None and again.code == Code.CREATED
    assert reused is not None and reused.code == Code.CONFLICT
    assert reused.payload == b"id: already used for another event"
    docs = search(es, es_prefix, client_id=event["id"])
    assert len(docs) == 1
    assert docs[0]["payload"]["value"] == 15.5


def test_mapping_rejected_event_gets_4_00_and_neighbours_are_stored(
    collector: Any, es: Elasticsearch, es_prefix: str
):
    # An index for OLD_DAY whose mapping disagrees with the template (made by hand or
    # by an older version): `sender` is a number there.
    es.indices.create(
        index=f"{es_prefix}-{OLD_DAY:%Y.%m.%d}",
        mappings={"properties": {"sender": {"type": "long"}}},
    )
    # A long batch window: while one bulk call is in flight the others wait for it and
    # share the next; whichever way they are batched, each is judged by its own items.
    server = collector(batch_ms=300, ack_delay=1.0)
    bad = body(timestamp=OLD_DAY_ISO, sender="not-a-number")
    goods = [body(), body(timestamp=OLD_DAY_ISO, sender="12345")]
    replies: dict[str, Any] = {}

    def post(event: dict[str, Any]) -> None:
        with CoapClient(server.port) as client:
            replies[event["id"]] = client.post_json(event)

    threads = [threading.Thread(target=post, args=(e,)) for e in (goods[0], bad, goods[1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies[bad["id"]].code == Code.BAD_REQUEST
    assert b"sender" in replies[bad["id"]].payload
    assert [replies[g["id"]].code for g in goods] == [Code.CREATED] * 2
    # By `_id`: that old index maps event_id dynamically (as text), not as a keyword.
    ids = [scoped_id("default", e["sender"], e["id"]) for e in (bad, *goods)]
    assert es_ids_present(es, f"{es_prefix}-*", ids) == set(ids[1:])


# --- load: many devices, each a socket with one request in flight -------------------


@dataclass
class Load:
    """Threads that each POST events in a loop from their own UDP socket."""

    port: int
    devices: int = 16
    max_seconds: float = 90.0
    max_requests: int = 200_000
    sent: list[tuple[float, str]] = field(default_factory=list)
    answers: list[tuple[float, float, str, int | None, int | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(self.devices):
            t = threading.Thread(target=self._device, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _device(self) -> None:
        give_up = time.monotonic() + self.max_seconds
        with CoapClient(self.port) as client:
            while not self.stop.is_set() and time.monotonic() < give_up:
                with self._lock:
                    if len(self.sent) >= self.max_requests:
                        return
                    event = body()
                    began = time.monotonic()
                    self.sent.append((began, event["id"]))
                reply = client.post_json(event, timeout=8.0)
                code = reply.code if reply else None
                max_age = None
                if reply is not None:
                    for number, value in reply.options:
                        if number == OptionNumber.MAX_AGE:
                            max_age = int.from_bytes(value, "big")
                with self._lock:
                    self.answers.append((began, time.monotonic(), event["id"], code, max_age))
                if code is None:
                    return  # the collector is gone
                if code != Code.CREATED:
                    time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def acked(self) -> list[str]:
        with self._lock:
            return [a[2] for a in self.answers if a[3] == Code.CREATED]

    def count(self, code: int) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a[3] == code)


def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_store_down_mid_load_answers_5_03_and_recovers_without_restart(
    collector: Any, private_es: EsInstance
):
    prefix = f"down{uuid.uuid4().hex[:8]}"
    server = collector(
        url=private_es.url,
        prefix=prefix,
        es_username="elastic",
        es_password=private_es.password,
    )
    load = Load(server.port).start()
    try:
        assert wait_for(lambda: load.count(Code.CREATED) >= 200, 30)
        stop_began = time.monotonic()
        private_es.stop(keep_data=True)
        stopped = time.monotonic()
        # Answers turn to 5.03 (with Max-Age) once the server is gone.
        assert wait_for(lambda: load.count(Code.SERVICE_UNAVAILABLE) >= 20, 10)
        time.sleep(2.0)  # then, a second after the outage began, nothing but 5.03
        before = [a for a in list(load.answers) if a[1] < stop_began]
        assert before and all(a[3] == Code.CREATED for a in before)
        late = [a for a in list(load.answers) if a[0] > stopped + 1.0]
        assert late and all(a[3] == Code.SERVICE_UNAVAILABLE for a in late)
        assert all(a[4] is not None and a[4] > 0 for a in late)
        with CoapClient(server.port) as client:
            health = client.request(Code.GET, "health", timeout=3)
        assert health is not None and health.code == Code.SERVICE_UNAVAILABLE
    finally:
        load.finish()
    # Back again: the same collector process stores again (the load is over: starting
    # Elasticsearch takes longer than a bounded load should run on a small box).
    private_es.start()
    after = body()
    with CoapClient(server.port) as client:
        give_up = time.monotonic() + 30
        reply = client.post_json(after)
        while (reply is None or reply.code != Code.CREATED) and time.monotonic() < give_up:
            time.sleep(0.2)
            reply = client.post_json(after)
    assert reply is not None and reply.code == Code.CREATED, "no 2.01 after ES came back"
    assert server.proc.poll() is None  # no restart happened
    acked = [*load.acked(), after["id"]]
    with private_es.client() as client:
        present = client_ids_present(client, f"{prefix}-*", acked)
    assert set(acked) == present, f"{len(set(acked) - present)} acked ids missing"


def test_sigterm_under_load_keeps_every_acked_event(
    collector: Any, es: Elasticsearch, es_prefix: str
):
    server = collector(drain_timeout=10)
    load = Load(server.port).start()
    try:
        assert wait_for(lambda: load.count(Code.CREATED) >= 300, 30)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        load.finish()
    acked = load.acked()
    assert len(acked) >= 300
    assert set(acked) == client_ids_present(es, f"{es_prefix}-*", acked)


def run_serve(*flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    argv = [str(COLLECTOR_BIN), "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    argv += ["--metrics-port", "0", "--sink", "elasticsearch", *flags]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_serve_exits_with_one_line_when_es_is_unreachable():
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_serve("--es-url", dead, "--store-wait", "1")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"elasticsearch at {dead}: connection refused" in lines[0]
    assert "Traceback" not in done.stderr


def test_serve_exits_with_one_line_when_the_password_is_wrong(private_es: EsInstance):
    done = run_serve(
        "--es-url", private_es.url, "--es-username", "elastic", "--es-password", "wrong-pw"
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "authentication failed (401) for user 'elastic'" in lines[0]
    assert "wrong-pw" not in done.stderr
