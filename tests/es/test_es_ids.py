"""The elasticsearch sink and client ids, against a real Elasticsearch: a reused key with
other content is a CONFLICT (one `mget` per batch compares), the same event again a
DUPLICATE (issue 11); ids are scoped by sender; client id and identity are stored and
mapped as keywords (issue 15)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from elasticsearch import Elasticsearch

from collector.events import DEFAULT_LIMITS, Event, decode_events
from collector.identity import Identity
from collector.sinks.base import Outcome
from collector.sinks.elasticsearch import ElasticsearchSink

from .helpers import sink_config

pytestmark = [pytest.mark.es, pytest.mark.integration]

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
BASE: dict[str, Any] = {
    "sender": "dev-17",
    "origin": "probe1",
    "payload": {"type": "temperature", "value": 21.5, "unit": "Cel"},
    "id": "reading-1",
}


def decoded(body: dict[str, Any], received_ms: int = NOW_MS, **kw: Any) -> Event:
    [event] = decode_events(
        orjson.dumps(body),
        None,
        source="127.0.0.1:1",
        mid=1,
        received_ms=received_ms,
        worker=0,
        limits=DEFAULT_LIMITS,
        **kw,
    )
    return event


def write_batches(es_url: str, es_prefix: str, *batches: list[Event]) -> list[list[Outcome]]:
    async def main() -> list[list[Outcome]]:
        sink = ElasticsearchSink(sink_config(es_url, es_prefix), worker=0)
        try:
            await sink.start()
            return [[r.outcome for r in await sink.write(b)] for b in batches]
        finally:
            await sink.close()

    return asyncio.run(main())


def docs(es: Elasticsearch, prefix: str, **term: Any) -> list[dict[str, Any]]:
    es.indices.refresh(index=f"{prefix}-*", allow_no_indices=True)
    res = es.search(index=f"{prefix}-*", query={"term": term}, size=100)
    return [h["_source"] | {"_id": h["_id"]} for h in res["hits"]["hits"]]


def test_reused_client_id_with_other_content_is_a_conflict_and_keeps_the_first(
    es: Elasticsearch, es_url: str, es_prefix: str
) -> None:
    ts = NOW_MS - 60_000
    first = decoded({**BASE, "timestamp": ts / 1000})
    squat = decoded(
        {**BASE, "timestamp": ts / 1000, "payload": {"type": "temperature", "value": 999}}
    )
    retry = decoded({**BASE, "timestamp": ts / 1000}, received_ms=NOW_MS + 5000)
    untimed_retry = decoded(BASE)  # no timestamp: its time says nothing, content agrees
    other_time = decoded({**BASE, "timestamp": (ts - 1000) / 1000})
    other_kind = decoded(
        {
            **BASE,
            "timestamp": ts / 1000,
            "payload": {"type": "temperature", "value": "21.5", "unit": "Cel"},
        }
    )
    content_id = decoded({k: v for k, v in BASE.items() if k != "id"} | {"timestamp": ts / 1000})
    assert write_batches(
        es_url,
        es_prefix,
        [first, content_id],
        # One batch, many 409s: judged together (one mget); the same content id is a
        # duplicate without being read back.
        [squat, retry, untimed_retry, other_time, other_kind, content_id],
    ) == [
        [Outcome.STORED, Outcome.STORED],
        [
            Outcome.CONFLICT,
            Outcome.DUPLICATE,
            Outcome.DUPLICATE,
            Outcome.CONFLICT,
            Outcome.CONFLICT,
            Outcome.DUPLICATE,
        ],
    ]
    [doc] = docs(es, es_prefix, client_id="reading-1")
    assert doc["payload"]["value"] == 21.5 and doc["_id"] == first.id


def test_reuse_within_one_batch_is_a_conflict(
    es: Elasticsearch, es_url: str, es_prefix: str
) -> None:
    a = decoded({**BASE, "id": "same-batch"})
    b = decoded({**BASE, "id": "same-batch", "payload": {"type": "t", "value": False}})
    assert write_batches(es_url, es_prefix, [a, b, a]) == [
        [Outcome.STORED, Outcome.CONFLICT, Outcome.DUPLICATE]
    ]


def test_reuse_on_another_utc_day_is_a_second_document(
    es: Elasticsearch, es_url: str, es_prefix: str
) -> None:
    # What README promises: ids are unique per daily index, so a reused client id whose
    # event time falls on another day is not seen as a conflict.
    today = decoded({**BASE, "id": "two-days", "timestamp": NOW_MS / 1000})
    earlier = decoded({**BASE, "id": "two-days", "timestamp": (NOW_MS - 2 * DAY_MS) / 1000})
    assert write_batches(es_url, es_prefix, [today], [earlier]) == [
        [Outcome.STORED],
        [Outcome.STORED],
    ]
    assert len(docs(es, es_prefix, client_id="two-days")) == 2


def test_client_ids_are_scoped_by_sender_and_identity_is_a_keyword(
    es: Elasticsearch, es_url: str, es_prefix: str
) -> None:
    attacker = decoded({**BASE, "id": "victim-key", "sender": "attacker"})
    victim = decoded(
        {**BASE, "id": "victim-key", "namespace": "lab"},
        identity=Identity("psk-17", "lab", "dev-17"),
    )
    assert write_batches(es_url, es_prefix, [attacker], [victim]) == [
        [Outcome.STORED],
        [Outcome.STORED],
    ]
    got = {d["sender"]: d.get("identity") for d in docs(es, es_prefix, client_id="victim-key")}
    assert got == {"attacker": None, "dev-17": "psk-17"}
    assert [d["sender"] for d in docs(es, es_prefix, identity="psk-17")] == ["dev-17"]
    mapping = es.indices.get_mapping(index=f"{es_prefix}-*")
    [properties] = [m["mappings"]["properties"] for m in mapping.body.values()]
    assert properties["identity"] == properties["client_id"] == {"type": "keyword"}
