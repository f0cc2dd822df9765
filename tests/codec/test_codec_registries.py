"""Registries and helpers: codes, options, content formats, transmission, Message accessors,
Block, path helpers and link format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import coap
from coap import (
    OPTIONS,
    Block,
    Code,
    ContentFormat,
    Link,
    Message,
    OptionFormat,
    OptionNumber,
    Type,
    transmission,
)

# (code, dotted, class, is_request, is_response, is_success)
CODES = [
    (Code.EMPTY, "0.00", 0, False, False, False),
    (Code.GET, "0.01", 0, True, False, False),
    (Code.IPATCH, "0.07", 0, True, False, False),
    (Code.CREATED, "2.01", 2, False, True, True),
    (Code.CONTENT, "2.05", 2, False, True, True),
    (Code.CONTINUE, "2.31", 2, False, True, True),
    (Code.BAD_REQUEST, "4.00", 4, False, True, False),
    (Code.BAD_OPTION, "4.02", 4, False, True, False),
    (Code.REQUEST_ENTITY_INCOMPLETE, "4.08", 4, False, True, False),
    (Code.REQUEST_ENTITY_TOO_LARGE, "4.13", 4, False, True, False),
    (Code.UNSUPPORTED_CONTENT_FORMAT, "4.15", 4, False, True, False),
    (Code.INTERNAL_SERVER_ERROR, "5.00", 5, False, True, False),
    (Code.SERVICE_UNAVAILABLE, "5.03", 5, False, True, False),
    (Code.PROXYING_NOT_SUPPORTED, "5.05", 5, False, True, False),
]


@pytest.mark.parametrize(
    ("code", "dotted", "cls", "req", "resp", "ok"), CODES, ids=[c[1] for c in CODES]
)
def test_code_properties(
    code: Code, dotted: str, cls: int, req: bool, resp: bool, ok: bool
) -> None:
    assert str(code) == dotted
    assert code.dotted == dotted
    assert f"{code}" == dotted
    assert f"{code:d}" == str(int(code))
    assert coap.code_str(int(code)) == dotted
    assert (code.code_class, code.is_request, code.is_response, code.is_success) == (
        cls,
        req,
        resp,
        ok,
    )


def test_unknown_codes_print_dotted() -> None:
    assert coap.code_str(0x47) == "2.07"
    assert coap.code_str(255) == "7.31"


# (number, critical, unsafe, no_cache_key) from RFC 7252 Table 4 (C, U, N columns).
OPTION_BITS = [
    (OptionNumber.IF_MATCH, True, False, False),
    (OptionNumber.URI_HOST, True, True, False),
    (OptionNumber.ETAG, False, False, False),
    (OptionNumber.IF_NONE_MATCH, True, False, False),
    (OptionNumber.URI_PORT, True, True, False),
    (OptionNumber.LOCATION_PATH, False, False, False),
    (OptionNumber.URI_PATH, True, True, False),
    (OptionNumber.CONTENT_FORMAT, False, False, False),
    (OptionNumber.MAX_AGE, False, True, False),
    (OptionNumber.URI_QUERY, True, True, False),
    (OptionNumber.ACCEPT, True, False, False),
    (OptionNumber.LOCATION_QUERY, False, False, False),
    (OptionNumber.PROXY_URI, True, True, False),
    (OptionNumber.PROXY_SCHEME, True, True, False),
    (OptionNumber.SIZE1, False, False, True),
    (OptionNumber.SIZE2, False, False, True),
    (OptionNumber.BLOCK1, True, True, False),
    (OptionNumber.BLOCK2, True, True, False),
    (OptionNumber.OBSERVE, False, True, False),
    (OptionNumber.NO_RESPONSE, False, True, False),
]


@pytest.mark.parametrize(
    ("number", "critical", "unsafe", "nocachekey"),
    OPTION_BITS,
    ids=[o[0].name for o in OPTION_BITS],
)
def test_option_properties_from_bits(
    number: OptionNumber, critical: bool, unsafe: bool, nocachekey: bool
) -> None:
    assert number.is_critical is critical is coap.is_critical(int(number))
    assert number.is_unsafe is unsafe is coap.is_unsafe(int(number))
    # RFC 7252 §5.4.6: NoCacheKey is only meaningful for safe-to-forward options.
    assert (number.is_no_cache_key and not number.is_unsafe) is nocachekey


def test_option_registry_matches_table_4() -> None:
    assert set(OPTIONS) == {int(n) for n in OptionNumber}
    assert OptionNumber.URI_PATH.format is OptionFormat.STRING
    assert (OptionNumber.URI_PATH.min_length, OptionNumber.URI_PATH.max_length) == (0, 255)
    assert OptionNumber.URI_PATH.repeatable
    assert OptionNumber.CONTENT_FORMAT.format is OptionFormat.UINT
    assert OptionNumber.CONTENT_FORMAT.max_length == 2
    assert not OptionNumber.CONTENT_FORMAT.repeatable
    assert OptionNumber.IF_NONE_MATCH.format is OptionFormat.EMPTY
    assert (OptionNumber.ETAG.min_length, OptionNumber.ETAG.max_length) == (1, 8)
    assert OptionNumber.PROXY_URI.max_length == 1034
    assert OPTIONS[258].name == "No-Response"


def test_content_formats() -> None:
    assert [
        int(f)
        for f in (
            ContentFormat.TEXT_PLAIN,
            ContentFormat.LINK_FORMAT,
            ContentFormat.JSON,
            ContentFormat.CBOR,
            ContentFormat.SENML_JSON,
            ContentFormat.SENML_CBOR,
        )
    ] == [0, 40, 50, 60, 110, 112]
    assert ContentFormat.SENML_CBOR.media_type == "application/senml+cbor"
    assert all(f.media_type for f in ContentFormat)


def test_transmission_parameters_derived_as_rfc_7252_4_8_2() -> None:
    assert transmission.MAX_TRANSMIT_SPAN == 45
    assert transmission.MAX_TRANSMIT_WAIT == 93
    assert transmission.PROCESSING_DELAY == 2
    assert transmission.MAX_RTT == 202
    assert transmission.EXCHANGE_LIFETIME == 247
    assert transmission.NON_LIFETIME == 145
    custom = transmission.TransmissionParameters(ack_timeout=1.0, max_retransmit=2)
    assert custom.max_transmit_span == 1.0 * 3 * 1.5
    assert custom.exchange_lifetime == custom.max_transmit_span + 200 + 1.0


DEVICE_POST = Message(
    Type.CON,
    Code.POST,
    7,
    b"tok",
    ((11, b"events"), (11, b"x"), (12, b"\x00\x32"), (15, b"a=1"), (15, b"b=2")),
    b"{}",
)


def test_message_accessors() -> None:
    m = DEVICE_POST
    assert m.option(OptionNumber.URI_PATH) == b"events"
    assert m.option(OptionNumber.ACCEPT) is None
    assert m.option_values(OptionNumber.URI_QUERY) == [b"a=1", b"b=2"]
    assert m.option_values(OptionNumber.ACCEPT) == []
    assert m.uint_option(OptionNumber.CONTENT_FORMAT) == 50  # leading zero tolerated
    assert m.uint_option(OptionNumber.MAX_AGE) is None
    assert m.content_format == ContentFormat.JSON
    assert m.uri_path == ("events", "x")
    assert m.path == "/events/x"
    assert not m.is_empty
    assert Message(Type.CON, Code.GET, 1).path == "/"
    assert Message(Type.CON, 0, 1).is_empty
    assert Message(Type.CON, Code.GET, 1, options=((11, b"\xff"),)).path == "/\ufffd"


def test_message_is_immutable_and_hashable() -> None:
    with pytest.raises(AttributeError):
        DEVICE_POST.mid = 8  # type: ignore[misc]
    assert hash(DEVICE_POST) == hash(coap.decode(coap.encode(DEVICE_POST)))


# (id, options, first unrecognised critical option or None)
CRITICAL = [
    ("none", ((11, b"events"), (12, b"\x32")), None),
    ("elective-unknown-ignored", ((11, b"e"), (2048, b"x")), None),
    ("critical-unknown", ((11, b"e"), (2049, b"x")), 2049),
    ("option-0-is-even-so-elective", ((0, b""),), None),
    ("first-of-two", ((9, b""), (2049, b"x")), 9),
    # §5.4.3: a critical option with a length outside its bounds is unrecognised.
    ("uri-host-empty", ((3, b""),), 3),
    ("uri-path-256", ((11, b"p" * 256),), 11),
    ("accept-3-bytes", ((17, b"\x00\x00\x01"),), 17),
    ("block1-4-bytes", ((27, b"\x00\x00\x00\x08"),), 27),
    ("if-none-match-value", ((5, b"x"),), 5),
    # Elective with a bad length: ignored, not 4.02.
    ("content-format-3-bytes-elective", ((12, b"\x00\x00\x32"),), None),
    # §5.4.5: a repeat of a non-repeatable critical option counts as unrecognised.
    ("uri-host-twice", ((3, b"a"), (3, b"b")), 3),
    ("uri-path-repeats-fine", ((11, b"a"), (11, b"b")), None),
]


@pytest.mark.parametrize(
    ("options", "expected"), [c[1:] for c in CRITICAL], ids=[c[0] for c in CRITICAL]
)
def test_unrecognized_critical(
    options: tuple[tuple[int, bytes], ...], expected: int | None
) -> None:
    assert Message(Type.CON, Code.POST, 1, options=options).unrecognized_critical() == expected


def test_unrecognized_critical_with_own_known_set() -> None:
    m = Message(Type.CON, Code.POST, 1, options=((11, b"e"), (27, b"\x08"), (2049, b"")))
    assert m.unrecognized_critical(known={11, 2049}) == 27
    assert m.unrecognized_critical(known={11, 27, 2049}) is None


def test_bad_option_error() -> None:
    error = coap.BadOption(2049)
    assert isinstance(error, coap.CoapError)
    assert error.code == Code.BAD_OPTION
    assert error.number == 2049
    assert coap.UnsupportedContentFormat(41).code == Code.UNSUPPORTED_CONTENT_FORMAT


# (path, Uri-Path options) per RFC 7252 §6.4 step 8.
PATHS = [
    ("/", ()),
    ("", ()),
    ("/events", ((11, b"events"),)),
    ("events", ((11, b"events"),)),
    ("/.well-known/core", ((11, b".well-known"), (11, b"core"))),
    ("/a/", ((11, b"a"), (11, b""))),
    ("/caf\u00e9", ((11, "caf\u00e9".encode()),)),
]


@pytest.mark.parametrize(("path", "options"), PATHS)
def test_path_to_options(path: str, options: tuple[tuple[int, bytes], ...]) -> None:
    assert coap.path_to_options(path) == options
    if path.startswith("/"):
        assert Message(Type.CON, Code.GET, 1, options=options).path == path or path == "/a/"


def test_path_segment_too_long() -> None:
    with pytest.raises(ValueError, match="255"):
        coap.path_to_options("/" + "s" * 256)


# (value bytes, Block) hand-computed from RFC 7959 §2.2.
BLOCKS = [
    (b"", Block(0, False, 0)),
    (b"\x08", Block(0, True, 0)),
    (b"\x0e", Block(0, True, 6)),
    (b"\x16", Block(1, False, 6)),
    (b"\x10\x0a", Block(256, True, 2)),
    (b"\xff\xff\xf6", Block((1 << 20) - 1, False, 6)),
]


@pytest.mark.parametrize(("value", "block"), BLOCKS, ids=[b.hex() or "empty" for b, _ in BLOCKS])
def test_block_vectors(value: bytes, block: Block) -> None:
    assert Block.decode(value) == block
    assert block.encode() == value


def test_block_size_and_errors() -> None:
    assert Block(3, True, 2).size == 64
    assert Block(3, True, 2).offset == 192
    assert Block.for_size(1, False, 1024) == Block(1, False, 6)
    with pytest.raises(coap.BadRequest, match="SZX 7") as info:
        Block.decode(b"\x0f")
    assert info.value.code == Code.BAD_REQUEST
    with pytest.raises(coap.BadRequest, match="at most 3"):
        Block.decode(b"\x00\x00\x00\x08")
    with pytest.raises(ValueError, match="SZX"):
        Block(0, False, 7).encode()
    with pytest.raises(ValueError, match="block number"):
        Block(1 << 20, False, 0).encode()
    with pytest.raises(ValueError, match="power of two"):
        Block.for_size(0, False, 100)


@given(st.integers(0, (1 << 20) - 1), st.booleans(), st.integers(0, 6))
def test_block_round_trip(num: int, more: bool, szx: int) -> None:
    block = Block(num, more, szx)
    assert Block.decode(block.encode()) == block
    assert len(block.encode()) <= 3


def test_link_format() -> None:
    links = [
        Link("/events", (("rt", "iot.events"), ("ct", (50, 60, 110, 112)), ("if", "core.p"))),
        Link("/health", (("rt", "iot.health"), ("ct", 50), ("obs", True))),
        Link("/q", (("title", 'say "hi" \\ bye'), ("ct", [40]))),
    ]
    assert coap.link_format(links) == (
        '</events>;rt="iot.events";ct="50 60 110 112";if="core.p",'
        '</health>;rt="iot.health";ct=50;obs,'
        '</q>;title="say \\"hi\\" \\\\ bye";ct=40'
    )
    assert coap.link_format([]) == ""
    with pytest.raises(ValueError, match="target"):
        Link("/a>b").serialize()
    with pytest.raises(ValueError, match="attribute name"):
        Link("/a", (("bad name", 1),)).serialize()
