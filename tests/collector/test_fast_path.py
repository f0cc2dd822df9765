"""The core's fast path for plain event POSTs answers exactly as the decoder does.

`RequestCore.datagram` reads a CON/NON POST whose options are only an event route's
Uri-Path and a Content-Format through `coap.RequestShapes`, without the decoder. These
tests run the same datagrams through a core with the fast path and one without it
and demand the same response bytes and the same stored events, for generated
requests of the fast shape, near misses, and arbitrary bytes.
"""

from __future__ import annotations

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coap
from collector import core as core_module
from collector.config import Config
from collector.core import RequestCore
from collector.sinks.base import STORED

PEER = ("127.0.0.1", 40000)
WALL_MS = 1_700_000_000_000


def _run(datagrams: list[bytes], fast: bool) -> tuple[list[bytes], list[dict[str, object]]]:
    """Feed `datagrams` to a fresh core, store every event at once, and return what
    it sent and the documents it stored."""
    items: list = []
    core = RequestCore(Config(sink="null"), lambda e, r, p: items.append((e, r, p)), fast_path=fast)
    core.exchange._next_mid = 1000  # NON responses number from here in both runs
    stored = []
    for data in datagrams:
        core.datagram(data, PEER, 5.0, WALL_MS)
        batch, items[:] = list(items), []
        if batch:
            core.on_results(batch, [STORED] * len(batch), 5.0)
            stored.extend(e.document() for e, _r, _p in batch)
    return [d for d, _peer in core.outbox], stored


def _same(datagrams: list[bytes]) -> None:
    fast = _run(datagrams, fast=True)
    slow = _run(datagrams, fast=False)
    assert fast == slow


EVENT = {"sender": "s", "origin": "o", "payload": {"type": "t", "value": 1.5}}
bodies = st.one_of(
    st.just(orjson.dumps(EVENT)),
    st.just(cbor2.dumps(EVENT)),
    st.just(orjson.dumps([{"n": "probe1/temp", "v": 21.5, "u": "Cel"}])),
    st.just(cbor2.dumps([{0: "probe1/temp", 2: 21.5}])),
    st.just(orjson.dumps({**EVENT, "id": "x"})),
    st.just(b'{"sender": 1}'),
    st.just(b"\xff\xff"),
    st.binary(min_size=1, max_size=40),
)
formats = st.sampled_from([None, 0, 40, 50, 60, 110, 112, 0x2D16])
paths = st.sampled_from([("events",), ("event",), ("events", "x"), ("health",), ()])
extra_options = st.lists(
    st.tuples(st.sampled_from([4, 6, 14, 15, 17, 23, 27, 35, 60, 2049]), st.binary(max_size=3)),
    max_size=2,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    options = [(11, s.encode()) for s in draw(paths)]
    fmt = draw(formats)
    if fmt is not None:
        options.append((12, coap.encode_uint(fmt)))
    if draw(st.booleans()):
        options.extend(draw(extra_options))
    options.sort(key=lambda o: o[0])
    msg = coap.Message(
        coap.Type(draw(st.sampled_from([0, 1]))),
        draw(st.sampled_from([2, 2, 2, 1, 3])),
        draw(st.integers(0, 0xFFFF)),
        draw(st.binary(max_size=8)),
        tuple(options),
        draw(st.one_of(bodies, st.just(b""))),
    )
    data = coap.encode(msg)
    if not msg.payload and draw(st.booleans()):
        data += b"\xff"  # a marker with no payload: a format error (RFC 7252 §3)
    return data


@settings(max_examples=300)
@given(st.lists(requests(), min_size=1, max_size=4))
def test_fast_path_answers_and_stores_like_the_decoder(datagrams: list[bytes]) -> None:
    _same(datagrams)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=30), st.binary(max_size=30))
def test_arbitrary_post_bytes_are_answered_like_the_decoder(middle: bytes, tail: bytes) -> None:
    # A POST header (CON, TKL 0) and arbitrary option/payload bytes after it, with a
    # fast-path key spliced in now and then so the near misses are exercised.
    key = b"\xb6events"  # Uri-Path "events", no Content-Format
    _same([b"\x40\x02\x12\x34" + middle + tail, b"\x40\x02\x12\x35" + key + middle + tail])


def test_the_fast_path_is_taken_for_the_common_post(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the tests above: they compare two paths only if the fast one runs."""
    data = coap.encode(
        coap.Message(
            coap.Type.CON,
            coap.Code.POST,
            7,
            b"tk",
            ((11, b"events"), (12, b"\x32")),
            orjson.dumps(EVENT),
        )
    )

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(core_module.coap, "decode", no_decoder)
    sent, stored = _run([data], fast=True)
    assert sent == [bytes([0x62, 0x41, 0, 7]) + b"tk"]  # ACK 2.01, same MID and token
    assert len(stored) == 1 and stored[0]["origin"] == "o"
