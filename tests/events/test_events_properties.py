"""Properties: any input gives events or an EventError, never another exception."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
from hypothesis import given
from hypothesis import strategies as st

from collector.events import Event, EventError, decode_events
from collector.senml import LABELS_CBOR

from .helpers import ANY_TIME, decode

FORMATS = [None, 50, 60, 110, 112]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
cbor_scalars = (
    json_scalars
    | st.binary(max_size=8)
    | st.floats()  # NaN and infinities
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(-8, 12), inner, max_size=4)
    ),
    max_leaves=20,
)


def outcome(payload: bytes, content_format: int | None) -> list[Event] | EventError:
    try:
        events = decode(payload, content_format)
    except EventError as exc:
        assert str(exc)  # a diagnostic, never empty
        return exc
    assert events, "a body decodes to at least one event"
    for event in events:
        assert isinstance(event.id, str) and event.id
        assert 0 <= event.timestamp_ms < 253_402_300_800_000
        assert type(event.value) in (float, str, bool)
        orjson.dumps(event.document())
    return events


@given(st.binary(max_size=300), st.sampled_from(FORMATS))
def test_arbitrary_bytes(payload: bytes, content_format: int | None) -> None:
    outcome(payload, content_format)


@given(json_values, st.sampled_from([None, 110]))
def test_arbitrary_json_values(value: Any, content_format: int | None) -> None:
    outcome(orjson.dumps(value), content_format)


@given(cbor_values, st.sampled_from([60, 112]))
def test_arbitrary_cbor_values(value: Any, content_format: int) -> None:
    outcome(cbor2.dumps(value), content_format)


# Near-valid events: right field names, values of any type, sometimes extra fields.
field_values = json_values | st.text(min_size=1, max_size=5)
events = st.fixed_dictionaries(
    {},
    optional={
        "namespace": field_values,
        "sender": field_values,
        "origin": field_values,
        "id": field_values,
        "timestamp": st.one_of(
            field_values,
            st.datetimes().map(lambda d: d.isoformat() + "Z"),
            st.floats(min_value=-1e12, max_value=1e12),
        ),
        "payload": st.fixed_dictionaries(
            {},
            optional={"type": field_values, "value": field_values, "unit": field_values},
        ),
        "extra": field_values,
    },
)


@given(st.one_of(events, st.lists(events, max_size=4)), st.sampled_from([None, 60]))
def test_near_valid_events(body: Any, content_format: int | None) -> None:
    payload = cbor2.dumps(body) if content_format == 60 else orjson.dumps(body)
    outcome(payload, content_format)


labels = st.sampled_from(sorted(set(LABELS_CBOR.values()) | {"x", "x_"}))
records = st.dictionaries(
    labels,
    st.one_of(
        st.text(alphabet="ab/:", min_size=0, max_size=5),
        st.floats(),
        st.integers(-(2**40), 2**40),
        st.booleans(),
        st.none(),
    ),
    max_size=6,
)


@given(st.lists(records, max_size=5), st.booleans())
def test_senml_label_soup(pack: list[dict[str, Any]], as_cbor: bool) -> None:
    if as_cbor:
        numbers = {v: k for k, v in LABELS_CBOR.items()}
        payload = cbor2.dumps([{numbers.get(k, k): v for k, v in r.items()} for r in pack])
        outcome(payload, 112)
    else:
        try:
            payload = orjson.dumps(pack)
        except orjson.JSONEncodeError:
            return
        outcome(payload, 110)


# Identifiers without control characters (those are refused: test_events_controls.py).
text = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=12)
scalar_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.text(max_size=12),
    st.booleans(),
)


@given(text, text, text, text, scalar_values, st.none() | text, st.integers(0, 253_402_300_799))
def test_valid_events_round_trip(
    namespace: str,
    sender: str,
    origin: str,
    type_: str,
    value: Any,
    unit: str | None,
    seconds: int,
) -> None:
    payload: dict[str, Any] = {"type": type_, "value": value}
    if unit is not None:
        payload["unit"] = unit
    body = {
        "namespace": namespace,
        "sender": sender,
        "origin": origin,
        "payload": payload,
        "timestamp": seconds,
    }
    for encoded, content_format in ((orjson.dumps(body), 50), (cbor2.dumps(body), 60)):
        [event] = decode_events(
            encoded, content_format, source="h:1", mid=1, received_ms=5, worker=0, limits=ANY_TIME
        )
        assert (event.namespace, event.sender, event.origin, event.type) == (
            namespace,
            sender,
            origin,
            type_,
        )
        assert event.value == value and (type(event.value) is bool) == (type(value) is bool)
        assert event.unit == unit
        assert event.timestamp_ms == seconds * 1000
