"""The exchange layer's rules (RFC 7252 §4) and response bytes on plain values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from collector.exchange import ExchangeLayer, Request
from collector.responses import build_response, empty, fit, header

PEER = ("127.0.0.1", 40000)


def make_layer(
    capacity: int = 10, lifetime: float = 247.0
) -> tuple[ExchangeLayer, list[tuple[bytes, object]]]:
    sent: list[tuple[bytes, object]] = []
    layer = ExchangeLayer(
        lambda d, p: sent.append((d, p)), capacity=capacity, ack_delay=0.5, lifetime=lifetime
    )
    return layer, sent


def test_header_is_a_valid_piggybacked_ack() -> None:
    msg = coap.decode(header(2, 65, 0x1234, b"\x01\x02"))
    assert (msg.type, msg.code, msg.mid, msg.token) == (
        coap.Type.ACK,
        coap.Code.CREATED,
        0x1234,
        b"\x01\x02",
    )


def test_empty_rst_has_no_token_and_code_zero() -> None:
    msg = coap.decode(empty(3, 7))
    assert (msg.type, msg.code, msg.mid, msg.token, msg.payload) == (coap.Type.RST, 0, 7, b"", b"")


@pytest.mark.parametrize("limit", [12, 20, 40, 200])
def test_diagnostic_is_cut_to_the_request_size(limit: int) -> None:
    data = build_response(
        2, 1, b"tok", 128, diagnostic="event[3].payload.value: required " * 5, limit=limit
    )
    msg = coap.decode(data)
    assert msg.code == coap.Code.BAD_REQUEST
    assert len(data) <= max(limit, len(header(2, 128, 1, b"tok")))
    if msg.payload:
        assert msg.content_format == 0


def test_fit_never_splits_a_character() -> None:
    assert fit("ééé", 3) == "é".encode()
    assert fit("abc", 0) == b""


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_fit_is_a_valid_prefix_within_budget(text: str, budget: int) -> None:
    out = fit(text, budget)
    assert len(out) <= budget
    assert text.encode().startswith(out)


def test_duplicate_of_answered_request_gets_the_same_bytes() -> None:
    layer, sent = make_layer()
    assert not layer.duplicate(PEER, 5, 30)
    layer.remember((PEER, 5), "h", 0.0, 30, b"response")
    assert layer.duplicate(PEER, 5, 30)
    assert sent == [(b"response", PEER)]


def test_same_mid_with_another_length_is_dropped_not_answered_from_cache() -> None:
    """Regression: a 4-byte datagram reusing a remembered MID drew the cached, larger
    response (amplification, RFC 7252 §11.3)."""
    layer, sent = make_layer()
    layer.remember((PEER, 5), "h", 0.0, 60, b"a response of some length")
    assert layer.duplicate(PEER, 5, 4)
    assert sent == []


def test_duplicate_while_storing_is_absorbed_then_acked_once_separate() -> None:
    layer, sent = make_layer()
    req = Request(PEER, 9, b"t", 0, 30, 0.0, PEER[0])
    req.remaining = 1
    layer.remember(req.key, "h", 0.0, 30, req)
    layer.track(req)
    assert layer.duplicate(PEER, 9, 30)
    assert sent == []  # absorbed
    layer.tick(0.6)  # past ack-delay: the empty ACK goes out
    assert req.separate
    assert sent == [(empty(2, 9), PEER)]
    assert layer.duplicate(PEER, 9, 30)  # a retransmission now gets the empty ACK again
    assert sent[-1] == (empty(2, 9), PEER)


def test_capacity_forgets_the_oldest_exchange_first() -> None:
    layer, _ = make_layer(capacity=3)
    for mid in range(5):
        layer.remember((PEER, mid), "h", float(mid), 10, b"r")
    assert len(layer.seen) == 3
    assert not layer.duplicate(PEER, 0, 10)
    assert not layer.duplicate(PEER, 1, 10)
    assert layer.duplicate(PEER, 4, 10)


def test_entries_expire_after_the_exchange_lifetime() -> None:
    layer, _ = make_layer(lifetime=10.0)
    layer.remember((PEER, 1), "h", 0.0, 10, b"r")
    layer.remember((PEER, 2), "h", 5.0, 10, b"r")
    layer.tick(10.5)
    assert (PEER, 1) not in layer.seen
    assert (PEER, 2) in layer.seen


def test_separate_response_is_retransmitted_with_backoff_until_acked() -> None:
    layer, sent = make_layer()
    mid = layer.next_mid()
    layer.send_confirmable(PEER, mid, header(0, 65, mid, b"t"), 0.0)
    first = coap.decode(sent[0][0])
    assert first.type == coap.Type.CON
    layer.tick(1.0)  # before ACK_TIMEOUT: nothing
    assert len(sent) == 1
    layer.tick(3.1)  # past ACK_TIMEOUT * ACK_RANDOM_FACTOR
    assert len(sent) == 2 and sent[1][0] == sent[0][0]
    layer.on_ack(PEER, first.mid)
    layer.tick(100.0)
    assert len(sent) == 2
    assert layer.outgoing == 0


def test_separate_response_gives_up_after_max_retransmit() -> None:
    layer, sent = make_layer()
    mid = layer.next_mid()
    layer.send_confirmable(PEER, mid, header(0, 65, mid, b"t"), 0.0)
    now = 0.0
    for _ in range(50):
        now += 10.0
        layer.tick(now)
    assert len(sent) == 1 + coap.transmission.MAX_RETRANSMIT
    assert layer.outgoing == 0


def test_a_flood_from_one_address_evicts_only_its_own_entries() -> None:
    """Regression: 1M unique (port, MID) pairs from one address evicted every
    device's dedup entries, and an honest device's retransmission was stored twice."""
    layer, sent = make_layer(capacity=100)
    honest = ("10.0.0.2", 5683)
    layer.remember((honest, 1), honest[0], 0.0, 30, b"honest answer")
    for i in range(10_000):
        attacker = ("10.0.0.1", 1024 + i % 60000)
        layer.remember((attacker, i & 0xFFFF), attacker[0], 0.001 * i, 30, b"r")
    assert len(layer.seen) == 100
    assert layer.duplicate(honest, 1, 30)
    assert sent[-1] == (b"honest answer", honest)


def test_a_silent_answer_stays_silent_for_duplicates() -> None:
    """No-Response (RFC 7967): an answer suppressed once is suppressed for the
    retransmissions too, which are still recognised as duplicates."""
    layer, sent = make_layer()
    layer.remember((PEER, 3), "h", 0.0, 20, b"")
    assert layer.duplicate(PEER, 3, 20)
    assert sent == []


def test_a_settled_request_is_let_go_and_draws_no_empty_ack() -> None:
    """A request answered before its ack-delay is released at once (not held until
    the deadline, which kept every request of a busy worker past the young GC
    generation) and gets no empty ACK; the others still do, in order, across the
    list's compaction."""
    import sys

    layer, sent = make_layer()
    requests = [
        Request((PEER[0], 40000 + i), i, b"t", 0, 30, 0.001 * i, PEER[0], events=1)
        for i in range(3000)
    ]
    for request in requests:
        layer.track(request)
    held = sys.getrefcount(requests[1])
    for request in requests[1::2]:
        layer.settle(request)
    after = sys.getrefcount(requests[1])  # (outside the assert: it holds temporaries)
    assert after == held - 1
    layer.tick(1.0)  # past the first ~500 deadlines: the list's front is dropped
    layer.tick(3.5)
    acked = [coap.decode(data).mid for data, _peer in sent]
    assert acked == list(range(0, 3000, 2))
    assert all(r.separate for r in requests[0::2]) and not any(r.separate for r in requests[1::2])
    late = Request(PEER, 4000, b"t", 0, 30, 3.5, PEER[0], events=1)
    layer.track(late)  # tracked after a compaction: its slot still finds it
    layer.settle(late)
    layer.tick(10.0)
    assert len(sent) == 1500


def test_settling_a_request_the_tick_already_dropped_touches_no_other() -> None:
    """A request answered after its deadline (a separate response, a slow store) has
    left the list by then; settling it must not clear another request's place."""
    layer, sent = make_layer()
    early = [
        Request((PEER[0], 40000 + i), i, b"t", 0, 30, 0.0, PEER[0], events=1) for i in range(2000)
    ]
    for request in early:
        layer.track(request)
    layer.tick(1.0)  # all past their deadline: empty ACKs, and the list's front dropped
    assert len(sent) == 2000
    late = [Request(PEER, 5000 + i, b"t", 0, 30, 2.0, PEER[0], events=1) for i in range(3)]
    for request in late:
        layer.track(request)
    for request in early:
        layer.settle(request)  # answered now, long after their empty ACKs
    layer.tick(3.0)
    assert [coap.decode(data).mid for data, _peer in sent[2000:]] == [5000, 5001, 5002]


def test_settling_an_untracked_request_touches_no_other() -> None:
    layer, sent = make_layer()
    tracked = Request(PEER, 1, b"t", 0, 30, 0.0, PEER[0], events=1)
    layer.track(tracked)
    layer.settle(Request(PEER, 2, b"t", 1, 30, 0.0, PEER[0], events=1))  # a NON: never tracked
    layer.tick(1.0)
    assert [coap.decode(data).mid for data, _peer in sent] == [1]
