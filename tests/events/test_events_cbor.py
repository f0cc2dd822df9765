"""CBOR bodies (Content-Format 60): the same events as JSON, and CBOR's own hazards."""

from __future__ import annotations

import datetime
import decimal
import uuid
from dataclasses import replace
from typing import Any

import cbor2
import pytest

from collector.events import InvalidEvent

from .helpers import ANY_TIME, RECEIVED_MS, decode

EVENT = {
    "sender": "demo",
    "origin": "probe1",
    "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
    "timestamp": "2026-11-25T14:08:24.771Z",
}

# A byte-string key: a valid CBOR map, but field names must be text.
BYTES_KEYED: dict[Any, Any] = {**EVENT, b"k": 1}
BYTES_KEYED_PAYLOAD: dict[Any, Any] = {"type": "t", "value": 1, b"k": 1}


def test_single_event() -> None:
    [event] = decode(cbor2.dumps(EVENT), 60)
    assert (event.sender, event.origin, event.type, event.value, event.unit) == (
        "demo",
        "probe1",
        "temperature",
        15.5,
        "Cel",
    )
    assert event.timestamp_ms == 1795615704771


def test_array_of_events_and_value_kinds() -> None:
    values = [1, -(2**64), 2**64 - 1, 0.5, "on", False]
    body = [{**EVENT, "payload": {"type": "t", "value": v}} for v in values]
    events = decode(cbor2.dumps(body), 60)
    assert [e.value for e in events] == [1.0, float(-(2**64)), float(2**64 - 1), 0.5, "on", False]


def test_half_and_single_precision_floats() -> None:
    # 0xf9 3e00 is 1.5 as a half float; 0xfa 3fc00000 is 1.5 as a single float.
    d = cbor2.dumps
    head = b"\xa3" + d("sender") + d("demo") + d("origin") + d("p") + d("payload")
    head += b"\xa2" + d("type") + d("t") + d("value")
    for encoded in (b"\xf9\x3e\x00", b"\xfa\x3f\xc0\x00\x00"):
        [event] = decode(head + encoded, 60)
        assert event.value == 1.5


def test_epoch_timestamp_and_default() -> None:
    [timed] = decode(cbor2.dumps({**EVENT, "timestamp": 1_500_000_000}), 60)
    assert timed.timestamp_ms == 1_500_000_000_000
    untimed = {k: v for k, v in EVENT.items() if k != "timestamp"}
    [event] = decode(cbor2.dumps(untimed), 60)
    assert event.timestamp_ms == RECEIVED_MS


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "body: malformed CBOR"),
        (b"\xa1", "body: malformed CBOR"),  # map with a missing key
        (b"\x1f", "body: malformed CBOR"),  # reserved additional information
        (b"\xff", "body: malformed CBOR"),  # a lone break
        (b"\x7b\x00\x00\x00\x10\x00\x00\x00\x00", "body: malformed CBOR"),  # 64 GiB text claim
        (cbor2.dumps(EVENT) + b"\x00", "body: trailing bytes after the CBOR item"),
        (b"\xc1\x1a\x51\x4b\x67\xb0", "body: CBOR tags are not accepted"),  # tag 1 epoch
        (b"\xd9\xd9\xf7" + cbor2.dumps(EVENT), "body: CBOR tags are not accepted"),  # 55799
        (b"\xd8\x63\x01", "body: CBOR tags are not accepted"),  # unknown tag 99
        (cbor2.dumps({1: "x"}), "body: malformed CBOR"),  # integer keys
        (cbor2.dumps(BYTES_KEYED), "body: field names must be strings"),
        (cbor2.dumps([EVENT, BYTES_KEYED]), "event[1]: field names must be strings"),
        (
            cbor2.dumps({**EVENT, "payload": BYTES_KEYED_PAYLOAD}),
            "payload: field names must be strings",
        ),
        (b"\xa2\x61a\x01\x61a\x02", "body: malformed CBOR"),  # duplicate keys
        (b"\x81" * 100 + b"\x00", "body: malformed CBOR"),  # nested too deeply
        (cbor2.dumps([]), "body: empty array of events"),
        (cbor2.dumps("x"), "body: must be an event object or an array of events"),
        (b"\xf7", "body: must be an event object or an array of events"),  # undefined
        (b"\xf0", "body: must be an event object or an array of events"),  # simple(16)
        (cbor2.dumps({**EVENT, "sender": b"demo"}), "sender: must be a string"),
        (
            cbor2.dumps({**EVENT, "payload": {"type": "t", "value": None}}),
            "payload.value: must be a number, a string or a boolean",
        ),
        (
            cbor2.dumps({**EVENT, "payload": {"type": "t", "value": float("nan")}}),
            "payload.value: must be a finite number",
        ),
        (
            cbor2.dumps({**EVENT, "payload": {"type": "t", "value": float("-inf")}}),
            "payload.value: must be a finite number",
        ),
        (
            cbor2.dumps({**EVENT, "payload": {"type": "t", "value": b"\x01"}}),
            "payload.value: must be a number, a string or a boolean",
        ),
        (
            cbor2.dumps([EVENT, {**EVENT, "timestamp": float("nan")}]),
            "event[1].timestamp: not an RFC 3339 date-time or epoch seconds in 1970..9999",
        ),
    ],
)
def test_invalid_cbor_bodies(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(payload, 60)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "semantic",
    [
        datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        decimal.Decimal("1.5"),
        uuid.UUID(int=1),
        2**70,  # a bignum is tag 2
    ],
)
def test_tagged_values_are_refused(semantic: object) -> None:
    payload = cbor2.dumps({**EVENT, "payload": {"type": "t", "value": semantic}})
    with pytest.raises(InvalidEvent, match=r"^body: CBOR tags are not accepted$"):
        decode(payload, 60)


@pytest.mark.parametrize("size", [10, 4096, 12000])
def test_trailing_bytes_are_found_past_the_decoder_read_size(size: int) -> None:
    # cbor2 reads its stream in chunks; the check must still see the item's true end.
    item = cbor2.dumps({**EVENT, "payload": {"type": "t", "value": "x" * size}})
    limits = replace(ANY_TIME, max_value_string=size)
    assert decode(item, 60, limits=limits)[0].value == "x" * size
    with pytest.raises(InvalidEvent, match=r"^body: trailing bytes after the CBOR item$"):
        decode(item + b"\x00", 60, limits=limits)
