"""deploy/kibana/saved_objects.ndjson: valid NDJSON for Kibana's saved objects import
API, a data view on the collector's indices, and references that all resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from collector.estemplate import MAPPINGS

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "deploy" / "kibana" / "saved_objects.ndjson"


def mapped_types(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattened field -> type of the collector's index template mappings."""
    out: dict[str, str] = {}
    for name, spec in properties.items():
        if "properties" in spec:
            out |= mapped_types(spec["properties"], f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = spec["type"]
    return out


# The mapping the collector installs for every daily index.
FIELD_TYPES = mapped_types(MAPPINGS["properties"])
NUMERIC = {"double", "float", "long", "integer"}


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


def test_fields_used_are_mapped_with_a_type_that_fits(objects: list[dict[str, Any]]) -> None:
    """Each aggregation needs its field mapped with a fitting type (terms on keyword,
    avg on a number, date_histogram on a date), or Kibana shows an empty panel."""
    wanted = {
        "terms": {"keyword"},
        "avg": NUMERIC,
        "date_histogram": {"date"},
        "max": NUMERIC | {"date"},
        "top_hits": set(FIELD_TYPES.values()),
    }
    used: list[tuple[str, set[str]]] = []
    for o in by_type(objects, "visualization"):
        state = json.loads(o["attributes"]["visState"])
        for agg in state["aggs"]:
            used.append((agg["params"]["field"], wanted[agg["type"]]))
            if "sortField" in agg["params"]:
                used.append((agg["params"]["sortField"], {"date"}))
        expression = state["params"].get("expression", "")
        used += [(f, {"date"}) for f in re.findall(r"timefield=([\w@.]+)", expression)]
        used += [(f, NUMERIC) for f in re.findall(r"metric=avg:([\w@.]+)", expression)]
        used += [(f, {"keyword"}) for f in re.findall(r"split=([\w@.]+)", expression)]
    for search in by_type(objects, "search"):
        used += [(c, set(FIELD_TYPES.values())) for c in search["attributes"]["columns"]]
        used += [(s[0], {"date"}) for s in search["attributes"]["sort"]]
    (view,) = by_type(objects, "index-pattern")
    used.append((view["attributes"]["timeFieldName"], {"date"}))
    assert len(used) > 10
    for field, types in used:
        assert field in FIELD_TYPES, f"{field} is not mapped by collector.estemplate"
        assert FIELD_TYPES[field] in types, (field, FIELD_TYPES[field], types)
