"""CoAP Content-Formats (RFC 7252 §12.3; IANA "CoAP Content-Formats" registry).

Numbers that are not members stay usable as plain ints.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ContentFormat"]


class ContentFormat(IntEnum):
    """Registered content formats, named after their media type."""

    TEXT_PLAIN = 0  # text/plain; charset=utf-8
    LINK_FORMAT = 40  # application/link-format (RFC 6690)
    XML = 41
    OCTET_STREAM = 42
    EXI = 47
    JSON = 50
    JSON_PATCH_JSON = 51  # RFC 8132
    MERGE_PATCH_JSON = 52  # RFC 8132
    CBOR = 60
    CWT = 61
    SENML_JSON = 110  # RFC 8428
    SENSML_JSON = 111
    SENML_CBOR = 112
    SENSML_CBOR = 113
    SENML_EXI = 114
    SENSML_EXI = 115
    SENML_XML = 310
    SENSML_XML = 311

    @property
    def media_type(self) -> str:
        """The registered media type (with parameters for text/plain)."""
        return _MEDIA_TYPES[self.value]


_MEDIA_TYPES: dict[int, str] = {
    0: "text/plain; charset=utf-8",
    40: "application/link-format",
    41: "application/xml",
    42: "application/octet-stream",
    47: "application/exi",
    50: "application/json",
    51: "application/json-patch+json",
    52: "application/merge-patch+json",
    60: "application/cbor",
    61: "application/cwt",
    110: "application/senml+json",
    111: "application/sensml+json",
    112: "application/senml+cbor",
    113: "application/sensml+cbor",
    114: "application/senml-exi",
    115: "application/sensml-exi",
    310: "application/senml+xml",
    311: "application/sensml+xml",
}
