"""Control characters (C0, DEL, C1) in identifiers are refused with a 4.00 naming the
field (issue 11: a fuzzed store held 281 rows with NUL and other controls in names)."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coap.codes import Code
from collector.events import InvalidEvent, check_identifier

from .helpers import decode

EVENT: dict[str, Any] = {
    "namespace": "lab",
    "sender": "dev-17",
    "origin": "probe1",
    "payload": {"type": "temperature", "value": 21.5, "unit": "Cel"},
    "id": "k-1",
}
FIELDS = ["namespace", "sender", "origin", "payload.type", "payload.unit", "id"]
CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]


def with_field(event: dict[str, Any], field: str, text: str) -> dict[str, Any]:
    out = {**event, "payload": {**event["payload"]}}
    if field.startswith("payload."):
        out["payload"][field.removeprefix("payload.")] = text
    else:
        out[field] = text
    return out


def encode(body: Any, content_format: int | None) -> bytes:
    return cbor2.dumps(body) if content_format == 60 else orjson.dumps(body)


@pytest.mark.parametrize("content_format", [None, 60])
@pytest.mark.parametrize("field", FIELDS)
def test_nul_in_an_identifier_is_refused_naming_the_field(
    field: str, content_format: int | None
) -> None:
    body = [EVENT, EVENT, with_field(EVENT, field, "a\x00b")]
    with pytest.raises(InvalidEvent, match=rf"^event\[2\]\.{field}: control character$") as info:
        decode(encode(body, content_format), content_format)
    assert info.value.code == Code.BAD_REQUEST


def test_single_event_names_the_field_without_an_index() -> None:
    with pytest.raises(InvalidEvent, match=r"^sender: control character$"):
        decode(orjson.dumps(with_field(EVENT, "sender", "dev\x1b[31m")))


@pytest.mark.parametrize("char", ["\x7f", "\x85", "\x9f", "\n", "\t"])
def test_raw_del_and_c1_are_refused_like_escaped_controls(char: str) -> None:
    # JSON may carry DEL and C1 unescaped (UTF-8 bytes), C0 only escaped.
    raw = orjson.dumps(with_field(EVENT, "origin", f"p{char}1"))
    with pytest.raises(InvalidEvent, match=r"^origin: control character$"):
        decode(raw)


def test_printable_unicode_and_escapes_of_printable_characters_are_accepted() -> None:
    body = b'{"sender":"d\\u00e9v","origin":"\xc2\xb0probe","payload":{"type":"t\\/x","value":1,"unit":"\xc2\xb0C"}}'
    [event] = decode(body)
    assert (event.sender, event.origin, event.type, event.unit) == ("dév", "°probe", "t/x", "°C")


def test_a_control_character_in_a_string_value_is_kept() -> None:
    # Only identifiers are names; a string reading may be any text.
    [event] = decode(orjson.dumps({**EVENT, "payload": {"type": "log", "value": "a\nb\x00"}}))
    assert event.value == "a\nb\x00"


identifier = st.text(min_size=1, max_size=12)


@given(
    st.sampled_from(FIELDS),
    identifier,
    st.sampled_from([None, 60]),
)
def test_an_identifier_is_accepted_exactly_when_it_holds_no_control_character(
    field: str, text: str, content_format: int | None
) -> None:
    body = encode(with_field(EVENT, field, text), content_format)
    if any(c in CONTROLS for c in text):
        with pytest.raises(InvalidEvent, match=rf"^{field}: control character$"):
            decode(body, content_format)
    else:
        [event] = decode(body, content_format)
        value = {
            "namespace": event.namespace,
            "sender": event.sender,
            "origin": event.origin,
            "payload.type": event.type,
            "payload.unit": event.unit,
            "id": event.client_id,
        }[field]
        assert value == text


@given(identifier)
def test_check_identifier_refuses_exactly_the_control_characters(text: str) -> None:
    if any(c in CONTROLS for c in text):
        with pytest.raises(InvalidEvent, match=r"^\?sender: control character$"):
            check_identifier(text, "?sender")
    else:
        assert check_identifier(text, "?sender") == text


def test_check_identifier_bounds_the_length() -> None:
    with pytest.raises(InvalidEvent, match=r"^\?namespace: must be 1-4 characters$"):
        check_identifier("", "?namespace", 4)
    with pytest.raises(InvalidEvent, match=r"^\?namespace: must be 1-4 characters$"):
        check_identifier("abcde", "?namespace", 4)


@pytest.mark.parametrize("content_format", [110, 112])
def test_senml_unit_and_query_names_are_checked(content_format: int) -> None:
    def pack(unit: str) -> bytes:
        records = [{"n": "probe1/t", "v": 1.0, "u": unit}]
        if content_format == 112:
            return cbor2.dumps([{0: r["n"], 2: r["v"], 1: r["u"]} for r in records])
        return orjson.dumps(records)

    with pytest.raises(InvalidEvent, match=r"^record\[0\]\.u: control character$"):
        decode(pack("C\x00"), content_format)
    with pytest.raises(InvalidEvent, match=r"^\?sender: control character$"):
        decode(pack("Cel"), content_format, default_sender="dev\x00")
    with pytest.raises(InvalidEvent, match=r"^\?namespace: control character$"):
        decode(pack("Cel"), content_format, default_namespace="lab\x85")
    [event] = decode(pack("Cel"), content_format, default_sender="dev-17")
    assert event.sender == "dev-17" and event.unit == "Cel"
