"""The request core without sockets or clocks: datagrams in, answers and events out."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

import coap
from coap import Code, Message, OptionNumber, Type
from collector import core as core_module
from collector.config import Config
from collector.core import RequestCore
from collector.identity import Identity
from collector.sinks.base import CONFLICT, STORED, Result

PEER = ("127.0.0.1", 40000)
WALL_MS = 1_700_000_000_000
BODY = orjson.dumps({"sender": "s", "origin": "o", "payload": {"type": "t", "value": 1}})


def make(**flags: object) -> tuple[RequestCore, list]:
    items: list = []
    core = RequestCore(Config(sink="null", **flags), lambda e, r, p: items.append((e, r, p)))  # type: ignore[arg-type]
    return core, items


def post(mid: int, type_: Type = Type.CON) -> bytes:
    return coap.encode(Message(type_, Code.POST, mid, b"t", ((11, b"events"),), BODY))


def answers(core: RequestCore) -> list[Message]:
    out = [coap.decode(d) for d, _p in core.outbox]
    core.outbox.clear()
    return out


def test_a_conflicting_result_is_answered_4_09_with_its_reason() -> None:
    core, items = make()
    core.datagram(post(1), PEER, 1.0, WALL_MS)
    core.on_results(items, [CONFLICT], 1.1)
    (reply,) = answers(core)
    assert (reply.type, reply.code, reply.mid) == (Type.ACK, Code.CONFLICT, 1)
    assert core.pending == 0


def test_the_device_s_fault_takes_precedence_over_the_store_s() -> None:
    """4.00 (rejected) over 4.09 (conflict) over 5.03 (failed), whatever the order."""
    core, items = make()
    body = orjson.dumps([orjson.loads(BODY)] * 3)
    core.datagram(
        coap.encode(Message(Type.CON, Code.POST, 2, b"", ((11, b"events"),), body)),
        PEER,
        1.0,
        WALL_MS,
    )
    results = [
        Result(core_module.Outcome.FAILED, "down"),
        CONFLICT,
        Result(core_module.Outcome.REJECTED, "mapping"),
    ]
    core.on_results(items, results, 1.1)
    (reply,) = answers(core)
    assert reply.code == Code.BAD_REQUEST


def test_draining_refuses_new_requests_with_max_age_and_still_takes_acks() -> None:
    core, items = make(ack_delay=0.1)
    core.datagram(post(3), PEER, 0.0, WALL_MS)
    core.tick(0.2)  # the store is slow: empty ACK, a separate response later
    assert [m.code for m in answers(core)] == [Code.EMPTY]
    core.drain()
    core.datagram(post(4, Type.NON), ("127.0.0.1", 40001), 0.3, WALL_MS)
    (late,) = answers(core)
    assert late.code == Code.SERVICE_UNAVAILABLE
    assert 2 <= (late.uint_option(OptionNumber.MAX_AGE) or 0) <= 4
    core.on_results(items, [STORED], 0.4)
    (separate,) = answers(core)
    assert separate.type == Type.CON and core.owed  # until the device ACKs it
    core.datagram(coap.encode(Message(Type.ACK, Code.EMPTY, separate.mid)), PEER, 0.5, WALL_MS)
    assert not core.owed


@given(st.integers(1, 60))
def test_max_age_is_jittered_between_the_base_and_twice_it(base: int) -> None:
    assert base <= coap.decode_uint(core_module.max_age(base)) <= 2 * base


def test_a_bug_free_core_never_raises_for_garbage() -> None:
    core, _items = make()
    for data in (b"", b"\x40", b"\xff" * 30, b"\x40\x01\x00\x01\xbf", post(5)[:-3]):
        core.datagram(data, PEER, 1.0, WALL_MS)


def _codes(core: RequestCore) -> list[Code]:
    return [m.code for m in answers(core)]


def test_one_address_that_fills_the_queue_leaves_the_reserve_to_the_others() -> None:
    """Issue 15: the pending-event capacity is shared per owner. One source fills
    the queue up to the soft limit and no further; another device is still taken
    from the reserve, and the heavy one is refused while it holds its share."""
    core, items = make(max_pending=80)
    soft = 80 - 80 // core_module.PENDING_RESERVE  # 70
    heavy = [("10.0.0.1", 1000 + i) for i in range(soft + 5)]
    for i, peer in enumerate(heavy):
        core.datagram(post(i), peer, 1.0, WALL_MS)
    codes = _codes(core)
    assert len(items) == soft and core.pending == soft
    assert codes == [Code.SERVICE_UNAVAILABLE] * 5  # the rest were accepted, unanswered
    core.datagram(post(900), ("10.0.0.2", 5683), 1.0, WALL_MS)
    assert len(items) == soft + 1 and not answers(core)  # taken: the reserve is its
    core.datagram(post(901), ("10.0.0.1", 9999), 1.0, WALL_MS)
    assert _codes(core) == [Code.SERVICE_UNAVAILABLE]
    # Once the store answers, the heavy device's events leave its share again.
    core.on_results(items[:10], [STORED] * 10, 1.1)
    assert _codes(core) == [Code.CREATED] * 10
    core.datagram(post(902), ("10.0.0.1", 9998), 1.2, WALL_MS)
    assert len(items) == soft + 2 and not answers(core)


def test_the_reserve_goes_to_owners_under_their_share_and_max_pending_still_bounds_it() -> None:
    core, items = make(max_pending=16)  # soft 14, counted from 7 on: shares of 7
    for i in range(14):
        core.datagram(post(i), ("10.0.0.1", 2000 + i), 1.0, WALL_MS)
    assert core.pending == 14
    for i in range(4):  # a second owner: under its share (3) until --max-pending
        core.datagram(post(100 + i), ("10.0.0.2", 3000 + i), 1.0, WALL_MS)
    assert core.pending == 16
    assert _codes(core) == [Code.SERVICE_UNAVAILABLE] * 2
    core.datagram(post(200), ("10.0.0.3", 1), 1.0, WALL_MS)  # a newcomer: the hard bound
    (refused,) = answers(core)
    assert refused.code == Code.SERVICE_UNAVAILABLE
    assert refused.payload == b"overloaded"
    core.on_results(items, [STORED] * len(items), 1.1)
    assert _codes(core) == [Code.CREATED] * 16 and core.pending == 0
    core.datagram(post(300), ("10.0.0.1", 7), 1.2, WALL_MS)  # every share was released
    assert core.pending == 1 and not answers(core)


def test_an_identity_is_the_owner_over_dtls_whatever_its_address() -> None:
    core, _items = make(max_pending=8)  # soft 7
    device = Identity("dev-1", "lab", "dev-1")
    body = orjson.dumps({"origin": "o", "payload": {"type": "t", "value": 1}})
    for i in range(8):
        data = coap.encode(Message(Type.CON, Code.POST, i, b"", ((11, b"events"),), body))
        core.datagram(data, (f"10.0.1.{i}", 5684), 1.0, WALL_MS, identity=device)
    assert core.pending == 7
    (refused,) = answers(core)
    assert refused.payload == b"overloaded: this device's share"
