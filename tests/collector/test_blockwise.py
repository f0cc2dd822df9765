"""Block-wise transfers (RFC 7959) as pure objects: Block1 reassembly, Block2 cuts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from collector.blockwise import MAX_BLOCK_SIZE, BlockError, Reassembly, block2

KEY = (("127.0.0.1", 1), ("events",), None)
OWNER = "127.0.0.1"


def blocks(body: bytes, szx: int) -> list[tuple[coap.Block, bytes]]:
    size = 1 << (szx + 4)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [(coap.Block(n, n < len(chunks) - 1, szx), c) for n, c in enumerate(chunks)]


@given(st.binary(min_size=1, max_size=3000), st.integers(min_value=0, max_value=6))
def test_blocks_in_order_give_back_the_body(body: bytes, szx: int) -> None:
    r = Reassembly(4096)
    result = None
    parts = blocks(body, szx)
    for i, (block, chunk) in enumerate(parts):
        result = r.feed(KEY, OWNER, block, chunk, 50 if i == 0 else None, 0.0)
        assert (result is None) == (i < len(parts) - 1)
    assert result == (body, 50)
    assert len(r) == 0


def test_a_gap_is_request_entity_incomplete() -> None:
    r = Reassembly(4096)
    assert r.feed(KEY, OWNER, coap.Block(0, True, 0), b"x" * 16, 50, 0.0) is None
    with pytest.raises(BlockError) as info:
        r.feed(KEY, OWNER, coap.Block(2, False, 0), b"y", 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_INCOMPLETE


def test_a_later_block_without_block_zero_is_incomplete() -> None:
    with pytest.raises(BlockError) as info:
        Reassembly(4096).feed(KEY, OWNER, coap.Block(1, False, 0), b"y", 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_INCOMPLETE


def test_past_max_body_is_too_large_and_forgotten() -> None:
    r = Reassembly(40)
    r.feed(KEY, OWNER, coap.Block(0, True, 0), b"x" * 16, 50, 0.0)
    r.feed(KEY, OWNER, coap.Block(1, True, 0), b"x" * 16, 50, 0.0)
    with pytest.raises(BlockError) as info:
        r.feed(KEY, OWNER, coap.Block(2, True, 0), b"x" * 16, 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_TOO_LARGE
    assert len(r) == 0


def test_a_short_block_that_claims_more_is_bad_request() -> None:
    with pytest.raises(BlockError) as info:
        Reassembly(4096).feed(KEY, OWNER, coap.Block(0, True, 0), b"short", 50, 0.0)
    assert info.value.code == coap.Code.BAD_REQUEST


def test_open_transfers_are_bounded_and_expire() -> None:
    r = Reassembly(4096, capacity=2, lifetime=10.0)
    for port in range(3):
        r.feed((("h", port), (), None), "h", coap.Block(0, True, 0), b"x" * 16, None, float(port))
    assert len(r) == 2  # the oldest was forgotten
    r.expire(12.5)
    assert len(r) == 0


def _first(r: Reassembly, key: tuple, owner: str, data: bytes, now: float = 0.0) -> None:
    assert r.feed(key, owner, coap.Block(0, True, 0), data, 50, now) is None


def test_request_tags_keep_two_uploads_of_one_endpoint_apart() -> None:
    """Regression: A0, B0, A1, B1 from one endpoint with different Request-Tags
    (RFC 9175 §3.3) were reassembled as one body, B's block 0 with A's block 1."""
    r = Reassembly(4096)
    peer, path = ("127.0.0.1", 1), ("events",)
    a, b = (peer, path, (b"A",)), (peer, path, (b"B",))
    _first(r, a, OWNER, b"a" * 16)
    _first(r, b, OWNER, b"b" * 16)
    assert r.feed(a, OWNER, coap.Block(1, False, 0), b"A-end", 50, 0.0) == (
        b"a" * 16 + b"A-end",
        50,
    )
    assert r.feed(b, OWNER, coap.Block(1, False, 0), b"B-end", 50, 0.0) == (
        b"b" * 16 + b"B-end",
        50,
    )


def test_one_endpoint_keeps_a_bounded_number_of_transfers() -> None:
    r = Reassembly(4096, per_endpoint=2)
    peer, path = ("127.0.0.1", 1), ("events",)
    for tag in (b"1", b"2", b"3"):
        _first(r, (peer, path, (tag,)), OWNER, b"x" * 16)
    assert len(r) == 2
    with pytest.raises(BlockError) as info:  # the endpoint's oldest went first
        r.feed((peer, path, (b"1",)), OWNER, coap.Block(1, False, 0), b"y", 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_INCOMPLETE


def test_a_host_opening_many_transfers_never_evicts_another_hosts() -> None:
    """Regression: one host that opened 1100 transfers evicted an honest device's
    transfer, which then got 4.08."""
    r = Reassembly(4096, capacity=1024)
    honest = (("10.0.0.2", 7), ("events",), None)
    _first(r, honest, "10.0.0.2", b"h" * 16)
    for port in range(1100):
        _first(r, (("10.0.0.1", port), ("events",), None), "10.0.0.1", b"x" * 16)
    assert len(r) == 1024
    assert r.feed(honest, "10.0.0.2", coap.Block(1, False, 0), b"!", 50, 0.0) == (
        b"h" * 16 + b"!",
        50,
    )


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.binary(min_size=1, max_size=100)), min_size=1, max_size=6
    ),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_of_uploads_reassembles_each_body_exactly(
    uploads: list[tuple[int, bytes]], rnd: object
) -> None:
    """Uploads from several endpoints and tags, their blocks interleaved at random:
    each finished body is exactly one upload's bytes, never a mix."""
    r = Reassembly(1 << 16)
    queues = []
    for i, (endpoint, body) in enumerate(uploads):
        key = (("127.0.0.1", endpoint), ("events",), (bytes([i]),))
        queues.append([(key, block, chunk, body) for block, chunk in blocks(body, 0)])
    done = []
    while any(queues):
        q = rnd.choice([q for q in queues if q])  # type: ignore[attr-defined]
        key, block, chunk, body = q.pop(0)
        got = r.feed(key, "127.0.0.1", block, chunk, 50, 0.0)
        if got is not None:
            done.append((got[0], body))
    assert len(done) == len(uploads)
    assert all(got == body for got, body in done)


def test_block2_leaves_a_small_payload_whole_and_cuts_a_large_one() -> None:
    assert block2(b"x" * 100, None) == (b"x" * 100, ())
    chunk, options = block2(b"y" * 3000, None)
    assert len(chunk) == MAX_BLOCK_SIZE
    assert coap.Block.decode(dict(options)[coap.OptionNumber.BLOCK2]) == coap.Block(0, True, 6)


@pytest.mark.parametrize("num", [0, 1, 4])
def test_block2_serves_the_block_asked_for_at_its_size(num: int) -> None:
    payload = bytes(range(130))
    chunk, options = block2(payload, coap.Block(num, False, 1), size2=True)
    assert chunk == payload[num * 32 : num * 32 + 32]
    got = dict(options)
    assert coap.Block.decode(got[coap.OptionNumber.BLOCK2]) == coap.Block(num, num < 4, 1)
    assert (coap.OptionNumber.SIZE2 in got) == (num == 0)


def test_block2_past_the_end_is_bad_option() -> None:
    with pytest.raises(BlockError) as info:
        block2(b"x" * 40, coap.Block(5, False, 1))
    assert info.value.code == coap.Code.BAD_OPTION
