"""The client endpoint's message layer (RFC 7252 §4, §5.3) against a scripted
server: a real UDP socket in the test that decodes what arrives and answers as
each test says (silence, empty ACK then separate response, RST, ...).

ACK_TIMEOUT is shortened (50 ms) so that retransmission schedules run in well
under a second; timing checks use lower bounds (a timer never fires early) and
generous upper bounds, never speed."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coap
from coap import Code, Message, OptionNumber, Type
from coap.transmission import TransmissionParameters
from collector.client.endpoint import (
    BlockwiseError,
    ClientEndpoint,
    EndpointClosed,
    ExchangeReset,
    MessageIds,
    RequestTimeout,
)

pytestmark = pytest.mark.integration

FAST = TransmissionParameters(ack_timeout=0.05, ack_random_factor=1.5, max_retransmit=3)

T = TypeVar("T")
Handler = Callable[["ScriptedServer", Message, tuple[str, int]], None]


@dataclass
class ScriptedServer(asyncio.DatagramProtocol):
    handler: Handler | None = None
    received: list[tuple[float, Message]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = coap.decode(data)
        self.received.append((time.monotonic(), msg))
        if self.handler is not None:
            self.handler(self, msg, addr)

    def send(self, msg: Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(coap.encode(msg), addr)

    def send_raw(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def requests(self) -> list[Message]:
        return [m for _, m in self.received if m.code != Code.EMPTY]

    def empties(self, type: Type) -> list[Message]:
        return [m for _, m in self.received if m.code == Code.EMPTY and m.type == type]


async def _start(handler: Handler | None) -> tuple[ScriptedServer, asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    server = ScriptedServer(handler)
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    return server, transport, port


def _answer(request: Message, code: int = Code.CREATED, payload: bytes = b"") -> Message:
    """A piggybacked response."""
    return Message(Type.ACK, code, request.mid, request.token, payload=payload)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_con_is_retransmitted_with_doubling_timeouts_then_times_out() -> None:
    async def scenario() -> tuple[ScriptedServer, float]:
        server, transport, port = await _start(None)  # a server that never answers
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="4 transmissions"):
            await endpoint.request(Code.POST, "/events", payload=b"{}", timeout=30)
        waited = time.monotonic() - started
        endpoint.close()
        transport.close()
        return server, waited

    server, waited = _run(scenario())
    copies = server.requests()
    assert len(copies) == 1 + FAST.max_retransmit
    assert {(m.mid, m.token, m.type) for m in copies} == {
        (copies[0].mid, copies[0].token, Type.CON)
    }
    times = [t for t, m in server.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    first = gaps[0]
    # The first timeout is ACK_TIMEOUT x [1, ACK_RANDOM_FACTOR]; each next one doubles.
    assert first >= FAST.ack_timeout * 0.95
    assert first <= FAST.ack_timeout * FAST.ack_random_factor + 0.5
    for index, gap in enumerate(gaps[1:], start=1):
        assert gap >= first * 2**index * 0.9
    # Giving up waits one more (doubled) timeout after the last copy.
    assert waited >= FAST.ack_timeout * (2 ** (FAST.max_retransmit + 1) - 1) * 0.95


def test_non_is_sent_once_and_times_out_by_deadline() -> None:
    async def scenario() -> ScriptedServer:
        server, transport, port = await _start(None)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        with pytest.raises(RequestTimeout):
            await endpoint.request(Code.POST, "/events", confirmable=False, timeout=0.6)
        endpoint.close()
        transport.close()
        return server

    server = _run(scenario())
    assert isinstance(server, ScriptedServer)
    assert [m.type for m in server.requests()] == [Type.NON]


def test_piggybacked_response() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            server.send(_answer(msg, Code.CREATED), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.request(
            Code.POST, "/events", payload=b"{}", content_format=50, timeout=5
        )
        assert response.code == Code.CREATED and response.code_str == "2.01"
        assert not response.separate and response.transmissions == 1
        (request,) = server.requests()
        assert request.path == "/events" and request.content_format == 50
        assert request.payload == b"{}"
        endpoint.close()
        transport.close()

    _run(scenario())


def test_empty_ack_then_separate_con_response_is_acked_and_delivered_once() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code != Code.POST:
            return
        server.send(Message(Type.ACK, Code.EMPTY, msg.mid), addr)
        separate = Message(Type.CON, Code.CREATED, 0x4242, msg.token)

        def later() -> None:
            server.send(separate, addr)
            server.send(separate, addr)  # a retransmission of the separate response

        # Well past several ACK timeouts: retransmission must have stopped.
        asyncio.get_running_loop().call_later(0.5, later)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.request(Code.POST, "/events", payload=b"{}", timeout=5)
        assert response.separate and response.message.type == Type.CON
        assert response.code == Code.CREATED
        await asyncio.sleep(0.2)  # let the duplicate arrive and be answered
        assert len(server.requests()) == 1, "retransmitted after the empty ACK"
        acks = server.empties(Type.ACK)
        assert [a.mid for a in acks] == [0x4242, 0x4242], "each copy gets an empty ACK"
        assert not server.empties(Type.RST)
        endpoint.close()
        transport.close()

    _run(scenario())


def test_separate_response_for_an_unknown_token_is_rejected() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            server.send(Message(Type.CON, Code.CREATED, 0x0777, b"nope"), addr)
            server.send(_answer(msg), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.request(Code.POST, "/events", timeout=5)
        assert response.code == Code.CREATED
        await asyncio.sleep(0.1)
        assert [m.mid for m in server.empties(Type.RST)] == [0x0777]
        endpoint.close()
        transport.close()

    _run(scenario())


def test_rst_ends_the_exchange() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            server.send(Message(Type.RST, Code.EMPTY, msg.mid), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        with pytest.raises(ExchangeReset):
            await endpoint.request(Code.POST, "/events", timeout=30)
        await asyncio.sleep(FAST.ack_timeout * 4)
        assert len(server.requests()) == 1, "retransmitted after RST"
        endpoint.close()
        transport.close()

    _run(scenario())


def test_non_request_gets_non_response_matched_by_token() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            server.send(Message(Type.NON, Code.CREATED, 0x1111, msg.token), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.request(Code.POST, "/events", confirmable=False, timeout=5)
        assert response.code == Code.CREATED and response.message.type == Type.NON
        assert [m.type for m in server.requests()] == [Type.NON]
        endpoint.close()
        transport.close()

    _run(scenario())


def test_piggybacked_response_with_a_wrong_token_is_ignored() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            wrong = bytes(b ^ 0xFF for b in msg.token)
            server.send(Message(Type.ACK, Code.BAD_REQUEST, msg.mid, wrong), addr)
            server.send(_answer(msg, Code.CHANGED), addr)

    async def scenario() -> None:
        _server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.request(Code.POST, "/events", timeout=5)
        assert response.code == Code.CHANGED
        endpoint.close()
        transport.close()

    _run(scenario())


def test_message_ids_and_tokens_are_unique_under_concurrency() -> None:
    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code == Code.POST:
            server.send(_answer(msg, payload=msg.payload), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect(
            "127.0.0.1", port, params=FAST, rng=random.Random(7)
        )
        responses = await asyncio.gather(
            *(
                endpoint.request(Code.POST, "/events", payload=str(i).encode(), timeout=10)
                for i in range(300)
            )
        )
        # Each answer reached the request it belongs to.
        assert [r.message.payload for r in responses] == [str(i).encode() for i in range(300)]
        requests = server.requests()
        assert len({m.mid for m in requests}) == len({m.token for m in requests}) == 300
        mids = [m.mid for m in requests]
        assert mids[0] != 0 or mids[1] != 1  # a random start, not always zero
        assert endpoint.outstanding == 0
        endpoint.close()
        transport.close()

    _run(scenario())


def test_random_start_differs_between_endpoints() -> None:
    async def scenario() -> set[tuple[int, bytes]]:
        firsts = set()
        for seed in range(5):
            server, transport, port = await _start(
                lambda s, m, a: s.send(_answer(m), a) if m.code else None
            )
            endpoint = await ClientEndpoint.connect(
                "127.0.0.1", port, params=FAST, rng=random.Random(seed)
            )
            await endpoint.request(Code.GET, "/health", timeout=5)
            (request,) = server.requests()
            firsts.add((request.mid, request.token))
            endpoint.close()
            transport.close()
        return firsts

    firsts = _run(scenario())
    assert isinstance(firsts, set) and len(firsts) == 5


def test_malformed_con_from_the_server_gets_rst_and_ping_gets_rst() -> None:
    replies: list[Message] = []

    async def scenario() -> None:
        server, transport, port = await _start(None)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        local = endpoint.local_address
        assert local is not None
        # CON, MID 0x1234, payload marker with no payload: a §3 format error.
        server.send_raw(b"\x40\x45\x12\x34\xff", local)
        server.send(Message(Type.CON, Code.EMPTY, 0x2345), local)  # CoAP ping
        await asyncio.sleep(0.2)
        replies.extend(m for _, m in server.received)
        endpoint.close()
        transport.close()

    _run(scenario())
    assert sorted((m.type, m.mid) for m in replies) == [(Type.RST, 0x1234), (Type.RST, 0x2345)]


def test_close_fails_outstanding_requests() -> None:
    async def scenario() -> None:
        _, transport, port = await _start(None)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        pending = asyncio.create_task(endpoint.request(Code.GET, "/health", timeout=30))
        await asyncio.sleep(0.05)
        endpoint.close()
        with pytest.raises(EndpointClosed):
            await pending
        with pytest.raises(EndpointClosed):
            await endpoint.request(Code.GET, "/health")
        transport.close()

    _run(scenario())


def _blockwise(body: bytes, *, etag_change_at: int | None = None, skip: bool = False) -> Handler:
    """Serve GET with ``body`` in 16-byte blocks (SZX 0), as RFC 7959 §2.4 does."""

    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code != Code.GET:
            return
        raw = msg.option(OptionNumber.BLOCK2)
        num = 0 if raw is None else coap.Block.decode(raw).num
        if skip and num == 1:
            num = 2
        chunk = body[num * 16 : (num + 1) * 16]
        more = (num + 1) * 16 < len(body)
        etag = b"\x02" if etag_change_at is not None and num >= etag_change_at else b"\x01"
        options = (
            (OptionNumber.ETAG, etag),
            (OptionNumber.CONTENT_FORMAT, b"\x28"),
            (OptionNumber.BLOCK2, coap.Block(num, more, 0).encode()),
        )
        server.send(Message(Type.ACK, Code.CONTENT, msg.mid, msg.token, options, chunk), addr)

    return handler


def test_get_reassembles_a_blockwise_response() -> None:
    body = b",".join(b"</r%d>" % i for i in range(20))

    async def scenario() -> None:
        server, transport, port = await _start(_blockwise(body))
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        response = await endpoint.get("/.well-known/core", timeout=5)
        assert response.message.payload == body
        assert response.message.content_format == 40
        blocks = [
            coap.Block.decode(m.option(OptionNumber.BLOCK2) or b"") for m in server.requests()[1:]
        ]
        assert [b.num for b in blocks] == list(range(1, -(-len(body) // 16)))
        assert {(b.szx, b.more) for b in blocks} == {(0, False)}
        endpoint.close()
        transport.close()

    _run(scenario())


@pytest.mark.parametrize(
    ("handler_args", "message"),
    [
        ({"etag_change_at": 2}, "changed during the block-wise transfer"),
        ({"skip": True}, "asked for block 1, got 2"),
    ],
)
def test_get_rejects_inconsistent_blocks(handler_args: dict[str, Any], message: str) -> None:
    async def scenario() -> None:
        _, transport, port = await _start(_blockwise(bytes(100), **handler_args))
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        with pytest.raises(BlockwiseError, match=message):
            await endpoint.get("/big", timeout=5)
        endpoint.close()
        transport.close()

    _run(scenario())


def test_get_gives_up_after_max_blocks() -> None:
    async def scenario() -> None:
        _, transport, port = await _start(_blockwise(bytes(16 * 10)))
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        with pytest.raises(BlockwiseError, match="longer than 4 blocks"):
            await endpoint.get("/big", timeout=5, max_blocks=4)
        endpoint.close()
        transport.close()

    _run(scenario())


# -- Message ID reuse (§4.4), on a small ID space so that wraps are cheap ------------


@settings(max_examples=300)
@given(
    steps=st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=300),
    start=st.integers(0, 63),
    block_bits=st.integers(0, 6),
)
def test_message_ids_are_never_reused_within_the_lifetime(
    steps: list[float], start: int, block_bits: int
) -> None:
    lifetime = 1.0
    ids = MessageIds(start, lifetime, bits=6, block_bits=block_bits)
    now = 0.0
    sent: dict[int, float] = {}
    for step in steps:
        now += step
        mid, ready = ids.allocate(now)
        assert ready >= now
        if mid in sent:
            assert ready >= sent[mid] + lifetime
        sent[mid] = ready
        # Concurrent requests allocate while earlier ones still wait: ``now`` does not
        # jump to ``ready``; each ID goes out at its own ready time.


def test_message_ids_run_free_until_the_space_wraps() -> None:
    ids = MessageIds(60, 10.0, bits=6, block_bits=2)
    allocations = [ids.allocate(0.0) for _ in range(64)]
    assert [mid for mid, _ in allocations] == [*range(60, 64), *range(60)]
    assert {ready for _, ready in allocations} == {0.0}
    mid, ready = ids.allocate(1.0)  # 60 again, sent at 0.0: wait for the lifetime
    assert (mid, ready) == (60, 10.0)
    mid, ready = ids.allocate(10.5)
    assert (mid, ready) == (61, 10.5)


def test_message_ids_space_rounds_by_the_lifetime_when_time_stands_still() -> None:
    ids = MessageIds(0, 10.0, bits=6, block_bits=2)
    rounds = [[ids.allocate(0.0) for _ in range(64)] for _ in range(3)]
    assert [{ready for _, ready in r} for r in rounds] == [{0.0}, {10.0}, {20.0}]


def test_message_ids_skip_ids_in_use() -> None:
    ids = MessageIds(5, 1.0, bits=6)
    assert ids.allocate(0.0, in_use={5, 6})[0] == 7
    with pytest.raises(RuntimeError):
        ids.allocate(0.0, in_use=set(range(64)))


def test_request_waits_for_a_message_id_used_within_the_lifetime() -> None:
    """A real endpoint whose next ID was sent moments ago holds the request back."""
    params = TransmissionParameters(ack_timeout=0.05, max_retransmit=0, max_latency=0.1)

    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        if msg.code:
            server.send(_answer(msg, Code.CONTENT), addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=params)
        endpoint._mids = MessageIds(3, params.exchange_lifetime, bits=2, block_bits=0)
        for _ in range(4):  # uses all four IDs of the tiny space
            await endpoint.request(Code.GET, "/health", timeout=5)
        await endpoint.request(Code.GET, "/health", timeout=5)  # ID 3 again
        times: dict[int, list[float]] = {}
        for at, m in server.received:
            times.setdefault(m.mid, [])
            times[m.mid].append(at)
        first, again = times[3]
        assert again - first >= params.exchange_lifetime * 0.95
        endpoint.close()
        transport.close()

    _run(scenario())


def test_block1_follows_a_smaller_block_size_and_a_block2_answer_to_a_post() -> None:
    """RFC 7959 §2.5: the server takes the first 1024-byte block and asks for 512-byte
    blocks; the client goes on at NUM 2 of SZX 5. The final answer carries Block2
    (§3.3): the rest is fetched with POST and Block2, without a payload."""
    body = bytes(range(256)) * 12  # 3072 bytes
    answer = b"A" * 40
    uploaded = bytearray()

    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        raw1, raw2 = msg.option(OptionNumber.BLOCK1), msg.option(OptionNumber.BLOCK2)
        if raw2 is not None:  # the following blocks of the answer
            num = coap.Block.decode(raw2).num
            opts = ((OptionNumber.BLOCK2, coap.Block(num, (num + 1) * 16 < 40, 0).encode()),)
            chunk = answer[num * 16 : (num + 1) * 16]
            server.send(Message(Type.ACK, Code.CHANGED, msg.mid, msg.token, opts, chunk), addr)
            return
        assert raw1 is not None
        block = coap.Block.decode(raw1)
        assert block.offset == len(uploaded), (block, len(uploaded))
        uploaded.extend(msg.payload)
        if block.more:
            echo = coap.Block(block.num, True, min(block.szx, 5)).encode()
            reply = Message(Type.ACK, Code.CONTINUE, msg.mid, msg.token, ((27, echo),))
        else:
            opts = ((27, raw1), (OptionNumber.BLOCK2, coap.Block(0, True, 0).encode()))
            reply = Message(Type.ACK, Code.CHANGED, msg.mid, msg.token, opts, answer[:16])
        server.send(reply, addr)

    async def scenario() -> None:
        server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        try:
            response = await endpoint.request(Code.POST, "/events", payload=body, timeout=5)
        finally:
            endpoint.close()
            transport.close()
        assert response.code == Code.CHANGED
        assert response.message.payload == answer
        assert bytes(uploaded) == body
        blocks = [
            coap.Block.decode(m.option(OptionNumber.BLOCK1) or b"")
            for m in server.requests()
            if m.option(OptionNumber.BLOCK1) is not None
        ]
        assert [(b.num, b.szx) for b in blocks] == [(0, 6), (2, 5), (3, 5), (4, 5), (5, 5)]
        first = server.requests()[0]
        assert first.uint_option(OptionNumber.SIZE1) == len(body)
        assert first.option(292) is None  # the only upload in flight: no Request-Tag
        fetches = [m for m in server.requests() if m.option(OptionNumber.BLOCK2) is not None]
        assert [m.code for m in fetches] == [Code.POST, Code.POST]
        assert all(m.payload == b"" for m in fetches)

    _run(scenario())


def test_uploads_go_one_at_a_time_once_a_server_mixes_them() -> None:
    """A server without RFC 9175 keys Block1 transfers by endpoint and path only, so
    two concurrent uploads (told apart by Request-Tag, which it ignores) collide: it
    answers 4.08. The client sends that body again alone, and uploads one body at a
    time from then on; every body arrives whole, once."""
    expected_next: dict[str, int] = {}
    partial: dict[str, bytearray] = {}
    complete: list[bytes] = []

    def handler(server: ScriptedServer, msg: Message, addr: tuple[str, int]) -> None:
        raw = msg.option(OptionNumber.BLOCK1)
        assert raw is not None
        block = coap.Block.decode(raw)
        key = "/events"  # no Request-Tag in the key: RFC 7959 without RFC 9175
        if block.num == 0:
            expected_next[key], partial[key] = 0, bytearray()
        if expected_next.get(key) != block.num:
            expected_next.pop(key, None)
            server.send(_answer(msg, Code.REQUEST_ENTITY_INCOMPLETE), addr)
            return
        partial[key] += msg.payload
        expected_next[key] = block.num + 1
        if block.more:
            reply = Message(Type.ACK, Code.CONTINUE, msg.mid, msg.token, ((27, raw),))
        else:
            complete.append(bytes(partial.pop(key)))
            expected_next.pop(key)
            reply = Message(Type.ACK, Code.CHANGED, msg.mid, msg.token, ((27, raw),))
        server.send(reply, addr)

    bodies = [bytes([65 + i]) * 3000 for i in range(4)]

    async def scenario() -> list[int]:
        _server, transport, port = await _start(handler)
        endpoint = await ClientEndpoint.connect("127.0.0.1", port, params=FAST)
        try:
            responses = await asyncio.gather(
                *(endpoint.request(Code.POST, "/events", payload=b, timeout=5) for b in bodies)
            )
        finally:
            endpoint.close()
            transport.close()
        return [r.code for r in responses]

    codes = _run(scenario())
    assert codes == [Code.CHANGED] * 4
    assert sorted(complete) == sorted(bodies)
