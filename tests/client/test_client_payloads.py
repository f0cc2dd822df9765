"""Event builders and the four body formats, checked by decoding with cbor2/orjson
and with the collector's own decoder (the receiving side of the contract)."""

from __future__ import annotations

import math
from datetime import datetime
from itertools import islice

import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coap import ContentFormat
from collector.client.commands import incremental_values
from collector.client.payloads import (
    FORMATS,
    encode_body,
    make_event,
    parse_value,
    rfc3339_ms,
    senml_records,
    tidy_number,
)
from collector.events import decode_events


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15", 15),
        ("-3", -3),
        ("15.5", 15.5),
        ("-3e2", -300.0),
        (" 7 ", 7),
        ("true", True),
        ("FALSE", False),
        ("1_000", "1_000"),
        ("open", "open"),
        ("", ""),
        ("12abc", "12abc"),
    ],
)
def test_parse_value(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e400", "-1e999"])
def test_parse_value_refuses_what_no_event_can_carry(text: str) -> None:
    """They used to be sent as text, storing a different reading."""
    with pytest.raises(ValueError, match=f"value '{text}' is not a finite number"):
        parse_value(text)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_value_reads_back_any_finite_float(number: float) -> None:
    assert parse_value(repr(number)) == number


@given(st.text(max_size=30))
def test_parse_value_never_raises_and_numbers_are_finite(text: str) -> None:
    try:
        value = parse_value(text)
    except ValueError as exc:  # only for numbers beyond a double: nan, inf, 1e400
        assert "is not a finite number" in str(exc)
        assert not math.isfinite(float(text.strip()))
        return
    assert isinstance(value, bool | int | float | str)
    if isinstance(value, float):
        assert math.isfinite(value)
    if isinstance(value, str):
        assert value == text


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_796_220_504.771, "2026-12-02T14:08:24.771Z"),
        (1.0005, "1970-01-01T00:00:01.000Z"),  # rounds half to even at ms
        (59.9996, "1970-01-01T00:01:00.000Z"),
    ],
)
def test_rfc3339_ms(epoch: float, text: str) -> None:
    assert rfc3339_ms(epoch) == text


def test_make_event_has_the_contract_shape() -> None:
    event = make_event(
        type="temperature",
        value=15.5,
        origin="probe1",
        sender="demo",
        unit="Cel",
        timestamp=0.25,
        id="k1",
    )
    assert event == {
        "namespace": "default",
        "sender": "demo",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
        "timestamp": "1970-01-01T00:00:00.250Z",
        "id": "k1",
    }
    assert "unit" not in make_event(type="t", value=1, origin="o", sender="s")["payload"]


def test_tidy_number() -> None:
    assert tidy_number(15.0) == 15 and type(tidy_number(15.0)) is int
    assert tidy_number(16.5) == 16.5
    assert type(tidy_number(1e300)) is float


def test_incremental_values_follow_the_thesis_demo() -> None:
    values = list(islice(incremental_values(15, 1.1, None, None), 4))
    assert values == [15, 15 * 1.1, 15 * 1.1 * 1.1, 15 * 1.1 * 1.1 * 1.1]
    assert values[2] == pytest.approx(18.15)


def test_incremental_values_are_clamped() -> None:
    assert list(islice(incremental_values(8, 1.5, 0, 15), 4)) == [8, 12, 15, 15]
    assert list(islice(incremental_values(3, 0.5, 1, None), 4)) == [3, 1.5, 1, 1]
    assert list(islice(incremental_values(-5, 1, 0, 10), 2)) == [0, 0]


_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)
_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_events = st.builds(
    make_event,
    type=_name,
    value=_values,
    origin=_name,
    sender=_text,
    namespace=_text,
    unit=st.none() | _name,
    timestamp=st.floats(min_value=0, max_value=4_000_000_000),
)


@given(st.lists(_events, min_size=1, max_size=5))
def test_json_and_cbor_bodies_round_trip(events: list[dict[str, object]]) -> None:
    expected: object = events[0] if len(events) == 1 else events
    body, content_format = encode_body(events, "json")
    assert content_format == ContentFormat.JSON
    assert orjson.loads(body) == expected
    body, content_format = encode_body(events, "cbor")
    assert content_format == ContentFormat.CBOR
    assert cbor2.loads(body) == expected


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@given(st.lists(_events, min_size=1, max_size=5))
def test_senml_bodies_round_trip(events: list[dict[str, object]]) -> None:
    for fmt, load, number in (
        ("senml-json", orjson.loads, ContentFormat.SENML_JSON),
        ("senml-cbor", cbor2.loads, ContentFormat.SENML_CBOR),
    ):
        body, content_format = encode_body(events, fmt)
        assert content_format == number
        records = load(body)
        assert isinstance(records, list) and len(records) == len(events)
        for record, event in zip(records, events, strict=True):
            payload = event["payload"]
            assert isinstance(payload, dict)
            assert record["n"] == f"{event['origin']}/{payload['type']}"
            value = payload["value"]
            key = (
                "vb" if isinstance(value, bool) else "v" if isinstance(value, int | float) else "vs"
            )
            assert record[key] == value
            assert record.get("u") == payload.get("unit")
            assert isinstance(event["timestamp"], str)
            assert record["t"] == pytest.approx(_epoch(event["timestamp"]), abs=1e-3)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_collector_decodes_what_the_client_encodes(fmt: str) -> None:
    events = [
        make_event(
            type="temperature",
            value=15.5,
            origin="probe1",
            sender="demo",
            unit="Cel",
            timestamp=1e9,
        ),
        make_event(type="door", value="open", origin="probe1", sender="demo", timestamp=1e9 + 1),
        make_event(type="alarm", value=True, origin="probe2", sender="demo", timestamp=1e9 + 2),
    ]
    body, content_format = encode_body(events, fmt)
    decoded = decode_events(
        body, content_format, source="127.0.0.1:1", mid=1, received_ms=1_000_000_000_000, worker=0
    )
    assert [(e.origin, e.type, e.value, e.unit, e.timestamp_ms) for e in decoded] == [
        ("probe1", "temperature", 15.5, "Cel", 1_000_000_000_000),
        ("probe1", "door", "open", None, 1_000_000_001_000),
        ("probe2", "alarm", True, None, 1_000_000_002_000),
    ]
    if not fmt.startswith("senml"):
        assert {e.sender for e in decoded} == {"demo"}


def test_encode_body_rejects_bad_arguments() -> None:
    event = make_event(type="t", value=1, origin="o", sender="s")
    with pytest.raises(ValueError, match="unknown format"):
        encode_body([event], "xml")
    with pytest.raises(ValueError, match="no events"):
        encode_body([], "json")


def test_senml_value_keys() -> None:
    records = senml_records(
        [
            make_event(type="a", value=True, origin="o", sender="s", timestamp=1),
            make_event(type="b", value=2, origin="o", sender="s", timestamp=1),
            make_event(type="c", value="x", origin="o", sender="s", timestamp=1),
        ]
    )
    assert [sorted(r) for r in records] == [["n", "t", "vb"], ["n", "t", "v"], ["n", "t", "vs"]]
