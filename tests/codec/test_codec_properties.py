"""Properties of the codec (hypothesis): round trips and h11's fuzz rule."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

import coap
from coap import Message, MessageFormatError

from .strategies import messages


@given(messages())
def test_decode_inverts_encode(message: Message) -> None:
    assert coap.decode(coap.encode(message)) == message


@given(messages())
def test_encode_inverts_decode_on_canonical_bytes(message: Message) -> None:
    datagram = coap.encode(message)
    assert coap.encode(coap.decode(datagram)) == datagram


def _decode_or_format_error(data: bytes) -> Message | None:
    try:
        return coap.decode(data)
    except MessageFormatError as error:
        # A recovered header is internally consistent: a MID needs a type.
        assert error.mid is None or error.type is not None
        assert error.token is None or len(error.token) <= 8
        return None


@given(st.binary(max_size=300))
@example(b"")
@example(b"\x40\x01\x00\x01\xff")
@example(b"\x40\x01\x00\x01\xe0")
def test_arbitrary_bytes_decode_or_raise_format_error(data: bytes) -> None:
    message = _decode_or_format_error(data)
    # Any bytes-like input is read the same way.
    assert _decode_or_format_error(bytearray(data)) == message
    assert _decode_or_format_error(memoryview(data)) == message
    if message is not None:
        # Every delta/length value has exactly one wire form and options are
        # ascending on the wire, so anything that decodes re-encodes to itself.
        assert coap.encode(message) == data


@given(messages(), st.data())
def test_mutated_datagrams_decode_or_raise_format_error(
    message: Message, data: st.DataObject
) -> None:
    # Random bytes rarely get past the header; mutating a valid datagram reaches
    # the option parser's corners (truncated extensions, reserved nibbles).
    datagram = bytearray(coap.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if action == "truncate":
            del datagram[data.draw(st.integers(0, len(datagram))) :]
        elif action == "insert":
            datagram.insert(
                data.draw(st.integers(0, len(datagram))), data.draw(st.integers(0, 255))
            )
        elif datagram:
            datagram[data.draw(st.integers(0, len(datagram) - 1))] = data.draw(st.integers(0, 255))
    decoded = _decode_or_format_error(bytes(datagram))
    if decoded is not None:
        assert coap.encode(decoded) == bytes(datagram)


@given(st.integers(0, 2**64))
def test_uint_round_trip_is_minimal(n: int) -> None:
    encoded = coap.encode_uint(n)
    assert coap.decode_uint(encoded) == n
    assert encoded[:1] != b"\x00"
    assert len(encoded) == (n.bit_length() + 7) // 8


# Well-typed but possibly out-of-range fields: what a buggy caller could build.
_wild_messages = st.builds(
    Message,
    st.integers(-2, 6),
    st.integers(-2, 300),
    st.integers(-2, 70000),
    st.binary(max_size=10),
    st.lists(st.tuples(st.integers(-5, 140000), st.binary(max_size=20)), max_size=5).map(tuple),
    st.binary(max_size=5),
)


@given(_wild_messages)
def test_encode_returns_a_decodable_datagram_or_raises_format_error(message: Message) -> None:
    try:
        datagram = coap.encode(message)
    except MessageFormatError:
        return
    decoded = coap.decode(datagram)
    assert decoded.options == tuple(sorted(message.options, key=lambda o: o[0]))
    assert (decoded.type, decoded.code, decoded.mid, decoded.token, decoded.payload) == (
        message.type,
        message.code,
        message.mid,
        message.token,
        message.payload,
    )
