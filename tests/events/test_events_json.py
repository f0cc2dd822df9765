"""JSON bodies (Content-Format 50 or none): valid events, each kind of invalid one."""

from __future__ import annotations

import datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coap.codes import Code
from collector.events import (
    _RFC3339,
    MAX_TIMESTAMP_MS,
    EventError,
    InvalidEvent,
    Limits,
    UnsupportedFormat,
    _rfc3339_ms,
    parse_timestamp,
    scoped_id,
)

from .helpers import RECEIVED_MS, SOURCE, decode

MINIMAL = {"sender": "demo", "origin": "probe1", "payload": {"type": "temperature", "value": 15}}


def body(**changes: object) -> bytes:
    event = {**MINIMAL, **changes}
    return orjson.dumps(event)


def test_thesis_event_with_every_field() -> None:
    [event] = decode(
        b'{"namespace": "default", "sender": "demoMemoria", "origin": "probe1",'
        b' "payload": {"type": "temperature", "value": 16.5, "unit": "Cel"},'
        b' "timestamp": "2018-06-01T14:08:24.772Z", "id": "k-1"}'
    )
    assert event.client_id == "k-1" and event.id == scoped_id("default", "demoMemoria", "k-1")
    assert event.timestamp_ms == 1527862104772
    assert event.received_ms == RECEIVED_MS
    assert (event.namespace, event.sender, event.origin) == ("default", "demoMemoria", "probe1")
    assert (event.type, event.value, event.unit) == ("temperature", 16.5, "Cel")
    assert (event.source, event.worker) == (SOURCE, 1)


def test_defaults_namespace_unit_timestamp() -> None:
    [event] = decode(body())
    assert event.namespace == "default"
    assert event.unit is None
    assert event.timestamp_ms == RECEIVED_MS
    assert event.value == 15.0 and type(event.value) is float
    assert len(event.id) == 32 and int(event.id, 16) >= 0


def test_null_optional_fields_mean_absent() -> None:
    [event] = decode(
        body(
            namespace=None, timestamp=None, id=None, payload={"type": "t", "value": 1, "unit": None}
        )
    )
    [plain] = decode(body(payload={"type": "t", "value": 1}))
    assert event == plain
    assert (event.namespace, event.unit, event.timestamp_ms) == ("default", None, RECEIVED_MS)


@pytest.mark.parametrize("field", ["sender", "origin"])
def test_null_required_fields_are_rejected(field: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"^{field}: must be a string$"):
        decode(body(**{field: None}))


@pytest.mark.parametrize("content_format", [None, 50])
def test_no_content_format_is_json(content_format: int | None) -> None:
    assert decode(body(), content_format)[0].origin == "probe1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(15, 15.0), (-0.5, -0.5), (1e300, 1e300), ("open", "open"), ("", ""), (True, True)],
)
def test_value_kinds(value: object, expected: object) -> None:
    [event] = decode(body(payload={"type": "t", "value": value}))
    assert event.value == expected
    assert type(event.value) is type(expected)


def test_array_of_events_keeps_order() -> None:
    events = decode(orjson.dumps([body_dict(origin=f"p{i}") for i in range(5)]))
    assert [e.origin for e in events] == [f"p{i}" for i in range(5)]


def body_dict(**changes: object) -> dict[str, object]:
    return {**MINIMAL, **changes}


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2018-06-01T14:08:24.771Z", 1527862104771),
        ("2018-06-01T14:08:24Z", 1527862104000),
        ("2018-06-01t14:08:24.7z", 1527862104700),
        ("2018-06-01 14:08:24.771999999Z", 1527862104771),  # truncated to ms
        ("2018-06-01T16:08:24.771+02:00", 1527862104771),
        ("2018-06-01T09:38:24.771-04:30", 1527862104771),
        ("1970-01-01T00:00:00Z", 0),
        ("2016-12-31T23:59:60Z", 1483228800000),  # leap second rolls over
        ("2024-02-29T00:00:00Z", 1709164800000),
        ("9999-12-31T23:59:59.999Z", 253402300799999),
        (1527862104, 1527862104000),
        (1527862104.771, 1527862104771),
        (0, 0),
    ],
)
def test_timestamp_forms(timestamp: object, expected_ms: int) -> None:
    [event] = decode(body(timestamp=timestamp))
    assert event.timestamp_ms == expected_ms
    assert event.received_ms == RECEIVED_MS


@pytest.mark.parametrize(
    "timestamp",
    [
        "2018-06-01T14:08:24.771",  # no offset: local time is ambiguous
        "2018-06-01",
        "20180601T14:08:24.771Z",  # the thesis' garbled form
        "2023-02-29T00:00:00Z",
        "2018-13-01T00:00:00Z",
        "2018-00-01T00:00:00Z",
        "2018-06-31T00:00:00Z",
        "2018-06-01T24:00:00Z",
        "2018-06-01T23:60:00Z",
        "2018-06-01T23:00:61Z",
        "2018-06-01T23:00:00+24:00",
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:30:00+01:00",  # 1969 in UTC
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
        "\uff12\uff10\uff11\uff18-06-01T14:08:24Z",  # non-ASCII (fullwidth) digits
        "",
        -1,
        253402300800,  # year 10000
        1527862104771,  # milliseconds sent as seconds: year ~50000
        True,
        [2018],
    ],
)
def test_bad_timestamps_are_rejected(timestamp: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^timestamp: "):
        decode(body(timestamp=timestamp))


@given(
    st.datetimes(
        min_value=datetime.datetime(1969, 12, 30), max_value=datetime.datetime(9999, 12, 31)
    ),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.integers(0, 9),
    st.sampled_from("Tt "),
    st.booleans(),
)
def test_rfc3339_fast_path_agrees_with_the_arithmetic(
    moment: datetime.datetime, offset_min: int, digits: int, sep: str, zulu: bool
) -> None:
    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]
    if zulu and offset_min == 0:
        text += "Z"
    else:
        sign = "+" if offset_min >= 0 else "-"
        text += f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    match = _RFC3339.match(text)
    assert match is not None
    expected = _rfc3339_ms(match)
    assert expected is not None
    in_range = 0 <= expected < MAX_TIMESTAMP_MS
    assert parse_timestamp(text) == (expected if in_range else None)


def test_parse_timestamp_rejects_non_finite() -> None:
    assert parse_timestamp(float("nan")) is None
    assert parse_timestamp(float("inf")) is None


@pytest.mark.parametrize("seconds", [1e306, -1e306, 1.7976931348623157e308])
def test_a_finite_timestamp_whose_milliseconds_overflow_is_a_bad_timestamp(seconds: float) -> None:
    """Regression (found by tests/server/test_server_fuzz.py): a finite float above
    ~1.8e305 seconds overflowed to infinity in milliseconds, and round() raised
    OverflowError, so the worker logged a failure and answered nothing instead of 4.00."""
    assert parse_timestamp(seconds) is None
    with pytest.raises(InvalidEvent, match=r"^timestamp: "):
        decode(body(timestamp=seconds))


# Each invalid body and the diagnostic it must produce (the field comes first).
INVALID = [
    (b"", "body: malformed JSON"),
    (b"{", "body: malformed JSON"),
    (b"\xff", "body: malformed JSON"),
    (b'{"a":1} x', "body: malformed JSON"),
    (b"[]", "body: empty array of events"),
    (b"42", "body: must be an event object or an array of events"),
    (b'"event"', "body: must be an event object or an array of events"),
    (b"null", "body: must be an event object or an array of events"),
    (b"[1]", "event[0]: must be an object"),
    (b'{"origin":"o","payload":{"type":"t","value":1}}', "sender: required"),
    (b'{"sender":"s","payload":{"type":"t","value":1}}', "origin: required"),
    (b'{"sender":"s","origin":"o"}', "payload: required"),
    (b'{"sender":"s","origin":"o","payload":[1]}', "payload: must be an object"),
    (b'{"sender":"s","origin":"o","payload":{"value":1}}', "payload.type: required"),
    (b'{"sender":"s","origin":"o","payload":{"type":"t"}}', "payload.value: required"),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":null}}',
        "payload.value: must be a number, a string or a boolean",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":[1]}}',
        "payload.value: must be a number, a string or a boolean",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":{"a":1}}}',
        "payload.value: must be a number, a string or a boolean",
    ),
    (b'{"sender":"s","origin":"o","payload":{"type":"t","value":1e999}}', "body: malformed JSON"),
    (b'{"sender":1,"origin":"o","payload":{"type":"t","value":1}}', "sender: must be a string"),
    (b'{"sender":"","origin":"o","payload":{"type":"t","value":1}}', "sender: must not be empty"),
    (b'{"sender":"s","origin":true,"payload":{"type":"t","value":1}}', "origin: must be a string"),
    (
        b'{"sender":"s","origin":"o","namespace":7,"payload":{"type":"t","value":1}}',
        "namespace: must be a string",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"","value":1}}',
        "payload.type: must not be empty",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":1,"unit":5}}',
        "payload.unit: must be a string",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":1,"colour":"red"}}',
        "payload.colour: unknown field",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":1,"unit":"C","x":1}}',
        "payload.x: unknown field",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":1},"timestmap":1}',
        "timestmap: unknown field",
    ),
    (
        b'{"sender":"s","origin":"o","payload":{"type":"t","value":1},"id":3}',
        "id: must be a string",
    ),
    (
        b'[{"sender":"s","origin":"o","payload":{"type":"t","value":1}},'
        b'{"sender":"s","origin":"o","payload":{"type":"t"}}]',
        "event[1].payload.value: required",
    ),
    (
        b'[{"sender":"s","origin":"o","payload":{"type":"t","value":1},"extra":0},'
        b'{"sender":"s","origin":"o","payload":{"type":"t"}}]',
        "event[0].extra: unknown field",  # the first error wins
    ),
]


@pytest.mark.parametrize(("payload", "message"), INVALID)
def test_invalid_bodies_name_their_field(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(payload)
    assert str(info.value) == message
    assert info.value.code == Code.BAD_REQUEST


def test_limits_on_strings_events_and_values() -> None:
    limits = Limits(max_events=3, max_string=8, max_value_string=10)
    ok = body(sender="s" * 8, payload={"type": "t", "value": "v" * 10})
    assert decode(ok, limits=limits)[0].sender == "s" * 8
    for field in ("sender", "origin", "namespace", "id"):
        with pytest.raises(InvalidEvent, match=rf"^{field}: longer than 8 characters$"):
            decode(body(payload={"type": "t", "value": 1}, **{field: "x" * 9}), limits=limits)
    with pytest.raises(InvalidEvent, match=r"^payload.unit: longer than 8"):
        decode(body(payload={"type": "t", "value": 1, "unit": "u" * 9}), limits=limits)
    with pytest.raises(InvalidEvent, match=r"^payload.value: longer than 10"):
        decode(body(payload={"type": "t", "value": "v" * 11}), limits=limits)
    small = {**MINIMAL, "payload": {"type": "t", "value": 1}}
    with pytest.raises(InvalidEvent, match=r"^body: more than 3 events$"):
        decode(orjson.dumps([small] * 4), limits=limits)
    assert len(decode(orjson.dumps([small] * 3), limits=limits)) == 3


def test_default_limit_is_256_events() -> None:
    assert len(decode(orjson.dumps([MINIMAL] * 256))) == 256
    with pytest.raises(InvalidEvent):
        decode(orjson.dumps([MINIMAL] * 257))


@pytest.mark.parametrize("content_format", [0, 40, 41, 42, 51, 61, 111, 113, 65535])
def test_other_content_formats_are_unsupported(content_format: int) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        decode(body(), content_format)
    assert info.value.code == Code.UNSUPPORTED_CONTENT_FORMAT
    assert isinstance(info.value, EventError)


def test_document_shape_numeric() -> None:
    [event] = decode(
        body(payload={"type": "temperature", "value": 15.5, "unit": "Cel"}, timestamp=1.5e9)
    )
    assert event.document() == {
        "@timestamp": 1_500_000_000_000,
        "received_at": RECEIVED_MS,
        "namespace": "default",
        "sender": "demo",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
        "source": SOURCE,
        "worker": 1,
        "event_id": event.id,
    }
    orjson.dumps(event.document())  # JSON-ready


@pytest.mark.parametrize(
    ("value", "key"), [("open", "value_string"), (False, "value_bool"), (True, "value_bool")]
)
def test_document_shape_string_and_bool(value: object, key: str) -> None:
    [event] = decode(body(payload={"type": "door", "value": value}))
    assert event.document()["payload"] == {"type": "door", key: value}
