"""What the RFCs require and real peers do, pinned on a live collector (issue 11).

Each test is a regression named after the behaviour it pins: Request-Tag keeps two
Block1 uploads apart (RFC 9175), Block2 and the client's block size (RFC 7959), Accept
(RFC 7252 §5.10.4), conditional requests (§5.10.8), No-Response (RFC 7967), fair
shares of the dedup and Block1 tables, and a drain that still reads ACKs.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable

import pytest

import coap
from coap import Block, Code, ContentFormat, Message, OptionNumber, Type
from collector import resources

from .conftest import CoapClient, Collector, event, row_count, rows
from .test_server_exchange import write_lock

pytestmark = pytest.mark.integration

BLOCK1 = int(OptionNumber.BLOCK1)
BLOCK2 = int(OptionNumber.BLOCK2)
REQUEST_TAG = int(OptionNumber.REQUEST_TAG)
ACCEPT = int(OptionNumber.ACCEPT)
NO_RESPONSE = int(OptionNumber.NO_RESPONSE)


def body_of(sender: str, value: float) -> bytes:
    """A JSON event padded past 32 bytes, so it takes two 32-byte blocks or more."""
    return json.dumps(
        event(sender=sender, origin="o" * 20, payload={"type": "t", "value": value})
    ).encode()


def block(client: CoapClient, body: bytes, num: int, tag: bytes | None, size: int = 32) -> Message:
    chunk = body[num * size : (num + 1) * size]
    more = (num + 1) * size < len(body)
    options = [(BLOCK1, Block(num, more, size.bit_length() - 5).encode())]
    if tag is not None:
        options.append((REQUEST_TAG, tag))
    return client.request(Code.POST, "events", chunk, fmt=50, options=tuple(options))


# --- Block1 ---------------------------------------------------------------------------


def test_interleaved_block1_uploads_with_request_tags_store_both_bodies_intact(
    collector: Callable[..., Collector],
) -> None:
    """Regression: A0, B0, A1, B1 from one endpoint with different Request-Tags gave A
    a 2.01 while the stored row had B's sender with A's value (reassembly was keyed
    on endpoint and path only)."""
    server = collector()
    a, b = body_of("sender-a", 1.5), body_of("sender-b", 2.5)
    blocks = max(len(a), len(b)) // 32 + 1
    with server.client() as client:
        for num in range(blocks):
            for body, tag in ((a, b"A"), (b, b"B")):
                if num * 32 < len(body):
                    reply = block(client, body, num, tag)
                    last = (num + 1) * 32 >= len(body)
                    assert reply.code == (Code.CREATED if last else Code.CONTINUE), reply
    stored = {r["sender"]: r["value"] for r in rows(server.db)}
    assert stored == {"sender-a": 1.5, "sender-b": 2.5}


def test_a_host_with_a_thousand_open_uploads_does_not_evict_another_devices(
    collector: Callable[..., Collector],
) -> None:
    """Regression: one host that opened 1100 Block1 transfers evicted an honest
    device's transfer, which then got 4.08. Transfers are shared fairly by source
    address: the flooding host loses its own oldest ones."""
    server = collector()
    honest = CoapClient(server.client_host, server.port, bind="127.0.0.3")
    floods = [CoapClient(server.client_host, server.port, bind="127.0.0.2") for _ in range(140)]
    try:
        body = body_of("honest", 7.0)
        assert block(honest, body, 0, None).code == Code.CONTINUE
        junk = b"x" * 32
        for i, flood in enumerate(floods):  # 140 endpoints x 8 transfers: 1120 transfers
            for tag in range(8):
                msg = flood.build(
                    Code.POST,
                    "events",
                    junk,
                    fmt=50,
                    type_=Type.NON,
                    options=((BLOCK1, Block(0, True, 1).encode()), (REQUEST_TAG, bytes([i, tag]))),
                )
                flood.send(coap.encode(msg))
        time.sleep(0.5)
        for num in range(1, len(body) // 32 + 1):
            reply = block(honest, body, num, None)
        assert reply.code == Code.CREATED, reply
        assert [r["value"] for r in rows(server.db)] == [7.0]
    finally:
        honest.close()
        for flood in floods:
            flood.close()


# --- Block2, Accept, conditions --------------------------------------------------------


def test_block2_with_a_small_block_size_serves_well_known_core_in_blocks(
    collector: Callable[..., Collector],
) -> None:
    """Regression: GET /.well-known/core with Block2 SZX 1 returned all 130 bytes in
    one message. Each answer now carries one 32-byte block, and the blocks add up."""
    server = collector()
    got = b""
    with server.client() as client:
        for num in range(64):
            reply = client.request(
                Code.GET, ".well-known/core", options=((BLOCK2, Block(num, False, 1).encode()),)
            )
            assert reply.code == Code.CONTENT
            answered = Block.decode(reply.option(BLOCK2) or b"")
            assert (answered.num, answered.szx) == (num, 1)
            assert len(reply.payload) <= 32
            got += reply.payload
            if not answered.more:
                break
    assert got == resources.WELL_KNOWN_CORE


@pytest.mark.parametrize(
    ("path", "accept", "code"),
    [
        ("health", ContentFormat.LINK_FORMAT, Code.NOT_ACCEPTABLE),
        ("health", ContentFormat.CBOR, Code.CONTENT),
        ("health", ContentFormat.JSON, Code.CONTENT),
        (".well-known/core", ContentFormat.JSON, Code.NOT_ACCEPTABLE),
        (".well-known/core", ContentFormat.LINK_FORMAT, Code.CONTENT),
    ],
)
def test_an_accept_that_cannot_be_met_gets_4_06(
    collector: Callable[..., Collector], path: str, accept: int, code: Code
) -> None:
    """Regression: Accept 40 on /health got 2.05 (RFC 7252 §5.10.4)."""
    server = collector()
    with server.client() as client:
        reply = client.request(Code.GET, path, options=((ACCEPT, coap.encode_uint(accept)),))
    assert reply.code == code
    if code == Code.CONTENT:
        assert reply.content_format == accept


@pytest.mark.parametrize(
    "condition",
    [
        (int(OptionNumber.IF_MATCH), b""),
        (int(OptionNumber.IF_MATCH), b"\x01\x02"),
        (int(OptionNumber.IF_NONE_MATCH), b""),
    ],
    ids=["if-match-any", "if-match-etag", "if-none-match"],
)
def test_a_failed_precondition_on_post_events_gets_4_12_and_stores_nothing(
    collector: Callable[..., Collector], condition: tuple[int, bytes]
) -> None:
    """Regression: If-Match and If-None-Match were ignored and the POST performed.
    /events has no representation of its own, so If-Match never holds, and it exists,
    so If-None-Match never does (RFC 7252 §5.10.8)."""
    server = collector()
    ev = event()
    with server.client() as client:
        reply = client.request(
            Code.POST, "events", json.dumps(ev).encode(), fmt=50, options=(condition,)
        )
    assert reply.code == Code.PRECONDITION_FAILED
    assert row_count(server.db) == 0


# --- No-Response ------------------------------------------------------------------------


def test_no_response_suppresses_the_classes_a_non_request_asks_to_suppress(
    collector: Callable[..., Collector],
) -> None:
    """Regression: No-Response (RFC 7967) was ignored. A NON POST asking to suppress
    2.xx is stored and not answered; one asking to suppress 4.xx gets no 4.00 for a bad
    body; one with No-Response 0 (interested in everything) is answered."""
    server = collector()
    stored_quietly, answered = event(), event()
    with server.client() as client:
        for body, bits in ((stored_quietly, 2), (b'{"bad": 1}', 8)):
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            msg = client.build(
                Code.POST,
                "events",
                payload,
                fmt=50,
                type_=Type.NON,
                options=((NO_RESPONSE, coap.encode_uint(bits)),),
            )
            client.send(coap.encode(msg))
            assert client.recv_raw(0.5) is None
        reply = client.request(
            Code.POST,
            "events",
            json.dumps(answered).encode(),
            fmt=50,
            type_=Type.NON,
            options=((NO_RESPONSE, b""),),
        )
        assert reply.code == Code.CREATED
    for ev in (stored_quietly, answered):
        assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


# --- fair shares --------------------------------------------------------------------------


def test_a_flood_from_one_address_does_not_evict_another_devices_dedup_entry(
    collector: Callable[..., Collector],
) -> None:
    """Regression: a flood of unique (port, MID) pairs from one address evicted every
    device's dedup entries, and then an honest device's retransmitted event without
    `id` and `timestamp` was stored twice. The flood now evicts only its own entries."""
    server = collector(dedup_capacity=500)
    honest = CoapClient(server.client_host, server.port, bind="127.0.0.3")
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    try:
        ev = {"sender": "honest", "origin": "o", "payload": {"type": "t", "value": 1.0}}
        msg = honest.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50)
        first = honest.transact(msg)
        assert first.code == Code.CREATED
        target = (server.client_host, server.port)
        for mid in range(5000):  # unique MIDs: each would be a new dedup entry
            flood.sendto(
                coap.encode(Message(Type.NON, Code.GET, mid, b"", ((11, b"health"),))), target
            )
            if mid % 500 == 499:
                time.sleep(0.05)  # keep within the socket buffers: every one must count
        time.sleep(0.5)
        again = honest.transact(msg)  # the same MID: a retransmission
        assert (again.code, again.mid) == (Code.CREATED, msg.mid)
        assert row_count(server.db, "sender = 'honest'") == 1
    finally:
        honest.close()
        flood.close()


# --- drain ------------------------------------------------------------------------------


def test_drain_reads_acks_and_exits_as_soon_as_nothing_is_owed(
    collector: Callable[..., Collector],
) -> None:
    """Regression: on SIGTERM the worker stopped reading its socket, so the ACKs of its
    separate responses never arrived; every drain with one outstanding lasted the whole
    --drain-timeout (10.09 s against 0.24 s) and re-sent responses already ACKed.
    Now it keeps reading: new requests get 5.03 with Max-Age, the ACK is taken, and
    the process exits as soon as nothing is owed."""
    server = collector(ack_delay=0.1, drain_timeout=10)
    server.expect_clean_exit = False  # checked here
    ev = event()
    with server.client() as client, server.client() as latecomer:
        with write_lock(server.db):
            msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50)
            client.send(coap.encode(msg))
            empty = client.recv(2.0)
            assert empty is not None and (empty.type, empty.code) == (Type.ACK, Code.EMPTY)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            late = latecomer.request(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            assert late.code == Code.SERVICE_UNAVAILABLE
            assert late.uint_option(OptionNumber.MAX_AGE)
        response = client.recv(5.0)  # the lock is gone: the separate response comes
        assert response is not None and (response.type, response.code) == (Type.CON, Code.CREATED)
        acked_at = time.monotonic()
        client.ack(response)
        code = server.proc.wait(8)
        exited_after = time.monotonic() - acked_at
        assert client.recv_raw(0.2) is None  # the ACKed response was not sent again
    assert code == 0
    assert exited_after < 3.0, f"exit {exited_after:.2f} s after the last ACK"
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1
