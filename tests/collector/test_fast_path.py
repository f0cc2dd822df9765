"""The worker's fast path for plain event POSTs answers exactly as the decoder does.

`Worker._handle` reads a CON/NON POST whose options are only an event route's Uri-Path
and a Content-Format without the codec. These tests run the same datagrams through a
worker with the fast path and one without it (an empty pattern table) and demand the
same response bytes and the same stored events, for generated requests of the fast
shape, near misses, and arbitrary bytes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence

import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coap
from collector import worker as worker_module
from collector.config import Config
from collector.events import Event
from collector.sinks.base import Result
from collector.sinks.null import NullSink
from collector.worker import Worker

PEER = ("127.0.0.1", 40000)
WALL_MS = 1_700_000_000_000


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.stored: list[Event] = []

    async def write(self, events: Sequence[Event]) -> list[Result]:
        self.stored.extend(events)
        return await super().write(events)


class RecordingWorker(Worker):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(0, sock, Config(sink="null"), metrics=False, batched_io=False)
        self.sent: list[bytes] = []
        self.sink = self.driver._sink = RecordingSink()
        self.exchange._next_mid = 1000  # NON responses number from here in both runs

    def _send(self, data: bytes, peer: object) -> None:
        self.sent.append(data)


@pytest.fixture(scope="module")
def sock() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s


def _run(sock: socket.socket, datagrams: list[bytes], fast: bool) -> tuple[list[bytes], list]:
    async def scenario() -> tuple[list[bytes], list]:
        w = RecordingWorker(sock)
        loop = asyncio.get_running_loop()
        w._loop = loop
        w._now = lambda: 5.0
        for data in datagrams:
            w._handle(data, PEER, 5.0, WALL_MS)
            w.driver.close_idle()
        w.driver.flush()
        await w.driver.wait_idle()
        assert isinstance(w.sink, RecordingSink)
        return w.sent, [e.document() for e in w.sink.stored]

    saved = worker_module._FAST_POSTS
    if not fast:
        worker_module._FAST_POSTS = {}
    try:
        return asyncio.run(scenario())
    finally:
        worker_module._FAST_POSTS = saved


def _same(sock: socket.socket, datagrams: list[bytes]) -> None:
    fast = _run(sock, datagrams, fast=True)
    slow = _run(sock, datagrams, fast=False)
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


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(requests(), min_size=1, max_size=4))
def test_fast_path_answers_and_stores_like_the_decoder(
    sock: socket.socket, datagrams: list[bytes]
) -> None:
    _same(sock, datagrams)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=1, max_size=30), st.binary(max_size=30))
def test_arbitrary_post_bytes_are_answered_like_the_decoder(
    sock: socket.socket, middle: bytes, tail: bytes
) -> None:
    # A POST header (CON, TKL 0) and arbitrary option/payload bytes after it, with a
    # fast-path key spliced in now and then so the near misses are exercised.
    key = next(iter(worker_module._FAST_POSTS))
    _same(sock, [b"\x40\x02\x12\x34" + middle + tail, b"\x40\x02\x12\x35" + key + middle + tail])


def test_the_fast_path_is_taken_for_the_common_post(
    sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
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

    monkeypatch.setattr(worker_module, "decode", no_decoder)
    sent, stored = _run(sock, [data], fast=True)
    assert sent == [bytes([0x62, 0x41, 0, 7]) + b"tk"]  # ACK 2.01, same MID and token
    assert len(stored) == 1 and stored[0]["origin"] == "o"
