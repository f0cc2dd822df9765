"""The exchange layer of a live collector (RFC 7252 §4): duplicates, pings, malformed
datagrams, separate responses and their retransmission.

The slow store is a real fault, not a double: the test holds SQLite's write lock on the
collector's own database file (`BEGIN EXCLUSIVE` in another connection), so the
worker's `BEGIN IMMEDIATE` waits for it exactly as it would behind a slow disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import coap
from coap import Code, Message, Type

from .conftest import CoapClient, Collector, event, row_count

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's exclusive write lock on `db` until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def no_reply(client: CoapClient, timeout: float) -> None:
    data = client.recv_raw(timeout)
    assert data is None, f"unexpected datagram {coap.decode(data)!r}"


def still_serves(server: Collector, client: CoapClient | None = None) -> None:
    """A normal POST still gets 2.01 and is stored."""
    ev = event()
    if client is None:
        with server.client() as c:
            reply = c.post_events(ev)
    else:
        reply = client.post_events(ev)
    assert reply.code == Code.CREATED, reply
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


# --- duplicates -------------------------------------------------------------------


def test_con_sent_five_times_is_answered_identically_and_stored_once(
    collector: Callable[..., Collector],
) -> None:
    server = collector(workers=2)
    origin = f"dup-{uuid.uuid4().hex[:12]}"
    body = [event(origin=origin, id=None), event(origin=origin, id=None, sender="other")]
    with server.client() as client:
        msg = client.build(Code.POST, "events", json.dumps(body).encode(), fmt=50)
        request = coap.encode(msg)
        answers = []
        for _ in range(5):
            client.send(request)
            answer = client.recv_raw(5.0)
            assert answer is not None
            answers.append(answer)
        assert len(set(answers)) == 1, answers
        first = coap.decode(answers[0])
        assert (first.type, first.code, first.mid, first.token) == (
            Type.ACK,
            Code.CREATED,
            msg.mid,
            msg.token,
        )
        no_reply(client, 0.3)  # five requests, five answers, nothing more
        assert row_count(server.db, "origin = ?", (origin,)) == 2

        # The same events with explicit ids, in new exchanges (new MIDs): still one row each.
        with_ids = [event(origin=origin, sender=f"id-{i}") for i in range(2)]
        for _ in range(3):
            assert client.post_events(with_ids).code == Code.CREATED
        assert row_count(server.db, "origin = ?", (origin,)) == 4
        for ev in with_ids:
            assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


def test_duplicate_error_response_is_the_same_bytes(collector: Callable[..., Collector]) -> None:
    server = collector()
    with server.client() as client:
        msg = client.build(Code.POST, "events", b'{"sender": 1}', fmt=50)
        request = coap.encode(msg)
        answers = [client.exchange_raw(request, 2.0) for _ in range(3)]
        assert answers[0] is not None and len(set(answers)) == 1
        assert coap.decode(answers[0]).code == Code.BAD_REQUEST


def test_same_mid_from_another_port_is_another_exchange(
    collector: Callable[..., Collector],
) -> None:
    # Duplicates are per (endpoint, MID): a second device that happens to use the same
    # MID is not a duplicate of the first.
    server = collector()
    evs = [event(), event()]
    with server.client() as a, server.client() as b:
        for client, ev in ((a, evs[0]), (b, evs[1])):
            msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50, mid=4242)
            assert client.transact(msg).code == Code.CREATED
    for ev in evs:
        assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


def test_duplicate_while_storing_is_absorbed_then_acked(
    collector: Callable[..., Collector],
) -> None:
    server = collector(ack_delay=0.25)
    ev = event()
    client = server.client()
    with write_lock(server.db):
        msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50)
        request = coap.encode(msg)
        client.send(request)
        client.send(request)  # the first copy is being stored: absorbed, no answer
        client.send(request)
        first = client.recv(3.0)
        assert first is not None
        assert (first.type, first.code, first.mid) == (Type.ACK, Code.EMPTY, msg.mid)
        no_reply(client, 0.1)  # one empty ACK for three copies
        client.send(request)  # after the empty ACK, a duplicate is ACKed again
        again = client.recv(1.0)
        assert again is not None and (again.type, again.code, again.mid) == (
            Type.ACK,
            Code.EMPTY,
            msg.mid,
        )
    response = client.recv(6.0)
    assert response is not None
    assert (response.type, response.code, response.token) == (Type.CON, Code.CREATED, msg.token)
    client.ack(response)
    no_reply(client, 0.3)  # exactly one separate response
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1
    client.close()


# --- pings and malformed datagrams -------------------------------------------------


def test_ping_gets_rst_with_the_same_mid(collector: Callable[..., Collector]) -> None:
    server = collector()
    with server.client() as client:
        for mid in (0, 1, 0xBEEF, 0xFFFF):
            answer = client.exchange_raw(bytes((0x40, 0, mid >> 8, mid & 0xFF)), 2.0)
            assert answer == bytes((0x70, 0, mid >> 8, mid & 0xFF))
        # An empty NON, or an unsolicited empty ACK/RST, is not answered at all.
        for first in (0x50, 0x60, 0x70):
            client.send(bytes((first, 0, 0x12, 0x34)))
        no_reply(client, 0.3)
        still_serves(server, client)


def _header(type_: Type, mid: int, tkl: int = 0, code: int = Code.POST) -> bytes:
    return bytes((0x40 | (type_ << 4) | tkl, code, mid >> 8, mid & 0xFF))


URI_EVENTS = bytes((0xB6,)) + b"events"

# name -> (builder of a datagram for a type and MID, is the MID recoverable)
MALFORMED: dict[str, tuple[Callable[[Type, int], bytes], bool]] = {
    "empty-datagram": (lambda t, m: b"", False),
    "one-byte": (lambda t, m: _header(t, m)[:1], False),
    "truncated-header": (lambda t, m: _header(t, m)[:3], False),
    "version-2": (lambda t, m: bytes((0x80 | (t << 4),)) + _header(t, m)[1:], False),
    "tkl-9": (lambda t, m: _header(t, m, tkl=9) + b"123456789", True),
    "tkl-15": (lambda t, m: _header(t, m, tkl=15) + b"x" * 15, True),
    "token-shorter-than-tkl": (lambda t, m: _header(t, m, tkl=8) + b"abc", True),
    "delta-nibble-15": (lambda t, m: _header(t, m) + URI_EVENTS + b"\xf0", True),
    "length-nibble-15": (lambda t, m: _header(t, m) + b"\x1f" + b"x" * 20, True),
    "marker-without-payload": (
        lambda t, m: _header(t, m, tkl=2) + b"tk" + URI_EVENTS + b"\xff",
        True,
    ),
    "option-past-end": (lambda t, m: _header(t, m) + b"\xbc" + b"events", True),
    "extended-delta-truncated": (lambda t, m: _header(t, m) + b"\xd0", True),
    "empty-code-with-bytes": (lambda t, m: _header(t, m, code=0) + b"\x00", True),
    "reserved-class-1": (lambda t, m: _header(t, m, code=0x21) + URI_EVENTS, True),
    "response-code-as-request": (lambda t, m: _header(t, m, code=Code.CONTENT), True),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    from .conftest import start_collector

    srv = start_collector(tmp_path_factory.mktemp("malformed"))
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("type_", [Type.CON, Type.NON], ids=lambda t: t.name)
def test_malformed_datagram_gets_the_rfc_answer(shared: Collector, name: str, type_: Type) -> None:
    build, mid_known = MALFORMED[name]
    workers = shared.workers()
    with shared.client() as client:
        mid = client.next_mid()
        answer = client.exchange_raw(build(type_, mid), 0.3)
        if type_ == Type.CON and mid_known:
            # §4.2: a CON that cannot be processed is rejected with RST (same MID).
            assert answer == bytes((0x70, 0, mid >> 8, mid & 0xFF)), answer
        else:
            # §3 (unknown version) and §4.3 (NON): silently ignored.
            assert answer is None, coap.decode(answer)
        still_serves(shared, client)
    assert shared.workers() == workers, "a worker died"
    assert "datagram handling failed" not in shared.stderr()


# --- separate responses ------------------------------------------------------------


def test_slow_store_gets_empty_ack_then_separate_con_response(
    collector: Callable[..., Collector],
) -> None:
    server = collector(ack_delay=0.1)
    acked_ev, unacked_ev, reset_ev = event(), event(), event()
    with server.client() as acker, server.client() as silent, server.client() as resetter:
        msgs: dict[CoapClient, Message] = {}
        with write_lock(server.db):
            held_since = time.monotonic()
            for client, ev in ((acker, acked_ev), (silent, unacked_ev), (resetter, reset_ev)):
                msg = client.build(
                    Code.POST,
                    "events",
                    json.dumps(ev).encode(),
                    fmt=50,
                    token=b"tok-" + bytes([len(msgs)]),
                )
                msgs[client] = msg
                client.send(coap.encode(msg))
            for client, msg in msgs.items():
                empty = client.recv(2.0)
                assert empty is not None, "no empty ACK while the store was locked"
                assert (empty.type, empty.code, empty.mid, empty.token) == (
                    Type.ACK,
                    Code.EMPTY,
                    msg.mid,
                    b"",
                )
            no_reply(acker, max(0.0, 0.6 - (time.monotonic() - held_since)))
        for client, msg in msgs.items():
            response_raw = client.recv_raw(6.0)
            assert response_raw is not None, "no separate response after the lock was released"
            response = coap.decode(response_raw)
            assert (response.type, response.code, response.token) == (
                Type.CON,
                Code.CREATED,
                msg.token,
            )
            if client is acker:
                client.ack(response)
            elif client is resetter:  # §4.2: a RST also ends the retransmission
                client.send(coap.encode(Message(Type.RST, Code.EMPTY, response.mid)))
            else:
                first_copy = response_raw
        # The un-ACKed CON is retransmitted (ACK_TIMEOUT 2..3 s): the same bytes again.
        again = silent.recv_raw(4.5)
        assert again == first_copy
        silent.send(bytes((0x60, 0)) + again[2:4])  # ACK it now
        # The ACKed and the RST one were not retransmitted in those seconds.
        no_reply(acker, 0.05)
        no_reply(resetter, 0.05)
    for ev in (acked_ev, unacked_ev, reset_ev):
        assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


def test_reused_mid_never_gets_an_answer_larger_than_itself(
    collector: Callable[..., Collector],
) -> None:
    server = collector()
    with server.client() as client:
        big = client.build(Code.POST, "events", json.dumps(event(origin=None)).encode(), fmt=50)
        first = client.exchange_raw(coap.encode(big), 2.0)
        assert first is not None and coap.decode(first).code == Code.BAD_REQUEST
        assert len(first) > 4
        tiny = bytes((0x40, Code.GET, big.mid >> 8, big.mid & 0xFF))  # CON GET, same MID
        answer = client.exchange_raw(tiny, 0.5)
        assert answer is None or len(answer) <= len(tiny), (
            f"{len(answer)}-byte answer to a {len(tiny)}-byte datagram"
        )


def test_empty_ack_is_timely_while_the_store_stays_slow(
    collector: Callable[..., Collector],
) -> None:
    """The store stays locked for 3 s. A request that arrives after the worker's
    once-a-second store probe has started (and is stuck behind the same lock) must still
    get its empty ACK after --ack-delay, not when the store comes back: otherwise every
    device retransmits exactly when the store is slow."""
    server = collector(ack_delay=0.1)
    with server.client() as first, server.client() as later:
        with write_lock(server.db):
            held = time.monotonic()
            m1 = first.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            first.send(coap.encode(m1))
            ack1 = first.recv(1.0)
            assert ack1 is not None and (ack1.type, ack1.code) == (Type.ACK, Code.EMPTY)
            time.sleep(1.6)  # a store probe is now due and stuck behind the lock
            m2 = later.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            later.send(coap.encode(m2))
            ack2 = later.recv(1.0)
            waited = time.monotonic() - held
            assert ack2 is not None, (
                f"no empty ACK within 1 s ({waited:.1f} s into a 3 s store stall)"
            )
            assert (ack2.type, ack2.code, ack2.mid) == (Type.ACK, Code.EMPTY, m2.mid)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - held)))
        for client, msg in ((first, m1), (later, m2)):
            reply = client.recv(6.0)
            if reply is not None and reply.code == Code.EMPTY:  # a late empty ACK
                reply = client.recv(6.0)
            assert reply is not None and (reply.type, reply.code, reply.token) == (
                Type.CON,
                Code.CREATED,
                msg.token,
            )
            client.ack(reply)
