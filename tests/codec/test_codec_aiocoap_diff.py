"""Differential test against aiocoap (a test-only oracle).

Messages we encode must decode identically in aiocoap, and messages aiocoap
encodes must decode identically with us. Option values are drawn so that
aiocoap's typed options (uint, string, block) round-trip their own raw bytes:
the comparison is about framing (deltas, lengths, extensions, ordering, token,
payload), not about aiocoap's value normalisation.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from coap import Message, Type

with warnings.catch_warnings():
    # aiocoap may warn about optional dependencies at import time.
    warnings.simplefilter("ignore")
    aiocoap = pytest.importorskip("aiocoap")
    from aiocoap import optiontypes as aio_optiontypes
    from aiocoap.numbers.optionnumbers import OptionNumber as AioOptionNumber


def _aiocoap_format(number: int) -> type:
    return AioOptionNumber(number).format  # type: ignore[no-any-return]


# Unknown-to-aiocoap numbers across all delta forms are opaque there.
_opaque_numbers = st.one_of(
    st.integers(0, 12), st.integers(13, 268), st.integers(269, 65535)
).filter(lambda n: _aiocoap_format(n) is aio_optiontypes.OpaqueOption)

_option = st.one_of(
    st.tuples(
        _opaque_numbers, st.one_of(st.binary(max_size=14), st.binary(min_size=265, max_size=275))
    ),
    st.tuples(st.sampled_from([11, 15, 8, 20]), st.text(max_size=20).map(lambda s: s.encode())),
    st.tuples(st.sampled_from([12, 14, 17, 28, 60]), st.integers(0, 0xFFFF).map(coap.encode_uint)),
    st.tuples(st.sampled_from([1, 4]), st.binary(min_size=1, max_size=8)),
)

_messages = st.builds(
    Message,
    st.sampled_from(list(Type)),
    st.integers(1, 255).filter(lambda c: c >> 5 not in (1, 6, 7)),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    st.lists(_option, max_size=10).map(lambda o: tuple(sorted(o, key=lambda x: x[0]))),
    st.binary(max_size=64),
)


def _aiocoap_fields(
    message: aiocoap.Message,
) -> tuple[int, int, int, bytes, tuple[tuple[int, bytes], ...], bytes]:
    options = tuple((int(o.number), o.encode()) for o in message.opt.option_list())
    return (
        int(message.mtype),
        int(message.code),
        message.mid,
        bytes(message.token),
        options,
        bytes(message.payload),
    )


def _our_fields(
    message: Message,
) -> tuple[int, int, int, bytes, tuple[tuple[int, bytes], ...], bytes]:
    return (
        int(message.type),
        int(message.code),
        message.mid,
        message.token,
        message.options,
        message.payload,
    )


@given(_messages)
def test_aiocoap_decodes_what_we_encode(message: Message) -> None:
    decoded = aiocoap.Message.decode(coap.encode(message))
    assert _aiocoap_fields(decoded) == _our_fields(message)


@given(_messages)
def test_we_decode_what_aiocoap_encodes(message: Message) -> None:
    theirs = aiocoap.Message(
        _mtype=int(message.type),
        code=message.code,
        _mid=message.mid,
        _token=message.token,
        payload=message.payload,
    )
    for number, value in message.options:
        theirs.opt.add_option(AioOptionNumber(number).create_option(decode=value))
    datagram = theirs.encode()
    assert coap.decode(datagram) == message
    assert coap.encode(coap.decode(datagram)) == datagram


def test_real_device_post_matches_aiocoap() -> None:
    theirs = aiocoap.Message(
        _mtype=aiocoap.CON,
        code=aiocoap.POST,
        _mid=0x1234,
        _token=b"\x01\x02\x03\x04",
        uri_path=("events",),
        content_format=50,
        payload=b'{"sender":"demo","value":15.5}',
    )
    ours = coap.decode(theirs.encode())
    assert ours.path == "/events"
    assert ours.content_format == coap.ContentFormat.JSON
    assert coap.encode(ours) == theirs.encode()
