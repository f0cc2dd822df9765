"""`coap.RequestShapes`: recognising a request from its option bytes is exact.

A match must promise what `coap.decode` would say (type, Message ID, token, the
registered options, payload), and a registered request must always match; anything
else (near misses, malformed bytes) is left to the decoder.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from coap import Code, Message, OptionNumber, Type

PATH = (int(OptionNumber.URI_PATH), b"events")
CF_JSON = (int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(50))
SHAPES = coap.shapes_for_paths(int(Code.POST), [("events",), ("event",)], [None, 50, 60, 112])


@pytest.mark.parametrize(
    ("options", "fmt"),
    [((PATH,), None), ((PATH, CF_JSON), 50), (((11, b"event"), (12, b"\x70")), 112)],
)
def test_a_registered_request_matches_with_its_value(
    options: tuple[tuple[int, bytes], ...], fmt: int | None
) -> None:
    data = coap.encode(Message(Type.NON, Code.POST, 0x1234, b"tok", options, b"{}"))
    assert SHAPES.match(data) == (int(Type.NON), 0x1234, b"tok", fmt, b"{}")


@pytest.mark.parametrize(
    "data",
    [
        coap.encode(Message(Type.CON, Code.POST, 1, b"", (PATH,))),  # no payload
        coap.encode(Message(Type.CON, Code.GET, 1, b"", (PATH,), b"x")),  # another code
        coap.encode(Message(Type.ACK, Code.POST, 1, b"", (PATH,), b"x")),  # not a request type
        coap.encode(Message(Type.CON, Code.POST, 1, b"", (PATH, (15, b"a=b")), b"x")),  # extra
        coap.encode(Message(Type.CON, Code.POST, 1, b"", (PATH,))) + b"\xff",  # bare marker
        b"\x40\x02\x00\x01\xb6events",  # no marker at all
    ],
    ids=["no-payload", "get", "ack", "extra-option", "bare-marker", "no-marker"],
)
def test_near_misses_are_left_to_the_decoder(data: bytes) -> None:
    assert SHAPES.match(data) is None


def test_a_shape_holding_the_marker_byte_is_refused() -> None:
    with pytest.raises(ValueError):
        coap.RequestShapes(int(Code.POST), {((11, b"\xff"),): 1})


def test_the_empty_table_matches_nothing() -> None:
    data = coap.encode(Message(Type.CON, Code.POST, 1, b"", (PATH,), b"x"))
    assert coap.RequestShapes.empty().match(data) is None


@given(st.binary(max_size=40))
def test_any_match_is_exactly_what_the_decoder_reads(tail: bytes) -> None:
    """Arbitrary bytes after a POST header, with a registered option sequence in front
    of them half the time: whenever `match` says yes, the decoder agrees field by field."""
    for data in (b"\x52\x02\x00\x07ab" + tail, b"\x52\x02\x00\x07ab\xb6events" + tail):
        got = SHAPES.match(data)
        if got is None:
            continue
        msg = coap.decode(data)
        mtype, mid, token, fmt, payload = got
        assert (msg.type, msg.mid, msg.token, msg.payload) == (mtype, mid, token, payload)
        assert msg.uri_path in (("events",), ("event",))
        assert msg.content_format == fmt
        assert all(n in (11, 12) for n, _v in msg.options)


@given(
    st.sampled_from([Type.CON, Type.NON]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    st.sampled_from([None, 50, 60, 112]),
    st.binary(min_size=1, max_size=64),
)
def test_every_registered_request_matches(
    mtype: Type, mid: int, token: bytes, fmt: int | None, payload: bytes
) -> None:
    options = (PATH,) if fmt is None else (PATH, (12, coap.encode_uint(fmt)))
    data = coap.encode(Message(mtype, Code.POST, mid, token, options, payload))
    assert SHAPES.match(data) == (int(mtype), mid, token, fmt, payload)
