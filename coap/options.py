"""CoAP option numbers and their registry (RFC 7252 §5.4, §5.10, §12.2).

An option's properties come from the bits of its number (§5.4.6): odd numbers are
critical, bit 1 marks unsafe-to-forward, and ``number & 0x1E == 0x1C`` marks
NoCacheKey. The registry (:data:`OPTIONS`) records what this codec *recognises*:
value format, length bounds and repeatability. Anything else is kept as raw
bytes; :meth:`coap.Message.unrecognized_critical` tells the caller whether that
matters (§5.4.1: an unrecognised critical option in a request means 4.02).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = [
    "OPTIONS",
    "OptionFormat",
    "OptionNumber",
    "OptionSpec",
    "decode_uint",
    "encode_uint",
    "is_critical",
    "is_no_cache_key",
    "is_unsafe",
]


def is_critical(number: int) -> bool:
    """§5.4.6: an odd option number is critical."""
    return bool(number & 1)


def is_unsafe(number: int) -> bool:
    """§5.4.6: bit 1 set means unsafe to forward."""
    return bool(number & 2)


def is_no_cache_key(number: int) -> bool:
    """§5.4.6: NoCacheKey when bits 1-4 read 1110 (only meaningful for safe options)."""
    return number & 0x1E == 0x1C


def encode_uint(value: int) -> bytes:
    """§3.2 uint: minimal big-endian, so 0 is the empty string. Raises ValueError if negative."""
    if value < 0:
        raise ValueError(f"uint option value must be >= 0, got {value}")
    return value.to_bytes((value.bit_length() + 7) >> 3, "big")


def decode_uint(value: bytes) -> int:
    """§3.2 uint: big-endian; leading zero bytes are tolerated ("MAY" be sent)."""
    return int.from_bytes(value, "big")


class OptionFormat(Enum):
    """§3.2 option value formats."""

    EMPTY = "empty"
    OPAQUE = "opaque"
    UINT = "uint"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """What the registry says about one option (RFC 7252 Table 4 and later RFCs)."""

    number: int
    name: str
    format: OptionFormat
    min_length: int
    max_length: int
    repeatable: bool


class OptionNumber(IntEnum):
    """Registered option numbers, named as in the IANA "CoAP Option Numbers" registry."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6  # RFC 7641
    URI_PORT = 7
    LOCATION_PATH = 8
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    ACCEPT = 17
    LOCATION_QUERY = 20
    BLOCK2 = 23  # RFC 7959
    BLOCK1 = 27  # RFC 7959
    SIZE2 = 28  # RFC 7959
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    NO_RESPONSE = 258  # RFC 7967
    REQUEST_TAG = 292  # RFC 9175

    @property
    def is_critical(self) -> bool:
        return is_critical(self.value)

    @property
    def is_unsafe(self) -> bool:
        return is_unsafe(self.value)

    @property
    def is_no_cache_key(self) -> bool:
        return is_no_cache_key(self.value)

    @property
    def spec(self) -> OptionSpec:
        return OPTIONS[self.value]

    @property
    def format(self) -> OptionFormat:
        return OPTIONS[self.value].format

    @property
    def min_length(self) -> int:
        return OPTIONS[self.value].min_length

    @property
    def max_length(self) -> int:
        return OPTIONS[self.value].max_length

    @property
    def repeatable(self) -> bool:
        return OPTIONS[self.value].repeatable


_E, _O, _U, _S = OptionFormat.EMPTY, OptionFormat.OPAQUE, OptionFormat.UINT, OptionFormat.STRING

#: number -> spec. RFC 7252 Table 4 (§5.10), RFC 7641 §2 (Observe), RFC 7959 §2.1
#: and §4 (Block1/Block2/Size2), RFC 7967 §2 (No-Response), RFC 9175 §3.2
#: (Request-Tag: elective, safe to forward, repeatable, opaque 0-8 bytes).
OPTIONS: dict[int, OptionSpec] = {
    s.number: s
    for s in (
        OptionSpec(1, "If-Match", _O, 0, 8, True),
        OptionSpec(3, "Uri-Host", _S, 1, 255, False),
        OptionSpec(4, "ETag", _O, 1, 8, True),
        OptionSpec(5, "If-None-Match", _E, 0, 0, False),
        OptionSpec(6, "Observe", _U, 0, 3, False),
        OptionSpec(7, "Uri-Port", _U, 0, 2, False),
        OptionSpec(8, "Location-Path", _S, 0, 255, True),
        OptionSpec(11, "Uri-Path", _S, 0, 255, True),
        OptionSpec(12, "Content-Format", _U, 0, 2, False),
        OptionSpec(14, "Max-Age", _U, 0, 4, False),
        OptionSpec(15, "Uri-Query", _S, 0, 255, True),
        OptionSpec(17, "Accept", _U, 0, 2, False),
        OptionSpec(20, "Location-Query", _S, 0, 255, True),
        OptionSpec(23, "Block2", _U, 0, 3, False),
        OptionSpec(27, "Block1", _U, 0, 3, False),
        OptionSpec(28, "Size2", _U, 0, 4, False),
        OptionSpec(35, "Proxy-Uri", _S, 1, 1034, False),
        OptionSpec(39, "Proxy-Scheme", _S, 1, 255, False),
        OptionSpec(60, "Size1", _U, 0, 4, False),
        OptionSpec(258, "No-Response", _U, 0, 1, False),
        OptionSpec(292, "Request-Tag", _O, 0, 8, True),
    )
}
