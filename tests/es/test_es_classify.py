"""The sink's pure parts: per-item judgement, reasons, index names. No Elasticsearch."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.estemplate import MAPPINGS, index_template
from collector.events import Event
from collector.sinks.elasticsearch import (
    MAX_REASON,
    Verdict,
    classify,
    index_name,
    short_reason,
)

# One row a case: (status, error object, verdict, text the reason must contain).
CASES = [
    (201, None, Verdict.STORED, ""),
    (200, None, Verdict.STORED, ""),
    (409, {"type": "version_conflict_engine_exception"}, Verdict.DUPLICATE, ""),
    (
        400,
        {
            "type": "document_parsing_exception",
            "reason": "[1:11] failed to parse field [sender] of type [long] in document "
            "with id 'a'. Preview of field's value: 'abc'",
        },
        Verdict.REJECT,
        "sender: document_parsing_exception",
    ),
    (400, {"type": "illegal_argument_exception", "reason": "bad"}, Verdict.REJECT, "bad"),
    (400, None, Verdict.REJECT, "rejected"),
    (408, None, Verdict.RETRY, "408"),
    (429, {"type": "es_rejected_execution_exception"}, Verdict.RETRY, "429"),
    (500, None, Verdict.RETRY, "500"),
    (502, None, Verdict.RETRY, "502"),
    (503, {"type": "unavailable_shards_exception"}, Verdict.RETRY, "503"),
    (504, None, Verdict.RETRY, "504"),
    (401, None, Verdict.FAIL, "authentication"),
    (403, None, Verdict.FAIL, "refused the collector's user (403)"),
    # A write block is the index's or cluster's state, not the user's rights.
    (
        403,
        {
            "type": "cluster_block_exception",
            "reason": "index [iot-events-2026.12.01] blocked by: [FORBIDDEN/8/index write (api)];",
        },
        Verdict.FAIL,
        "elasticsearch blocks writes: FORBIDDEN/8/index write (api) (403)",
    ),
    (404, {"type": "index_not_found_exception"}, Verdict.FAIL, "404"),
    (413, None, Verdict.FAIL, "413"),
]


@pytest.mark.parametrize(("status", "error", "verdict", "reason"), CASES)
def test_classify_table(status: int, error: dict[str, str] | None, verdict: Verdict, reason: str):
    judged = classify(status, error)
    assert judged.verdict is verdict
    assert reason in judged.reason


@given(st.integers(min_value=-1000, max_value=100_000))
def test_classify_any_status_has_a_verdict(status: int):
    judged = classify(status)
    assert isinstance(judged.verdict, Verdict)
    retryable = status in (408, 429) or 500 <= status <= 599
    assert (judged.verdict is Verdict.RETRY) == retryable


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


@given(
    st.one_of(
        st.none(),
        st.text(max_size=500),
        st.dictionaries(st.sampled_from(["type", "reason", "caused_by", "x"]), _json),
    )
)
def test_short_reason_never_raises_and_is_short(error: object):
    reason = short_reason(error)  # type: ignore[arg-type]
    assert isinstance(reason, str)
    assert 0 < len(reason) <= MAX_REASON


@pytest.mark.parametrize(
    ("instant", "name"),
    [
        ("1970-01-01T00:00:00.000+00:00", "p-1970.01.01"),
        ("2001-02-03T23:59:59.999+00:00", "p-2001.02.03"),
        ("2001-02-04T00:00:00.000+00:00", "p-2001.02.04"),
        ("2026-11-25T23:30:00.000-05:00", "p-2026.11.26"),  # UTC day, not local
        ("9999-12-31T23:59:59.999+00:00", "p-9999.12.31"),
    ],
)
def test_index_name_is_the_utc_day(instant: str, name: str):
    ms = int(datetime.fromisoformat(instant).timestamp() * 1000)
    assert index_name("p", ms) == name


def test_every_document_field_is_mapped():
    """Event.document() and the template must agree, or fields go unindexed."""
    properties = MAPPINGS["properties"]
    for value in (1.5, "on", True):
        event = Event("i", 0, 0, "n", "s", "o", "t", value, "u", "127.0.0.1:1", 0, "k", "psk-1")
        document = event.document()
        for key, sub in document.items():
            assert key in properties, key
            if isinstance(sub, dict):
                for inner in sub:
                    assert inner in properties[key]["properties"], f"{key}.{inner}"


def test_template_priorities_separate_overlapping_prefixes():
    # "iot" and "iot-events" overlap ("iot-*" matches "iot-events-..."); ES refuses two
    # overlapping templates of equal priority.
    assert index_template("iot-events")["priority"] != index_template("iot")["priority"]
