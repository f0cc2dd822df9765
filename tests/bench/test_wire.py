"""Pre-encoded requests: valid CoAP after any patch, distinct events, right formats."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loadgen import wire

import coap


@pytest.mark.parametrize("fmt", wire.FORMATS)
@pytest.mark.parametrize("events", [1, 3])
def test_template_decodes_to_the_request_the_collector_expects(fmt: str, events: int) -> None:
    t = wire.build_template(fmt, "dev-17", events, 0xABCD0011)
    msg = coap.decode(bytes(t.patch(0x1234, 99)))
    assert msg.type == coap.Type.CON
    assert msg.code == coap.Code.POST
    assert msg.mid == 0x1234
    assert msg.token == (99).to_bytes(4, "big")
    assert msg.option_values(int(coap.OptionNumber.URI_PATH)) == [b"events"]
    body = msg.payload
    doc = json.loads(body) if "json" in fmt else cbor2.loads(body)
    items = doc if isinstance(doc, list) else [doc]
    assert len(items) == events
    if fmt in ("json", "cbor"):
        assert all(e["origin"] == "dev-17" and e["payload"]["value"] == 21.5 for e in items)
        ids = [e["id"] for e in items]
        assert len(set(ids)) == events
    else:
        assert all(r["n"] == "dev-17/temperature" for r in items)
        assert len({r["t"] for r in items}) == events


@pytest.mark.parametrize("fmt", wire.FORMATS)
def test_non_template_is_non(fmt: str) -> None:
    t = wire.build_template(fmt, "dev-1", 1, 1, con=False)
    assert coap.decode(bytes(t.patch(1, 1))).type == coap.Type.NON


@given(
    st.sampled_from(wire.FORMATS),
    st.integers(0, 0xFFFF),
    st.integers(0, wire.MAX_SEQ if hasattr(wire, "MAX_SEQ") else 60_000),
    st.integers(0, 0xFFFF),
)
def test_every_patch_keeps_the_datagram_valid_and_events_unique(
    fmt: str, mid: int, seq: int, other: int
) -> None:
    t = wire.build_template(fmt, "dev-3", 2, 0x12345678)
    a = coap.decode(bytes(t.patch(mid, seq)))
    b = coap.decode(bytes(t.patch(mid, seq + 1)))
    assert a.mid == mid and int.from_bytes(a.token, "big") == seq
    assert len(a.payload) == len(b.payload)
    assert a.payload != b.payload  # the next request's events differ


@given(st.sampled_from(wire.FORMATS), st.integers(0, 0xFFFF), st.integers(0, 60_000))
def test_the_fast_patcher_writes_what_patch_writes(fmt: str, mid: int, seq: int) -> None:
    a = wire.build_template(fmt, "dev-9", 1, 0x0BADCAFE)
    b = wire.build_template(fmt, "dev-9", 1, 0x0BADCAFE)
    assert bytes(a.patcher()(mid, seq)) == bytes(b.patch(mid, seq))


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        wire.build_template("xml", "dev-1", 1, 1)


def test_code_str() -> None:
    assert wire.code_str(0x41) == "2.01"
    assert wire.code_str(0xA3) == "5.03"
