"""The Kibana visualizations' aggregations, run on a real Elasticsearch against indices
made with the collector's own index template: the latest-readings table must show each
origin's newest value, the value-over-time chart the average per type and origin.

Kibana is not available here, so each visualization's `aggs` are translated into the
Elasticsearch aggregations Kibana sends for them (terms, top_hits, max, avg,
date_histogram); a field of the wrong type or a wrong sort shows up as a wrong answer.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from collector.estemplate import index_template

pytestmark = [pytest.mark.es, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "deploy" / "kibana" / "saved_objects.ndjson"

# (origin, type, value, unit, minute of the hour)
READINGS = [
    ("sevilla", "temperature", 21.0, "Cel", 0),
    ("sevilla", "temperature", 23.5, "Cel", 2),
    ("sevilla", "humidity", 40.0, "%RH", 1),
    ("madrid", "temperature", 15.0, "Cel", 3),
    ("madrid", "temperature", 14.0, "Cel", 1),
]


@pytest.fixture(scope="module")
def es() -> Iterator[Elasticsearch]:
    url = os.environ.get("ES_URL")
    if not url:
        pytest.skip("ES_URL is not set (make test starts Elasticsearch and sets it)")
    client = Elasticsearch(url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def index(es: Elasticsearch) -> Iterator[str]:
    prefix = f"d{uuid.uuid4().hex[:12]}"
    es.indices.put_index_template(**index_template(prefix))
    name = f"{prefix}-2026.11.25"
    operations: list[dict[str, Any]] = []
    for i, (origin, kind, value, unit, minute) in enumerate(READINGS):
        operations.append({"create": {"_index": name, "_id": str(i)}})
        operations.append(
            {
                "@timestamp": f"2026-11-25T10:{minute:02d}:00Z",
                "received_at": f"2026-11-25T10:{minute:02d}:01Z",
                "namespace": "default",
                "sender": "weathercity",
                "origin": origin,
                "payload": {"type": kind, "value": value, "unit": unit},
                "source": "127.0.0.1:40000",
                "worker": 0,
                "event_id": str(i),
            }
        )
    result = es.bulk(operations=operations, refresh="wait_for")
    assert not result["errors"], result
    try:
        yield f"{prefix}-*"
    finally:
        es.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")


def vis_state(vis_id: str) -> dict[str, Any]:
    for line in NDJSON.read_text().splitlines():
        obj = json.loads(line)
        if obj["id"] == vis_id:
            state: dict[str, Any] = json.loads(obj["attributes"]["visState"])
            return state
    raise AssertionError(f"no saved object {vis_id}")


def metric_agg(agg: dict[str, Any]) -> dict[str, Any]:
    p = agg["params"]
    if agg["type"] == "top_hits":
        return {
            "top_hits": {
                "size": p["size"],
                "_source": {"includes": [p["field"]]},
                "sort": [{p["sortField"]: {"order": p["sortOrder"]}}],
            }
        }
    return {agg["type"]: {"field": p["field"]}}


def bucket_agg(agg: dict[str, Any]) -> dict[str, Any]:
    p = agg["params"]
    if agg["type"] == "terms":
        order_key = "_key" if p["orderBy"] == "_key" else p["orderBy"]
        return {"terms": {"field": p["field"], "size": p["size"], "order": {order_key: p["order"]}}}
    assert agg["type"] == "date_histogram"
    return {
        "date_histogram": {
            "field": p["field"],
            "fixed_interval": "1m",
            "min_doc_count": 1,
            "format": "HH:mm",
        }
    }


def kibana_request(state: dict[str, Any], bucket_schemas: tuple[str, ...]) -> dict[str, Any]:
    """Nest the bucket aggs in order, with every metric agg at each level (as Kibana does,
    so a terms agg can be ordered by a metric)."""
    metrics = {a["id"]: metric_agg(a) for a in state["aggs"] if a["schema"] == "metric"}
    buckets = [a for a in state["aggs"] if a["schema"] in bucket_schemas]
    inner: dict[str, Any] = {}
    for agg in reversed(buckets):
        inner = {agg["id"]: {**bucket_agg(agg), "aggs": {**metrics, **inner}}}
    return inner


def test_latest_readings_table_shows_each_origins_newest_value(
    es: Elasticsearch, index: str
) -> None:
    state = vis_state("iot-latest-readings")
    answer = es.search(index=index, size=0, aggs=kibana_request(state, ("bucket",)))
    by_id = {a["id"]: a for a in state["aggs"]}
    origin_id, type_id = (a["id"] for a in state["aggs"] if a["schema"] == "bucket")
    value_id = next(i for i, a in by_id.items() if a["params"].get("field") == "payload.value")
    rows = []
    for origin in answer["aggregations"][origin_id]["buckets"]:
        for kind in origin[type_id]["buckets"]:
            (hit,) = kind[value_id]["hits"]["hits"]
            rows.append((origin["key"], kind["key"], hit["_source"]["payload"]["value"]))
    # Most recently seen origin first (madrid at :03), types alphabetically.
    assert rows == [
        ("madrid", "temperature", 15.0),
        ("sevilla", "humidity", 40.0),
        ("sevilla", "temperature", 23.5),
    ]


def test_value_over_time_averages_per_type_and_origin(es: Elasticsearch, index: str) -> None:
    state = vis_state("iot-value-over-time")
    # Series split first (type, then origin), the time axis inside them.
    metrics = {a["id"]: metric_agg(a) for a in state["aggs"] if a["schema"] == "metric"}
    histogram = next(a for a in state["aggs"] if a["schema"] == "segment")
    inner: dict[str, Any] = {histogram["id"]: {**bucket_agg(histogram), "aggs": metrics}}
    groups = [a for a in state["aggs"] if a["schema"] == "group"]
    for agg in reversed(groups):
        inner = {agg["id"]: {**bucket_agg(agg), "aggs": {**metrics, **inner}}}
    answer = es.search(index=index, size=0, aggs=inner)
    (metric_id,) = metrics
    series = {}
    for kind in answer["aggregations"][groups[0]["id"]]["buckets"]:
        for origin in kind[groups[1]["id"]]["buckets"]:
            points = [
                (b["key_as_string"], b[metric_id]["value"])
                for b in origin[histogram["id"]]["buckets"]
            ]
            series[(kind["key"], origin["key"])] = points
    assert series == {
        ("humidity", "sevilla"): [("10:01", 40.0)],
        ("temperature", "madrid"): [("10:01", 14.0), ("10:03", 15.0)],
        ("temperature", "sevilla"): [("10:00", 21.0), ("10:02", 23.5)],
    }
