"""The elasticsearch sink against a real Elasticsearch (no collector process).

Each test runs its own event loop with asyncio.run: the sink is created, started and
closed inside it, as a worker would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from elasticsearch import Elasticsearch

from collector.estemplate import MAPPINGS
from collector.events import Event
from collector.sinks.base import Outcome, Result, StoreUnavailable
from collector.sinks.elasticsearch import ElasticsearchSink

from .helpers import EsInstance, free_port, sink_config

pytestmark = [pytest.mark.es, pytest.mark.integration]

T = TypeVar("T")

NOW_MS = int(time.time() * 1000)
DAY_2001_01_01 = int(datetime(2001, 1, 1, 12, tzinfo=UTC).timestamp() * 1000)
DAY_2001_01_02 = int(datetime(2001, 1, 2, 12, tzinfo=UTC).timestamp() * 1000)


def event(value: float | str | bool = 15.5, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "timestamp_ms": NOW_MS,
        "received_ms": NOW_MS + 7,
        "namespace": "default",
        "sender": "demo",
        "origin": "probe1",
        "type": "temperature",
        "value": value,
        "unit": "Cel",
        "source": "127.0.0.1:40000",
        "worker": 3,
    }
    values.update(fields)
    return Event(**values)


def with_sink(config: Any, body: Callable[[ElasticsearchSink], Awaitable[T]]) -> T:
    async def main() -> T:
        sink = ElasticsearchSink(config, worker=3)
        try:
            await sink.start()
            return await body(sink)
        finally:
            await sink.close()

    return asyncio.run(main())


def outcomes(results: list[Result]) -> list[Outcome]:
    return [r.outcome for r in results]


def count(es: Elasticsearch, index: str, **query: Any) -> int:
    es.indices.refresh(index=index, ignore_unavailable=True, allow_no_indices=True)
    q = {"term": query} if query else {"match_all": {}}
    return int(es.count(index=index, query=q, ignore_unavailable=True)["count"])


def test_documents_are_searchable_with_their_types(es: Elasticsearch, es_url: str, es_prefix: str):
    numeric, text, flag = event(21.25), event("open", unit=None), event(True)
    results = with_sink(sink_config(es_url, es_prefix), lambda s: s.write([numeric, text, flag]))
    assert outcomes(results) == [Outcome.STORED] * 3

    index = f"{es_prefix}-{datetime.fromtimestamp(NOW_MS / 1000, tz=UTC):%Y.%m.%d}"
    es.indices.refresh(index=index)
    doc = es.get(index=index, id=numeric.id)["_source"]
    assert doc == {
        "@timestamp": NOW_MS,
        "received_at": NOW_MS + 7,
        "namespace": "default",
        "sender": "demo",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 21.25, "unit": "Cel"},
        "source": "127.0.0.1:40000",
        "worker": 3,
        "event_id": numeric.id,
    }
    assert es.get(index=index, id=text.id)["_source"]["payload"] == {
        "type": "temperature",
        "value_string": "open",
    }
    # Types in force: a numeric range finds only the double, a boolean term only the bool,
    # an exact keyword term matches the whole string.
    hits = es.search(index=index, query={"range": {"payload.value": {"gte": 21, "lt": 21.5}}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == [numeric.id]
    hits = es.search(index=index, query={"term": {"payload.value_bool": True}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == [flag.id]
    assert count(es, index, **{"payload.value_string": "open"}) == 1
    # A date field: a range on @timestamp in ISO form finds all three.
    iso = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    hits = es.search(index=index, query={"range": {"@timestamp": {"gte": iso + "Z"}}})
    assert hits["hits"]["total"]["value"] == 3


def test_template_mappings_are_in_force(es: Elasticsearch, es_url: str, es_prefix: str):
    with_sink(sink_config(es_url, es_prefix), lambda s: s.write([event(timestamp_ms=0)]))
    template = es.indices.get_index_template(name=f"{es_prefix}-template")
    assert template["index_templates"][0]["index_template"]["index_patterns"] == [f"{es_prefix}-*"]
    mapping = es.indices.get_mapping(index=f"{es_prefix}-1970.01.01")
    got = mapping[f"{es_prefix}-1970.01.01"]["mappings"]
    assert got["dynamic"] in (False, "false")
    assert got["properties"] == MAPPINGS["properties"]


def test_start_is_idempotent_across_replicas(es: Elasticsearch, es_url: str, es_prefix: str):
    """Many sinks starting at once (replicas, workers) all install the same template."""

    async def main() -> list[Outcome]:
        sinks = [ElasticsearchSink(sink_config(es_url, es_prefix), worker=w) for w in range(8)]
        try:
            await asyncio.gather(*(s.start() for s in sinks))
            results = await asyncio.gather(*(s.write([event()]) for s in sinks))
            return [r[0].outcome for r in results]
        finally:
            await asyncio.gather(*(s.close() for s in sinks))

    assert asyncio.run(main()) == [Outcome.STORED] * 8
    assert len(es.indices.get_index_template(name=f"{es_prefix}-template")["index_templates"]) == 1


def test_same_id_twice_is_one_document(es: Elasticsearch, es_url: str, es_prefix: str):
    first = event(1.0)
    again = event(2.0, id=first.id)  # a different body under the same idempotency key

    async def body(sink: ElasticsearchSink) -> list[list[Result]]:
        return [
            await sink.write([first]),
            await sink.write([again]),
            await sink.write([event(id="dup-in-batch"), event(id="dup-in-batch")]),
        ]

    one, two, three = with_sink(sink_config(es_url, es_prefix), body)
    assert outcomes(one) == [Outcome.STORED]
    assert outcomes(two) == [Outcome.DUPLICATE]
    assert outcomes(three) == [Outcome.STORED, Outcome.DUPLICATE]
    assert count(es, f"{es_prefix}-*", event_id=first.id) == 1
    assert count(es, f"{es_prefix}-*", event_id="dup-in-batch") == 1
    stored = es.search(index=f"{es_prefix}-*", query={"term": {"event_id": first.id}})
    assert stored["hits"]["hits"][0]["_source"]["payload"]["value"] == 1.0  # the first wins


def test_mapping_rejected_event_fails_alone(es: Elasticsearch, es_url: str, es_prefix: str):
    """An index whose mapping disagrees (made by hand, or by an older version) rejects
    the event with a 400; its neighbours in the same bulk call are stored."""
    es.indices.create(
        index=f"{es_prefix}-2001.01.01", mappings={"properties": {"sender": {"type": "long"}}}
    )
    bad = event(timestamp_ms=DAY_2001_01_01)
    good = [event(), event(timestamp_ms=DAY_2001_01_01, sender="12345")]
    results = with_sink(sink_config(es_url, es_prefix), lambda s: s.write([good[0], bad, good[1]]))
    assert outcomes(results) == [Outcome.STORED, Outcome.REJECTED, Outcome.STORED]
    assert results[1].reason == "sender: document_parsing_exception"
    assert count(es, f"{es_prefix}-*", event_id=bad.id) == 0
    assert count(es, f"{es_prefix}-*") == 2


def test_retryable_items_are_retried_then_failed(es: Elasticsearch, es_url: str, es_prefix: str):
    """A shard that cannot be allocated answers 503 per item: retried within the deadline,
    then FAILED; the rest of the batch is stored and the store is not marked down."""
    es.indices.create(
        index=f"{es_prefix}-2001.01.02",
        settings={"index.routing.allocation.require._name": "nowhere", "number_of_replicas": 0},
        wait_for_active_shards="0",
    )
    stuck, fine = event(timestamp_ms=DAY_2001_01_02), event()

    async def body(sink: ElasticsearchSink) -> tuple[list[Result], bool]:
        results = await sink.write([stuck, fine])
        return results, await sink.healthy()

    config = sink_config(es_url, es_prefix, es_retry_deadline=1.0)
    results, healthy = with_sink(config, body)
    assert outcomes(results) == [Outcome.FAILED, Outcome.STORED]
    assert "503" in results[0].reason
    assert healthy
    # Once the shard can live somewhere, the device's retry is stored.
    es.indices.put_settings(
        index=f"{es_prefix}-2001.01.02", settings={"index.routing.allocation.require._name": None}
    )
    es.cluster.health(index=f"{es_prefix}-2001.01.02", wait_for_status="green", timeout="30s")
    assert outcomes(with_sink(config, lambda s: s.write([stuck]))) == [Outcome.STORED]


def test_start_against_a_dead_url_gives_up_with_one_clear_line():
    dead = f"http://127.0.0.1:{free_port()}"
    config = sink_config(dead, "never", store_wait=1.0)

    async def main() -> None:
        sink = ElasticsearchSink(config, worker=0)
        try:
            await sink.start()
        finally:
            await sink.close()

    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        asyncio.run(main())
    waited = time.monotonic() - began
    assert str(raised.value) == f"elasticsearch at {dead}: connection refused (waited 1 s)"
    assert "\n" not in str(raised.value)
    assert waited >= 0.5  # it did wait for the store, and (the bound below) not forever
    assert waited < 30


def test_store_down_mid_load_fails_fast_then_recovers(private_es: EsInstance):
    """Stop a private Elasticsearch while batches flow: writes turn FAILED at once,
    healthy() says False, and the same sink stores again once it is back."""
    instance = private_es
    prefix = f"fault{uuid.uuid4().hex[:8]}"
    acked: list[str] = []
    log: list[tuple[float, Outcome, float]] = []  # (time, outcome, seconds the write took)
    stopped_at: list[float] = []

    def stop_soon() -> None:
        time.sleep(1.0)
        stopped_at.append(time.monotonic())
        instance.stop(keep_data=True)

    async def main() -> tuple[bool, bool, list[Outcome]]:
        sink = ElasticsearchSink(instance.sink_config(prefix), worker=0)
        try:
            await sink.start()
            stopper = threading.Thread(target=stop_soon)
            stopper.start()
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:  # bounded: at most 60 s of load
                batch = [event() for _ in range(50)]
                began = time.monotonic()
                results = await sink.write(batch)
                log.append((began, results[0].outcome, time.monotonic() - began))
                acked.extend(e.id for e, r in zip(batch, results, strict=True) if r.outcome.ok)
                if not stopper.is_alive() and results[0].outcome is Outcome.FAILED:
                    break
                await asyncio.sleep(0.01)
            stopper.join()
            down_health = await sink.healthy()
            # Fail fast while down: a burst of writes, each answered without waiting.
            burst = [await sink.write([event()]) for _ in range(20)]
            assert all(r[0].outcome is Outcome.FAILED for r in burst)
            assert "unavailable" in burst[0][0].reason
            await asyncio.to_thread(instance.start)
            deadline = time.monotonic() + 30
            while not await sink.healthy() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            up_health = await sink.healthy()
            after = [event() for _ in range(5)]
            results = await sink.write(after)
            acked.extend(e.id for e in after)
            return down_health, up_health, outcomes(results)
        finally:
            await sink.close()

    down_health, up_health, after = asyncio.run(main())
    assert down_health is False
    assert up_health is True
    assert after == [Outcome.STORED] * 5
    first_failure = next(t for t, outcome, _ in log if outcome is Outcome.FAILED)
    assert any(outcome is Outcome.STORED for _, outcome, _ in log)
    # The first FAILED comes from the first write after the server went away (es.sh stop
    # returns once the process is gone), not after some long client-side timeout.
    assert first_failure >= stopped_at[0]
    # Every event acknowledged as stored is in the index after the restart.
    with instance.client() as client:
        client.indices.refresh(index=f"{prefix}-*")
        found: set[str] = set()
        for start in range(0, len(acked), 1000):
            chunk = acked[start : start + 1000]
            res = client.search(
                index=f"{prefix}-*", query={"ids": {"values": chunk}}, size=len(chunk), source=False
            )
            found.update(h["_id"] for h in res["hits"]["hits"])
    assert len(acked) > 5
    assert set(acked) == found


def test_basic_auth_with_security_enabled(private_es: EsInstance):
    instance = private_es
    good = instance.sink_config("secure")
    assert outcomes(with_sink(good, lambda s: s.write([event()]))) == [Outcome.STORED]

    wrong = sink_config(
        instance.url, "secure", es_username="elastic", es_password="nope", store_wait=30
    )
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        with_sink(wrong, lambda s: s.write([event()]))
    assert str(raised.value) == (
        f"elasticsearch at {instance.url}: authentication failed (401) for user 'elastic'"
    )
    assert "nope" not in str(raised.value)
    assert time.monotonic() - began < 25  # refused credentials are not waited on

    anonymous = sink_config(instance.url, "secure", store_wait=0)
    with pytest.raises(StoreUnavailable, match=r"authentication failed \(401\)"):
        with_sink(anonymous, lambda s: s.write([event()]))

    # API keys cannot be created on the integ-test-zip (its security index needs the
    # analysis-common module it lacks), but a key the server does not know is refused.
    unknown = sink_config(instance.url, "secure", es_api_key="bm90OmEta2V5", store_wait=0)
    with pytest.raises(StoreUnavailable, match=r"authentication failed \(401\) for the API key"):
        with_sink(unknown, lambda s: s.write([event()]))


def test_health_probe_against_live_and_dead_servers(es_url: str, es_prefix: str):
    async def main() -> tuple[list[bool], bool, list[Result], bool]:
        live = ElasticsearchSink(sink_config(es_url, es_prefix), worker=0)
        dead = ElasticsearchSink(sink_config(f"http://127.0.0.1:{free_port()}", "x"), worker=0)
        try:
            # Never started, never written: healthy() has to ask the server itself.
            burst = await asyncio.gather(*(live.healthy() for _ in range(50)))
            dead_health = await dead.healthy()
            dead_write = await dead.write([event(), event()])
            still_down = await dead.healthy()
            return burst, dead_health, dead_write, still_down
        finally:
            await live.close()
            await dead.close()

    burst, dead_health, dead_write, still_down = asyncio.run(main())
    assert burst == [True] * 50
    assert dead_health is False
    assert outcomes(dead_write) == [Outcome.FAILED] * 2
    assert dead_write[0].reason.startswith("elasticsearch unavailable")
    assert still_down is False
