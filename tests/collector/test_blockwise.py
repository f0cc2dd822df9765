"""Block1 reassembly (RFC 7959 §2.5) as a pure object."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from collector.blockwise import BlockError, Reassembly

KEY = (("127.0.0.1", 1), ("events",))


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
        result = r.feed(KEY, block, chunk, 50 if i == 0 else None, 0.0)
        assert (result is None) == (i < len(parts) - 1)
    assert result == (body, 50)
    assert len(r) == 0


def test_a_gap_is_request_entity_incomplete() -> None:
    r = Reassembly(4096)
    assert r.feed(KEY, coap.Block(0, True, 0), b"x" * 16, 50, 0.0) is None
    with pytest.raises(BlockError) as info:
        r.feed(KEY, coap.Block(2, False, 0), b"y", 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_INCOMPLETE


def test_a_later_block_without_block_zero_is_incomplete() -> None:
    with pytest.raises(BlockError) as info:
        Reassembly(4096).feed(KEY, coap.Block(1, False, 0), b"y", 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_INCOMPLETE


def test_past_max_body_is_too_large_and_forgotten() -> None:
    r = Reassembly(40)
    r.feed(KEY, coap.Block(0, True, 0), b"x" * 16, 50, 0.0)
    r.feed(KEY, coap.Block(1, True, 0), b"x" * 16, 50, 0.0)
    with pytest.raises(BlockError) as info:
        r.feed(KEY, coap.Block(2, True, 0), b"x" * 16, 50, 0.0)
    assert info.value.code == coap.Code.REQUEST_ENTITY_TOO_LARGE
    assert len(r) == 0


def test_a_short_block_that_claims_more_is_bad_request() -> None:
    with pytest.raises(BlockError) as info:
        Reassembly(4096).feed(KEY, coap.Block(0, True, 0), b"short", 50, 0.0)
    assert info.value.code == coap.Code.BAD_REQUEST


def test_open_transfers_are_bounded_and_expire() -> None:
    r = Reassembly(4096, capacity=2, lifetime=10.0)
    for port in range(3):
        r.feed((("h", port), ()), coap.Block(0, True, 0), b"x" * 16, None, float(port))
    assert len(r) == 2  # the oldest was forgotten
    r.expire(12.5)
    assert len(r) == 0
