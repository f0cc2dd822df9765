"""SenML JSON (110) and SenML CBOR (112): RFC 8428 examples, base resolution, errors."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
import pytest

from collector.events import Event, InvalidEvent, Limits
from collector.senml import LABELS_CBOR, split_name

from .helpers import RECEIVED_MS, decode

TEXT_TO_CBOR = {text: number for number, text in LABELS_CBOR.items()}


def as_cbor(pack: list[Any]) -> bytes:
    """The pack in SenML CBOR, with the integer labels of RFC 8428 §6."""
    return cbor2.dumps([{TEXT_TO_CBOR.get(k, k): v for k, v in r.items()} for r in pack])


def both(pack: list[Any], **kw: Any) -> list[Event]:
    """Decode the pack as SenML JSON and as SenML CBOR; both must agree."""
    from_json = decode(orjson.dumps(pack), 110, **kw)
    from_cbor = decode(as_cbor(pack), 112, **kw)
    assert from_json == from_cbor
    return from_json


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    return [(e.origin, e.type, e.value, e.unit, e.timestamp_ms) for e in events]


URN = "urn:dev:ow:10e2073a01080063"


def test_rfc8428_single_datapoint() -> None:
    # RFC 8428 §5.1.1: a bare device name; the unit names the measurement.
    events = both([{"n": URN, "u": "Cel", "v": 23.1}])
    assert summary(events) == [(URN, "Cel", 23.1, "Cel", RECEIVED_MS)]
    [event] = events
    assert (event.sender, event.namespace) == ("senml", "default")


def test_rfc8428_multiple_datapoints() -> None:
    # RFC 8428 §5.1.2.
    pack = [
        {"bn": URN + ":", "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "u": "A", "v": 1.2},
    ]
    assert summary(both(pack)) == [
        (URN, "voltage", 120.1, "V", RECEIVED_MS),
        (URN, "current", 1.2, "A", RECEIVED_MS),
    ]


def test_rfc8428_multiple_measurements_with_base_time_and_unit() -> None:
    # RFC 8428 §5.1.3: bt is absolute, t is relative to it; bu applies where u is absent.
    bn = "urn:dev:ow:10e2073a0108006:"
    pack = [
        {
            "bn": bn,
            "bt": 1.276020076001e09,
            "bu": "A",
            "bver": 5,
            "n": "voltage",
            "u": "V",
            "v": 120.1,
        },
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
        {"n": "current", "t": -3, "v": 1.4},
        {"n": "current", "t": -2, "v": 1.5},
        {"n": "current", "t": -1, "v": 1.6},
        {"n": "current", "v": 1.7},
    ]
    origin = "urn:dev:ow:10e2073a0108006"
    assert summary(both(pack)) == [
        (origin, "voltage", 120.1, "V", 1276020076001),
        (origin, "current", 1.2, "A", 1276020071001),
        (origin, "current", 1.3, "A", 1276020072001),
        (origin, "current", 1.4, "A", 1276020073001),
        (origin, "current", 1.5, "A", 1276020074001),
        (origin, "current", 1.6, "A", 1276020075001),
        (origin, "current", 1.7, "A", 1276020076001),
    ]


def test_rfc8428_humidity_and_location_pack() -> None:
    # The RFC 8428 §5.1 example whose records carry no `n`: the resolved name is the
    # bare base name, so each record's unit names its type.
    pack = [
        {"bn": URN + ":", "bt": 1.320067464e09, "bu": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"u": "lat", "v": 60.07965},
        {"t": 60, "v": 20.3},
        {"u": "%EL", "t": 150, "v": 98},
    ]
    assert summary(both(pack)) == [
        (URN, "%RH", 20.0, "%RH", 1320067464000),
        (URN, "lon", 24.30621, "lon", 1320067464000),
        (URN, "lat", 60.07965, "lat", 1320067464000),
        (URN, "%RH", 20.3, "%RH", 1320067524000),
        (URN, "%EL", 98.0, "%EL", 1320067614000),
    ]


def test_rfc8428_multiple_data_types_without_data_value() -> None:
    pack = [
        {"bn": URN + ":", "n": "temp", "u": "Cel", "v": 23.1},
        {"n": "label", "vs": "Machine Room"},
        {"n": "open", "vb": False},
    ]
    values = [(e.type, e.value) for e in both(pack)]
    assert values == [("temp", 23.1), ("label", "Machine Room"), ("open", False)]


def test_data_values_are_refused() -> None:
    pack = [{"bn": URN + ":", "n": "temp", "v": 1}, {"n": "nfc-reader", "vd": "aGkgCg"}]
    with pytest.raises(InvalidEvent, match=r"^record\[1\]\.vd: data values are not supported$"):
        decode(orjson.dumps(pack), 110)


def test_sender_and_namespace_come_from_the_caller() -> None:
    [event] = both(
        [{"n": "temperature", "v": 3}], default_sender="gateway-7", default_namespace="farm"
    )
    # No separator in the name: the sender is also the origin.
    assert (event.namespace, event.sender, event.origin, event.type) == (
        "farm",
        "gateway-7",
        "gateway-7",
        "temperature",
    )


def test_base_value_sum_and_overrides() -> None:
    pack = [
        {"bn": "meter1/", "bv": 100, "bs": 10, "n": "a", "v": 1},
        {"n": "b", "v": 2},
        {"n": "energy", "s": 5},
        {"bn": "meter2/", "bv": 0, "n": "a", "v": 3},
        {"n": "c", "vs": "x", "u": "txt"},
    ]
    assert [(e.origin, e.type, e.value, e.unit) for e in both(pack)] == [
        ("meter1", "a", 101.0, None),
        ("meter1", "b", 102.0, None),
        ("meter1", "energy", 15.0, None),
        ("meter2", "a", 3.0, None),
        ("meter2", "c", "x", "txt"),
    ]


def test_relative_times_are_from_the_receive_time() -> None:
    pack = [{"n": "d/t", "v": 1, "t": -5}, {"n": "d/t", "v": 1, "t": 2.5}, {"n": "d/t", "v": 1}]
    events = both(pack)
    assert [e.timestamp_ms for e in events] == [RECEIVED_MS - 5000, RECEIVED_MS + 2500, RECEIVED_MS]


def test_relative_time_ids_depend_on_the_exchange_absolute_do_not() -> None:
    relative = orjson.dumps([{"n": "d/t", "v": 1}, {"n": "d/t", "v": 1}])
    a = decode(relative, 110, mid=1)
    b = decode(relative, 110, mid=2)
    assert a[0].id != a[1].id  # same reading twice in one pack: two events
    assert a[0].id != b[0].id
    absolute = orjson.dumps([{"n": "d/t", "v": 1, "t": 1.7e9}])
    assert decode(absolute, 110, mid=1)[0].id == decode(absolute, 110, mid=2, source="x:1")[0].id


def test_unknown_labels_are_ignored_unless_must_understand() -> None:
    [event] = both([{"n": "d/t", "v": 1, "foo": {"nested": [1, 2]}}])
    assert event.value == 1.0
    [event] = decode(cbor2.dumps([{0: "d/t", 2: 1, 99: "ignored", -99: 0}]), 112)
    assert event.type == "t"


def test_split_name_rules() -> None:
    assert split_name("probe1/temperature") == ("probe1", "temperature")
    assert split_name("a/b:c") == ("a/b", "c")
    assert split_name("temperature") == ("", "temperature")
    assert split_name("probe1/") == ("probe1", "")
    assert split_name(URN) == (URN, "")
    assert split_name(URN + ":") == (URN, "")
    assert split_name(URN + ":temp") == (URN, "temp")
    assert split_name(URN + ":temp:outdoor") == (URN, "temp:outdoor")
    assert split_name("urn:dev:mac") == ("urn:dev", "mac")


INVALID: list[tuple[Any, str]] = [
    ({"n": "d/t", "v": 1}, "body: a SenML pack must be an array of records"),
    ([], "body: empty SenML pack"),
    ([1], "record[0]: must be a map of labels"),
    ([{"v": 1}], "record[0].n: no name (neither bn nor n)"),
    ([{"n": "d/t"}], "record[0].v: required (one of v, vs, vb, or a sum s)"),
    ([{"n": "d/t", "v": "1"}], "record[0].v: must be a number"),
    ([{"n": "d/t", "v": True}], "record[0].v: must be a number"),
    ([{"n": "d/t", "v": None}], "record[0].v: must be a number"),
    ([{"n": "d/t", "vs": 1}], "record[0].vs: must be a string"),
    ([{"n": "d/t", "vb": 1}], "record[0].vb: must be a boolean"),
    ([{"n": "d/t", "s": "x"}], "record[0].s: must be a number"),
    ([{"n": "d/t", "v": 1, "vs": "x"}], "record[0].vs: more than one value field"),
    ([{"n": "d/t", "v": 1, "t": "now"}], "record[0].t: must be a number"),
    ([{"n": "d/t", "v": 1, "u": 5}], "record[0].u: must be a string"),
    ([{"n": "d/t", "v": 1, "u": ""}], "record[0].u: must not be empty"),
    ([{"n": 5, "v": 1}], "record[0].n: must be a string"),
    ([{"bn": ["d"], "n": "t", "v": 1}], "record[0].bn: must be a string"),
    ([{"bver": 11, "n": "d/t", "v": 1}], "record[0].bver: version 11 is not supported"),
    ([{"bver": "10", "n": "d/t", "v": 1}], "record[0].bver: must be a positive integer"),
    ([{"n": "d/t", "v": 1, "foo_": 1}], "record[0].foo_: unsupported must-understand field"),
    ([{"n": "d/t", "v": 1}, {"n": "d/t", "vb": "yes"}], "record[1].vb: must be a boolean"),
    ([{"n": "d/t", "v": 1, "bt": 1e20}], "record[0].t: resolved time outside years 1970..9999"),
    ([{"n": "d/t", "v": 1, "t": -(2**40)}], "record[0].t: resolved time outside years 1970..9999"),
    ([{"n": "d/", "v": 1}], "record[0].n: the name 'd/' has no measurement after its last"),
]


@pytest.mark.parametrize(("pack", "message"), INVALID)
def test_invalid_packs_name_record_and_label(pack: Any, message: str) -> None:
    for payload, content_format in ((orjson.dumps(pack), 110), (cbor2.dumps(pack), 112)):
        with pytest.raises(InvalidEvent) as info:
            decode(payload, content_format)
        assert str(info.value).startswith(message), content_format


@pytest.mark.parametrize("name", ["a b", "-dev/t", "/dev/t", "dév/t", "dev/t?", "dev\x00/t"])
def test_names_outside_the_rfc_alphabet_are_refused(name: str) -> None:
    with pytest.raises(InvalidEvent, match=r"^record\[0\]\.n: resolved name must start"):
        decode(orjson.dumps([{"n": name, "v": 1}]), 110)


def test_cbor_specific_errors() -> None:
    cases = [
        (cbor2.dumps([{2: 1, "v": 2, 0: "d/t"}]), "record[0].v: given twice"),
        (cbor2.dumps([{1.5: 1, 0: "d/t", 2: 1}]), "record[0]: labels must be integers or text"),
        (b"\xc1\x81\xa0", "body: CBOR tags are not accepted"),
        (cbor2.dumps([{0: "d/t", 2: 1}]) + b"\x00", "body: trailing bytes after the CBOR item"),
    ]
    for payload, message in cases:
        with pytest.raises(InvalidEvent) as info:
            decode(payload, 112)
        assert str(info.value) == message


def test_record_limit_and_string_limits() -> None:
    limits = Limits(max_events=2, max_string=4, max_value_string=3)
    assert len(decode(orjson.dumps([{"n": "d/t", "v": 1}] * 2), 110, limits=limits)) == 2
    with pytest.raises(InvalidEvent, match=r"^body: more than 2 records$"):
        decode(orjson.dumps([{"n": "d/t", "v": 1}] * 3), 110, limits=limits)
    with pytest.raises(InvalidEvent, match=r"^record\[0\]\.vs: longer than 3"):
        decode(orjson.dumps([{"n": "d/t", "vs": "abcd"}]), 110, limits=limits)
    with pytest.raises(InvalidEvent, match=r"^record\[0\]\.n: origin or type longer than 4"):
        decode(orjson.dumps([{"n": "device/t", "v": 1}]), 110, limits=limits)
