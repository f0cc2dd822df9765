"""collector.mmsg against real loopback sockets: what recvmmsg/sendmmsg carry must be
exactly what recvfrom/sendto would, peers included, and oversized datagrams must be
reported, never passed off as whole."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coap
from collector import mmsg
from collector.mmsg import DatagramBatch, Peer

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg need Linux")

BUF = 4 << 20
LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")


@contextlib.contextmanager
def udp(family: int = socket.AF_INET, host: str | None = None) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
        sock.bind((host or LOOPBACK[family], 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def receive(
    batch: DatagramBatch, expected: int, seconds: float = 2.0
) -> tuple[list[tuple[bytes, Peer]], list[tuple[bytes, Peer, int]]]:
    """Everything `batch` receives until `expected` datagrams (whole or oversized)."""
    whole: list[tuple[bytes, Peer]] = []
    oversized: list[tuple[bytes, Peer, int]] = []
    deadline = time.monotonic() + seconds
    while len(whole) + len(oversized) < expected and time.monotonic() < deadline:
        got = batch.recv()
        whole.extend(got)
        oversized.extend(batch.oversized)
        if not got and not batch.oversized:
            time.sleep(0.001)
    return whole, oversized


def payloads(count: int, largest: int) -> list[bytes]:
    return [bytes([i % 251]) * ((i * 37) % (largest + 1)) for i in range(count)]


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family", [socket.AF_INET, pytest.param(socket.AF_INET6, marks=needs_ipv6)]
)
def test_many_datagrams_of_varied_sizes_arrive_whole_in_order(family: int) -> None:
    with udp(family) as a, udp(family) as b:
        sender, receiver = DatagramBatch(a), DatagramBatch(b, slots=16)
        data = payloads(300, 2048)
        assert sender.send([(d, b.getsockname()) for d in data]) == 300
        whole, oversized = receive(receiver, 300)
        assert oversized == []
        assert [d for d, _ in whole] == data
        assert {peer for _, peer in whole} == {a.getsockname()}


@pytest.mark.parametrize(
    ("family", "server_host", "client_family"),
    [
        (socket.AF_INET, "127.0.0.1", socket.AF_INET),
        pytest.param(socket.AF_INET6, "::1", socket.AF_INET6, marks=needs_ipv6),
        pytest.param(socket.AF_INET6, "::", socket.AF_INET, marks=needs_ipv6),
    ],
    ids=["ipv4", "ipv6", "dual-stack-ipv4-peer"],
)
def test_peers_equal_what_recvfrom_returns(
    family: int, server_host: str, client_family: int
) -> None:
    with udp(family, server_host) as server, udp(client_family) as client:
        port = server.getsockname()[1]
        target = (LOOPBACK[client_family], port)
        batch = DatagramBatch(server)
        client.sendto(b"one", target)
        time.sleep(0.01)
        _, by_recvfrom = server.recvfrom(100)
        client.sendto(b"two", target)
        (whole, _) = receive(batch, 1)
        assert whole == [(b"two", by_recvfrom)]
        peer = whole[0][1]
        assert hash(peer) == hash(by_recvfrom) and {peer: 1}[by_recvfrom] == 1
        if server_host == "::":
            assert peer == ("::ffff:127.0.0.1", client.getsockname()[1], 0, 0)
        # Either kind of peer works for the other kind of send.
        assert batch.send([(b"via mmsg", by_recvfrom)]) == 1
        server.sendto(b"via sendto", peer)
        time.sleep(0.01)
        assert client.recvfrom(100)[0] == b"via mmsg"
        assert client.recvfrom(100)[0] == b"via sendto"


def test_send_of_more_items_than_slots_sends_all_in_order() -> None:
    with udp() as a, udp() as b:
        sender = DatagramBatch(a, slots=4)
        items = [(i.to_bytes(2, "big"), b.getsockname()) for i in range(103)]
        assert sender.send(items) == 103
        whole, _ = receive(DatagramBatch(b), 103)
        assert [d for d, _ in whole] == [d for d, _ in items]


def test_a_burst_to_many_peers_reaches_each_of_them() -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(udp())
        clients = [stack.enter_context(udp()) for _ in range(20)]
        batch = DatagramBatch(server, cache_size=3)  # a cache far smaller than the peers
        items = [(f"to {i}".encode(), clients[i % 20].getsockname()) for i in range(500)]
        assert batch.send(items) == 500
        for index, client in enumerate(clients):
            whole, _ = receive(DatagramBatch(client), 25)
            assert [d for d, _ in whole] == [f"to {i}".encode() for i in range(index, 500, 20)]
        assert len(batch._sockaddrs) <= 3 + 1


def test_receiving_from_more_peers_than_the_cache_holds_keeps_peers_right() -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(udp())
        clients = [stack.enter_context(udp()) for _ in range(9)]
        batch = DatagramBatch(server, slots=5, cache_size=2)
        for round_ in range(3):
            for client in clients:
                client.sendto(b"%d" % round_, server.getsockname())
            whole, _ = receive(batch, 9)
            assert [peer for _, peer in whole] == [c.getsockname() for c in clients]
        assert len(batch._peers) <= 2


def test_bytes_like_data_is_sent_as_its_bytes() -> None:
    with udp() as a, udp() as b:
        peer = b.getsockname()
        items = [(bytearray(b"array"), peer), (memoryview(b"view"), peer), (b"bytes", peer)]
        assert DatagramBatch(a).send(items) == 3  # type: ignore[arg-type]
        whole, _ = receive(DatagramBatch(b), 3)
        assert [d for d, _ in whole] == [b"array", b"view", b"bytes"]


# -- truncation, EAGAIN, refusals ------------------------------------------------------------


def test_a_datagram_larger_than_its_slot_is_reported_with_its_real_length() -> None:
    with udp() as a, udp() as b:
        receiver = DatagramBatch(b, slots=8, slot_size=256)
        sizes = [100, 256, 257, 5000, 0, 60000]
        for size in sizes:
            a.sendto(bytes([size % 256]) * size, b.getsockname())
        whole, oversized = receive(receiver, len(sizes))
        assert [len(d) for d, _ in whole] == [100, 256, 0]
        assert [(d, size) for d, _, size in oversized] == [
            (bytes([257 % 256]) * 256, 257),
            (bytes([5000 % 256]) * 256, 5000),
            (bytes([60000 % 256]) * 256, 60000),
        ]
        assert all(peer == a.getsockname() for _, peer, _ in oversized)


def test_oversized_is_reset_by_each_receive() -> None:
    with udp() as a, udp() as b:
        receiver = DatagramBatch(b, slot_size=16)
        a.sendto(b"x" * 17, b.getsockname())
        _, oversized = receive(receiver, 1)
        assert len(oversized) == 1
        assert receiver.recv() == [] and receiver.oversized == []


def test_nothing_waiting_gives_an_empty_list_even_on_a_blocking_socket() -> None:
    with udp() as sock:
        sock.setblocking(True)  # MSG_DONTWAIT: the batch never blocks
        batch = DatagramBatch(sock)
        started = time.monotonic()
        assert batch.recv() == []
        assert batch.oversized == []
        assert time.monotonic() - started < 1.0


def test_refused_datagrams_and_bad_peers_are_skipped_and_the_rest_still_go() -> None:
    with udp() as a, udp() as b:
        peer = b.getsockname()
        items = [
            (b"first", peer),
            (b"x" * 70000, peer),  # over the UDP maximum: EMSGSIZE
            (b"a name", ("localhost", peer[1])),  # never resolved on the hot path
            (b"bad peer", ("999.1.1.1", 9)),
            (b"bad peer", ("127.0.0.1",)),
            (b"bad peer", "127.0.0.1"),
            (b"bad port", ("127.0.0.1", 70000)),
            (b"last", peer),
        ]
        assert DatagramBatch(a).send(items) == 2
        whole, _ = receive(DatagramBatch(b), 2)
        assert [d for d, _ in whole] == [b"first", b"last"]


@needs_ipv6
def test_an_ipv4_peer_on_an_ipv6_socket_is_skipped_as_sendto_refuses_it() -> None:
    with udp(socket.AF_INET6, "::") as server, udp() as client:
        peer = client.getsockname()
        with pytest.raises(OSError):
            server.sendto(b"x", peer)
        mapped = ("::ffff:127.0.0.1", peer[1])
        assert DatagramBatch(server).send([(b"x", peer), (b"mapped", mapped)]) == 1
        server_seen_as = ("127.0.0.1", server.getsockname()[1])
        assert receive(DatagramBatch(client), 1)[0] == [(b"mapped", server_seen_as)]


def test_a_closed_socket_raises_oserror() -> None:
    with udp() as a, udp() as b:
        batch = DatagramBatch(a)
        peer = b.getsockname()
    with pytest.raises(OSError):
        batch.recv()
    with pytest.raises(OSError):
        batch.send([(b"x", peer)])


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        (socket.AF_INET, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_DGRAM),
    ],
)
def test_other_sockets_are_refused(family: int, kind: int) -> None:
    with socket.socket(family, kind) as sock, pytest.raises(ValueError):
        DatagramBatch(sock)


@pytest.mark.parametrize("kwargs", [{"slots": 0}, {"slots": 5000}, {"slot_size": 0}])
def test_bad_sizes_are_refused(kwargs: dict[str, int]) -> None:
    with udp() as sock, pytest.raises(ValueError):
        DatagramBatch(sock, **kwargs)


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=40)
@given(st.lists(st.binary(max_size=1500), max_size=70), st.integers(1, 16))
def test_any_payloads_round_trip_whole_or_reported_oversized(data: list[bytes], slots: int) -> None:
    slot_size = 512
    with udp() as a, udp() as b:
        sent = DatagramBatch(a, slots=slots).send([(d, b.getsockname()) for d in data])
        assert sent == len(data)
        whole, oversized = receive(DatagramBatch(b, slots=slots, slot_size=slot_size), sent)
    assert [d for d, _ in whole] == [d for d in data if len(d) <= slot_size]
    assert [(d, n) for d, _, n in oversized] == [
        (d[:slot_size], len(d)) for d in data if len(d) > slot_size
    ]


ipv4_peers = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF))
ipv6_peers = st.tuples(
    # inet_ntop's spelling, as recvfrom gives it (ipaddress spells mapped IPv4 otherwise)
    st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed)),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFF),
    st.just(0),
)


@given(ipv4_peers)
def test_ipv4_sockaddrs_convert_both_ways(peer: tuple[str, int]) -> None:
    raw = mmsg.sockaddr_from_peer(socket.AF_INET, peer)
    assert len(raw) == 16
    assert mmsg.peer_from_sockaddr(raw) == peer


@given(ipv6_peers)
def test_ipv6_sockaddrs_convert_both_ways(peer: tuple[str, int, int, int]) -> None:
    raw = mmsg.sockaddr_from_peer(socket.AF_INET6, peer)
    assert len(raw) == 28
    assert mmsg.peer_from_sockaddr(raw) == peer
    assert mmsg.sockaddr_from_peer(socket.AF_INET6, peer[:2]) == raw[:4] + bytes(4) + raw[8:]


@given(st.sampled_from([b"", b"\x02\x00", b"\x0a\x00"]), st.binary(max_size=40))
def test_any_sockaddr_bytes_convert_or_raise_valueerror(family: bytes, rest: bytes) -> None:
    try:
        peer = mmsg.peer_from_sockaddr((family + rest).ljust(28, b"\0"))
    except ValueError:
        return
    assert isinstance(peer, tuple) and len(peer) in (2, 4)


# -- the worker, with batched and with plain I/O ---------------------------------------------


def _request(index: int, kind: int, code: int, path: bytes, payload: bytes = b"") -> bytes:
    """CoAP request, token = index (4 bytes), one Uri-Path segment (< 13 bytes)."""
    head = bytes((0x40 | kind << 4 | 4, code)) + index.to_bytes(2, "big") + index.to_bytes(4, "big")
    options = bytes((0xB0 | len(path),)) + path
    return head + options + (b"\xff" + payload if payload else b"")


EVENT = b'{"sender":"b","origin":"p1","payload":{"type":"t","value":1.5}}'


def _answers(batched_io: bool, requests: list[bytes]) -> dict[bytes, tuple[int, int, int | None]]:
    """token -> (type, code, Size1) of what a live worker answered."""
    import asyncio

    import uvloop

    from collector.config import Config
    from collector.worker import Worker

    config = Config(sink="null", host="127.0.0.1", port=0, max_body=1000)
    loop = uvloop.new_event_loop()
    with udp() as server, udp() as client:
        worker = Worker(0, server, config, None, metrics=False, batched_io=batched_io)

        async def scenario() -> dict[bytes, tuple[int, int, int | None]]:
            task = asyncio.ensure_future(worker.run())
            for request in requests:
                client.sendto(request, server.getsockname())
            answers: dict[bytes, tuple[int, int, int | None]] = {}
            deadline = loop.time() + 5.0
            while len(answers) < len(requests) and loop.time() < deadline:
                try:
                    data = client.recv(70000)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                msg = coap.decode(data)
                answers[msg.token] = (int(msg.type), int(msg.code), msg.uint_option(60))
            worker.stop()
            assert await task == 0
            return answers

        try:
            return loop.run_until_complete(scenario())
        finally:
            loop.close()


@pytest.mark.integration
def test_the_worker_answers_alike_with_batched_and_plain_io() -> None:
    post, get = 2, 1
    requests = [_request(i, 0, post, b"events", EVENT) for i in range(40)]
    requests += [
        _request(40, 1, post, b"events", EVENT),  # NON
        _request(41, 0, post, b"events", b"[" + EVENT * 30 + b"]"),  # > max_body, in a slot
        _request(42, 0, post, b"events", b"x" * 5000),  # > the slot: oversized, 4.13
        _request(43, 1, post, b"events", b"x" * 5000),  # the same as NON
        _request(44, 0, get, b"health"),
        _request(45, 0, get, b"nope"),
        _request(46, 0, post, b"events", b"{not json"),
    ]
    batched = _answers(True, requests)
    plain = _answers(False, requests)
    assert batched == plain
    ack, non = 2, 1
    assert [batched[i.to_bytes(4, "big")] for i in (0, 39, 40, 41, 42, 43, 44, 45)] == [
        (ack, 0x41, None),
        (ack, 0x41, None),
        (non, 0x41, None),
        (ack, 0x8D, 1000),
        (ack, 0x8D, 1000),
        (non, 0x8D, 1000),
        (ack, 0x45, None),
        (ack, 0x84, None),
    ]
    assert batched[(46).to_bytes(4, "big")][1] == 0x80
