"""Spec vectors: hand-computed datagrams, one row a case (hpack's table style).

Each valid row is checked both ways (decode gives the message, encode gives the
bytes); each malformed row must raise MessageFormatError carrying the header
fields the decoder could recover (RFC 7252 §3, §4.1, §5.4; see coap/_codec.py).
"""

from __future__ import annotations

import pytest

import coap
from coap import Code, Message, MessageFormatError, Type


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


TOKEN4 = h("01020304")
TOKEN8 = h("0102030405060708")

# (id, datagram, message)
VALID = [
    # -- every message type, empty and non-empty tokens ------------------------
    ("con-get-no-token", h("40 01 00 01"), Message(Type.CON, Code.GET, 1)),
    ("non-post-1-byte-token", h("51 02 ab cd 7f"), Message(Type.NON, Code.POST, 0xABCD, b"\x7f")),
    (
        "ack-2.01-4-byte-token",
        h("64 41 12 34 01020304"),
        Message(Type.ACK, Code.CREATED, 0x1234, TOKEN4),
    ),
    ("rst-empty", h("70 00 ff ff"), Message(Type.RST, Code.EMPTY, 0xFFFF)),
    ("con-empty-ping", h("40 00 00 00"), Message(Type.CON, Code.EMPTY, 0)),
    ("ack-empty", h("60 00 be ef"), Message(Type.ACK, Code.EMPTY, 0xBEEF)),
    (
        "non-5.03-8-byte-token",
        h("58 a3 00 07 0102030405060708"),
        Message(Type.NON, Code.SERVICE_UNAVAILABLE, 7, TOKEN8),
    ),
    ("unregistered-code-2.07", h("50 47 00 01"), Message(Type.NON, 0x47, 1)),
    # -- payload with and without marker ---------------------------------------
    (
        "payload-no-options",
        h("50 02 00 02 ff 6869"),
        Message(Type.NON, Code.POST, 2, payload=b"hi"),
    ),
    (
        "payload-after-option",
        h("40 02 00 03 b3 657674 ff 7b7d"),
        Message(Type.CON, Code.POST, 3, options=((11, b"evt"),), payload=b"{}"),
    ),
    (
        "no-payload-after-option",
        h("40 01 00 04 b3 657674"),
        Message(Type.CON, Code.GET, 4, options=((11, b"evt"),)),
    ),
    # The device POST: CON, token, Uri-Path "events", Content-Format 50.
    (
        "device-post",
        h("44 02 12 34 01020304 b6 6576656e7473 11 32 ff 7b2261223a317d"),
        Message(Type.CON, Code.POST, 0x1234, TOKEN4, ((11, b"events"), (12, b"\x32")), b'{"a":1}'),
    ),
    # Content-Format 0 is the empty uint (§3.2 minimal form).
    (
        "uint-zero-is-empty",
        h("40 02 00 05 c0"),
        Message(Type.CON, Code.POST, 5, options=((12, b""),)),
    ),
    # -- repeats (delta 0) keep wire order ---------------------------------------
    (
        "repeated-uri-path",
        h("40 01 00 06 b1 61 01 62 01 63"),
        Message(Type.CON, Code.GET, 6, options=((11, b"a"), (11, b"b"), (11, b"c"))),
    ),
    # -- option delta boundaries: 12 (nibble), 13 (1-byte ext), 268, 269 (2-byte ext) --
    ("delta-12", h("40 01 00 07 c0"), Message(Type.CON, Code.GET, 7, options=((12, b""),))),
    ("delta-13", h("40 01 00 07 d0 00"), Message(Type.CON, Code.GET, 7, options=((13, b""),))),
    ("delta-268", h("40 01 00 07 d0 ff"), Message(Type.CON, Code.GET, 7, options=((268, b""),))),
    ("delta-269", h("40 01 00 07 e0 0000"), Message(Type.CON, Code.GET, 7, options=((269, b""),))),
    (
        "delta-65535",
        h("40 01 00 07 e0 fef2"),
        Message(Type.CON, Code.GET, 7, options=((65535, b""),)),
    ),
    (
        "delta-after-delta",
        h("40 01 00 07 b0 d0 02"),  # 11 then 11+15=26
        Message(Type.CON, Code.GET, 7, options=((11, b""), (26, b""))),
    ),
    # -- option length boundaries: 12, 13, 268, 269 ------------------------------
    (
        "length-12",
        h("40 02 00 08 1c") + b"a" * 12,
        Message(Type.CON, Code.POST, 8, options=((1, b"a" * 12),)),
    ),
    (
        "length-13",
        h("40 02 00 08 1d 00") + b"a" * 13,
        Message(Type.CON, Code.POST, 8, options=((1, b"a" * 13),)),
    ),
    (
        "length-268",
        h("40 02 00 08 1d ff") + b"a" * 268,
        Message(Type.CON, Code.POST, 8, options=((1, b"a" * 268),)),
    ),
    (
        "length-269",
        h("40 02 00 08 1e 0000") + b"a" * 269,
        Message(Type.CON, Code.POST, 8, options=((1, b"a" * 269),)),
    ),
    # -- both extended: option 300 (delta 269+31), 20-byte value ----------------
    (
        "ext-delta-and-length",
        h("40 02 00 09 ed 001f 07") + b"x" * 20,
        Message(Type.CON, Code.POST, 9, options=((300, b"x" * 20),)),
    ),
    (
        "ext13-delta-ext14-length",
        h("40 02 00 09 de 10 0000") + b"y" * 269,
        Message(Type.CON, Code.POST, 9, options=((29, b"y" * 269),)),
    ),
    # -- registered options in one message (No-Response 258 = 60 + 198) -----------
    (
        "several-options",
        h("48 01 00 0a 0102030405060708 b4 74656d70 11 32 21 3c d1 00 02 d0 14 d1 b9 02"),
        Message(
            Type.CON,
            Code.GET,
            10,
            TOKEN8,
            ((11, b"temp"), (12, b"\x32"), (14, b"\x3c"), (27, b"\x02"), (60, b""), (258, b"\x02")),
        ),
    ),
]


@pytest.mark.parametrize(("datagram", "message"), [r[1:] for r in VALID], ids=[r[0] for r in VALID])
def test_decode_vector(datagram: bytes, message: Message) -> None:
    decoded = coap.decode(datagram)
    assert decoded == message
    assert type(decoded.type) is Type


@pytest.mark.parametrize(("datagram", "message"), [r[1:] for r in VALID], ids=[r[0] for r in VALID])
def test_encode_vector(datagram: bytes, message: Message) -> None:
    assert coap.encode(message) == datagram


def test_length_65804_is_the_largest_option_value() -> None:
    # §3.1: the 2-byte extension holds length - 269, so 0xFFFF means 65804.
    value = b"z" * 65804
    datagram = h("40 02 00 0b 1e ffff") + value
    message = Message(Type.CON, Code.POST, 11, options=((1, value),))
    assert coap.encode(message) == datagram
    assert coap.decode(datagram, max_size=len(datagram)) == message
    with pytest.raises(MessageFormatError, match="too long"):
        coap.encode(Message(Type.CON, Code.POST, 11, options=((1, value + b"z"),)))


def test_decoded_codes_are_enum_members_when_registered() -> None:
    assert coap.decode(h("64 41 12 34 01020304")).code is Code.CREATED
    assert str(coap.decode(h("64 41 12 34 01020304")).code) == "2.01"
    unknown = coap.decode(h("50 47 00 01")).code
    assert unknown == 0x47
    assert coap.code_str(unknown) == "2.07"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    datagram = h("44 02 12 34 01020304 b6 6576656e7473 ff 7b7d")
    expected = coap.decode(datagram)
    assert coap.decode(bytearray(datagram)) == expected
    assert coap.decode(memoryview(datagram)) == expected
    assert type(coap.decode(bytearray(datagram)).payload) is bytes


def test_encode_sorts_options_stably() -> None:
    message = Message(
        Type.CON, Code.GET, 1, options=((12, b"\x32"), (11, b"a"), (4, b"e"), (11, b"b"))
    )
    decoded = coap.decode(coap.encode(message))
    assert decoded.options == ((4, b"e"), (11, b"a"), (11, b"b"), (12, b"\x32"))


# (id, datagram, expected type, expected mid, expected token, message regex)
C, N, A, R = Type.CON, Type.NON, Type.ACK, Type.RST
MALFORMED = [
    ("empty-datagram", b"", None, None, None, "shorter"),
    ("three-bytes", h("40 01 00"), None, None, None, "shorter"),
    # §3: unknown versions are "silently ignored": no type, so nobody RSTs them.
    ("version-0", h("00 01 00 01"), None, None, None, "version 0"),
    ("version-2", h("80 01 00 01"), None, None, None, "version 2"),
    ("version-3", h("c0 01 00 01"), None, None, None, "version 3"),
    *[
        (f"tkl-{t}", bytes([0x40 | t, 1, 0, 0x2A]) + b"\0" * 15, C, 42, None, "token length")
        for t in range(9, 16)
    ],
    ("token-truncated", h("44 01 00 2a aabb"), C, 42, None, "token length 4"),
    ("payload-marker-empty-payload", h("40 01 00 2a ff"), C, 42, b"", "empty payload"),
    (
        "payload-marker-empty-after-option",
        h("51 02 00 2a 07 b1 61 ff"),
        N,
        42,
        b"\x07",
        "empty payload",
    ),
    ("delta-15-length-0", h("40 01 00 2a f0"), C, 42, b"", "delta 15"),
    ("delta-15-length-14", h("40 01 00 2a fe 0000"), C, 42, b"", "delta 15"),
    ("length-15", h("40 01 00 2a 0f"), C, 42, b"", "length 15"),
    ("length-15-with-delta", h("40 01 00 2a bf 61"), C, 42, b"", "length 15"),
    ("delta-13-truncated", h("40 01 00 2a d0"), C, 42, b"", "truncated"),
    ("delta-14-truncated-1", h("40 01 00 2a e0"), C, 42, b"", "truncated"),
    ("delta-14-truncated-2", h("40 01 00 2a e0 00"), C, 42, b"", "truncated"),
    ("length-13-truncated", h("40 01 00 2a 0d"), C, 42, b"", "truncated"),
    ("length-14-truncated", h("40 01 00 2a 0e 01"), C, 42, b"", "truncated"),
    ("value-truncated", h("42 01 00 2a 0102 b3 6162"), C, 42, b"\x01\x02", "past the end"),
    ("ext-value-truncated", h("40 01 00 2a 1d 05 61"), C, 42, b"", "past the end"),
    # §4.1: Empty message with a token, options or payload.
    ("empty-with-token", h("41 00 00 2a aa"), C, 42, b"\xaa", "Empty message"),
    ("empty-with-option", h("60 00 00 2a b1 61"), A, 42, b"", "Empty message"),
    ("empty-with-payload", h("70 00 00 2a ff 61"), R, 42, b"", "Empty message"),
    ("empty-with-marker-only", h("40 00 00 2a ff"), C, 42, b"", "Empty message"),
    # §12.1 reserved classes 1, 6, 7 (§4.2: rejected like a format error).
    ("class-1", h("41 20 00 2a 99"), C, 42, b"\x99", "reserved class"),
    ("class-1-detail-31", h("50 3f 00 2a"), N, 42, b"", "reserved class"),
    ("class-6", h("40 c0 00 2a"), C, 42, b"", "reserved class"),
    ("class-7", h("40 e1 00 2a"), C, 42, b"", "reserved class"),
    # 16-bit option number space: a delta of 65804 after option 0 overflows it.
    ("option-number-65804", h("40 01 00 2a e0 ffff"), C, 42, b"", "exceeds 65535"),
    ("option-number-65536", h("40 01 00 2a b0 e0 fef2"), C, 42, b"", "exceeds 65535"),
]


@pytest.mark.parametrize(
    ("datagram", "mtype", "mid", "token", "reason"),
    [r[1:] for r in MALFORMED],
    ids=[r[0] for r in MALFORMED],
)
def test_malformed_vector(
    datagram: bytes, mtype: Type | None, mid: int | None, token: bytes | None, reason: str
) -> None:
    with pytest.raises(MessageFormatError, match=reason) as info:
        coap.decode(datagram)
    error = info.value
    assert isinstance(error, coap.CoapError)
    assert error.code is None
    assert error.type == mtype
    assert error.mid == mid
    assert error.token == token
    if mtype is not None:
        assert type(error.type) is Type


def test_max_options_limit() -> None:
    datagram = h("40 01 00 2a") + b"\x00" * 257  # 257 empty options numbered 0
    with pytest.raises(MessageFormatError, match="more than 256 options") as info:
        coap.decode(datagram)
    assert (info.value.type, info.value.mid) == (Type.CON, 42)
    assert len(coap.decode(datagram, max_options=257).options) == 257
    assert len(coap.decode(datagram[:-1]).options) == coap.DEFAULT_MAX_OPTIONS


def test_max_size_limit() -> None:
    datagram = h("50 02 00 2a ff") + b"p" * 100
    assert coap.decode(datagram, max_size=105).payload == b"p" * 100
    with pytest.raises(MessageFormatError, match="exceeds the 104-byte limit") as info:
        coap.decode(datagram, max_size=104)
    assert (info.value.type, info.value.mid) == (Type.NON, 42)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(MessageFormatError, match="not bytes-like"):
        coap.decode("40010001")  # type: ignore[arg-type]


# (id, message, error regex): what encode refuses to put on the wire.
UNENCODABLE = [
    ("type-4", Message(4, Code.GET, 1), "type 4"),  # type: ignore[arg-type]
    ("code-256", Message(Type.CON, 256, 1), "one byte"),
    ("code-negative", Message(Type.CON, -1, 1), "one byte"),
    ("reserved-class", Message(Type.CON, 0xE0, 1), "reserved class"),
    ("mid-65536", Message(Type.CON, Code.GET, 65536), "message ID"),
    ("mid-negative", Message(Type.CON, Code.GET, -1), "message ID"),
    ("token-9", Message(Type.CON, Code.GET, 1, b"123456789"), "longer than 8"),
    ("empty-with-token", Message(Type.CON, Code.EMPTY, 1, b"t"), "Empty message"),
    ("empty-with-option", Message(Type.ACK, Code.EMPTY, 1, options=((11, b"a"),)), "Empty"),
    ("empty-with-payload", Message(Type.RST, Code.EMPTY, 1, payload=b"p"), "Empty"),
    ("option-65536", Message(Type.CON, Code.GET, 1, options=((65536, b""),)), "0-65535"),
    ("option-negative", Message(Type.CON, Code.GET, 1, options=((-1, b""),)), "0-65535"),
]


@pytest.mark.parametrize(
    ("message", "reason"), [r[1:] for r in UNENCODABLE], ids=[r[0] for r in UNENCODABLE]
)
def test_encode_refuses(message: Message, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        coap.encode(message)
    assert isinstance(info.value, coap.CoapError)


@pytest.mark.parametrize("datagram", [h("60 00 be ef"), h("64 41 12 34 01020304"), VALID[11][1]])
def test_decoded_message_is_a_real_frozen_message(datagram: bytes) -> None:
    # decode builds a mutable draft and switches its class (see coap/_codec.py):
    # what comes out must be indistinguishable from a constructed Message.
    decoded = coap.decode(datagram)
    assert type(decoded) is Message
    rebuilt = Message(
        decoded.type, decoded.code, decoded.mid, decoded.token, decoded.options, decoded.payload
    )
    assert decoded == rebuilt
    assert hash(decoded) == hash(rebuilt)
    with pytest.raises(AttributeError):
        decoded.mid = 1  # type: ignore[misc]
    # A non-field attribute is refused too (Python 3.11's frozen+slots dataclass
    # says so with a TypeError, as it does for a constructed Message).
    with pytest.raises((AttributeError, TypeError)):
        decoded.extra = 1  # type: ignore[attr-defined]


# (id, options) that encode must refuse however they are ordered.
BAD_OPTION_ORDERS = [
    ("too-big-after-unsorted", ((12, b""), (11, b""), (70000, b""))),
    ("negative-in-the-middle", ((11, b""), (-3, b""), (12, b""))),
    ("too-big-first-unsorted", ((70000, b""), (11, b""))),
]


@pytest.mark.parametrize(
    "options", [r[1] for r in BAD_OPTION_ORDERS], ids=[r[0] for r in BAD_OPTION_ORDERS]
)
def test_encode_refuses_out_of_range_numbers_in_any_order(
    options: tuple[tuple[int, bytes], ...],
) -> None:
    with pytest.raises(MessageFormatError, match="0-65535"):
        coap.encode(Message(Type.CON, Code.GET, 1, options=options))


def test_encode_extended_forms_after_sorting() -> None:
    # The out-of-order path must produce exactly what the sorted input gives.
    ordered = ((11, b"x" * 300), (300, b"y" * 13), (2049, b""))
    shuffled = (ordered[2], ordered[0], ordered[1])
    assert coap.encode(Message(Type.CON, Code.POST, 9, options=shuffled)) == coap.encode(
        Message(Type.CON, Code.POST, 9, options=ordered)
    )


def test_max_options_is_enforced_while_reading() -> None:
    # 65,000 one-byte options: refused (at the 257th) rather than built.
    with pytest.raises(MessageFormatError, match="more than 256 options"):
        coap.decode(h("40 01 00 2a") + b"\x00" * 65000)
    # Exactly the limit, followed by a payload (so the count is being watched).
    decoded = coap.decode(h("40 02 00 2a") + b"\x00" * 256 + b"\xff" + b"p" * 10)
    assert len(decoded.options) == 256
    assert decoded.payload == b"p" * 10
