"""Hypothesis strategies for valid CoAP messages, shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

import coap
from coap import Message, Type

types = st.sampled_from(list(Type))
# Every one-byte code outside the reserved classes 1, 6, 7 and other than 0.00.
non_empty_codes = st.integers(1, 255).filter(lambda c: c >> 5 not in (1, 6, 7))
mids = st.integers(0, 0xFFFF)
tokens = st.binary(max_size=8)

# Option numbers that exercise every delta form: the small nibble range, the
# 1-byte extension (13-268) and the 2-byte one, up to the 16-bit maximum.
option_numbers = st.one_of(
    st.integers(0, 12),
    st.integers(13, 268),
    st.integers(269, 65535),
    st.sampled_from([int(n) for n in coap.OptionNumber]),
)
# Lengths around the nibble/extension boundaries without making every example huge.
option_values = st.one_of(
    st.binary(max_size=14),
    st.integers(260, 280).map(lambda n: b"v" * n),
)
option_lists = st.lists(st.tuples(option_numbers, option_values), max_size=12).map(
    lambda opts: tuple(sorted(opts, key=lambda o: o[0]))
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Any message that RFC 7252 lets us send (so decode(encode(m)) == m holds)."""
    mtype = draw(types)
    mid = draw(mids)
    if draw(st.integers(0, 9)) == 0:
        return Message(mtype, coap.Code.EMPTY, mid)
    return Message(
        mtype,
        draw(non_empty_codes),
        mid,
        draw(tokens),
        draw(option_lists),
        draw(st.binary(max_size=64)),
    )
