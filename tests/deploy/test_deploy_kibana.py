"""deploy/kibana/saved_objects.ndjson: valid NDJSON for Kibana's saved objects import
API, a data view on the collector's indices, and references that all resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "deploy" / "kibana" / "saved_objects.ndjson"
# Fields the collector writes (its index template maps them).
EVENT_FIELDS = {
    "@timestamp",
    "received_at",
    "namespace",
    "sender",
    "origin",
    "payload.type",
    "payload.unit",
    "payload.value",
    "payload.value_string",
    "payload.value_bool",
    "source",
    "worker",
    "event_id",
}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    lines = NDJSON.read_text().splitlines()
    assert lines and all(line.strip() for line in lines), "no blank lines in NDJSON"
    return [json.loads(line) for line in lines]


def by_type(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["type"] == kind]


def test_every_object_has_identity_and_attributes(objects: list[dict[str, Any]]) -> None:
    seen = set()
    for o in objects:
        assert o["id"] and o["type"] and o["attributes"]["title"], o
        assert (o["type"], o["id"]) not in seen
        seen.add((o["type"], o["id"]))
        # Exported-object shape: migration versions let Kibana 8.x migrate them.
        assert o["migrationVersion"] and isinstance(o["references"], list)


def test_data_view_targets_the_collector_indices(objects: list[dict[str, Any]]) -> None:
    (view,) = by_type(objects, "index-pattern")
    assert view["attributes"]["title"] == "iot-events-*"
    assert view["attributes"]["timeFieldName"] == "@timestamp"


def test_every_reference_resolves(objects: list[dict[str, Any]]) -> None:
    ids = {(o["type"], o["id"]) for o in objects}
    for o in objects:
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in ids, (o["id"], ref)


def test_reference_names_match_their_users(objects: list[dict[str, Any]]) -> None:
    for o in objects:
        names = {r["name"] for r in o["references"]}
        attrs = o["attributes"]
        meta = attrs.get("kibanaSavedObjectMeta", {"searchSourceJSON": "{}"})
        source = json.loads(meta["searchSourceJSON"])
        if "indexRefName" in source:
            assert source["indexRefName"] in names, o["id"]
        if o["type"] == "dashboard":
            panels = json.loads(attrs["panelsJSON"])
            assert {p["panelRefName"] for p in panels} == names
            ids = [p["panelIndex"] for p in panels]
            assert len(ids) == len(set(ids))


def test_dashboard_shows_rate_values_and_latest_readings(objects: list[dict[str, Any]]) -> None:
    (dash,) = by_type(objects, "dashboard")
    shown = {r["id"] for r in dash["references"]}
    visualizations = {o["id"]: o for o in by_type(objects, "visualization")}
    states = {i: json.loads(v["attributes"]["visState"]) for i, v in visualizations.items()}
    assert shown >= set(visualizations), "every visualization is on the dashboard"
    assert any(s["type"] == "search" for s in dash["references"])
    # Events per second: a Timelion series scaled to one second.
    rate = [
        s
        for s in states.values()
        if s["type"] == "timelion" and "scale_interval(1s)" in s["params"]["expression"]
    ]
    assert rate and "index=iot-events-*" in rate[0]["params"]["expression"]
    # Value over time, split by type and origin.
    lines = [s for s in states.values() if s["type"] == "line"]
    (line,) = lines
    splits = [a["params"]["field"] for a in line["aggs"] if a["schema"] == "group"]
    assert splits == ["payload.type", "origin"]
    # Latest readings per origin: top hit sorted by time, newest first.
    (table,) = [s for s in states.values() if s["type"] == "table"]
    rows = [a["params"]["field"] for a in table["aggs"] if a["schema"] == "bucket"]
    assert rows[0] == "origin"
    latest = [a for a in table["aggs"] if a["type"] == "top_hits"]
    assert latest and all(
        a["params"]["sortField"] == "@timestamp" and a["params"]["sortOrder"] == "desc"
        for a in latest
    )


def test_fields_used_exist_in_the_events(objects: list[dict[str, Any]]) -> None:
    used: set[str] = set()
    for o in by_type(objects, "visualization"):
        state = json.loads(o["attributes"]["visState"])
        for agg in state["aggs"]:
            for key in ("field", "sortField"):
                if key in agg["params"]:
                    used.add(agg["params"][key])
        expression = state["params"].get("expression", "")
        used |= set(re.findall(r"(?:timefield=|metric=\w+:|split=)([\w@.]+)", expression))
    for search in by_type(objects, "search"):
        used |= set(search["attributes"]["columns"])
        used |= {s[0] for s in search["attributes"]["sort"]}
    assert used and used <= EVENT_FIELDS, used - EVENT_FIELDS
