"""CoAP message codes (RFC 7252 §3, §5.2, §12.1; IANA "CoAP Codes" registry).

A code is one byte, ``c.dd``: the top three bits are the class, the low five the
detail. Names follow the IANA registry. Codes that are not members of
:class:`Code` stay usable as plain ints; :func:`code_str` prints any of them.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "RESERVED_CLASSES",
    "Code",
    "code_class",
    "code_str",
    "is_request",
    "is_response",
    "is_success",
]

#: RFC 7252 §12.1: classes 1, 6 and 7 are reserved. §4.2/§4.3: a message that
#: "uses a code with a reserved class (1, 6, or 7)" is rejected like one with a
#: message format error, so the decoder reports it as one.
RESERVED_CLASSES = frozenset({1, 6, 7})

# Format specs that ask for a number rather than the dotted text.
_NUMERIC_SPECS = frozenset("bcdoxXneEfFgG%")


def code_class(code: int) -> int:
    """The class (0-7) of a code byte."""
    return code >> 5


def code_str(code: int) -> str:
    """The dotted ``c.dd`` form of any code byte (``65`` -> ``"2.01"``)."""
    return f"{code >> 5}.{code & 0x1F:02d}"


def is_request(code: int) -> bool:
    """Class 0 with a non-zero detail: a method (RFC 7252 §12.1.1)."""
    return 1 <= code <= 31


def is_response(code: int) -> bool:
    """Classes 2, 4 and 5 (RFC 7252 §12.1.2)."""
    return 64 <= code <= 191


def is_success(code: int) -> bool:
    """Class 2."""
    return code >> 5 == 2


class Code(IntEnum):
    """Registered codes; ``str(Code.CREATED) == "2.01"``."""

    EMPTY = 0
    # Methods (RFC 7252 §12.1.1, RFC 8132 for FETCH/PATCH/iPATCH).
    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5
    PATCH = 6
    IPATCH = 7
    # 2.xx Success.
    CREATED = 65
    DELETED = 66
    VALID = 67
    CHANGED = 68
    CONTENT = 69
    CONTINUE = 95  # 2.31, RFC 7959
    # 4.xx Client error.
    BAD_REQUEST = 128
    UNAUTHORIZED = 129
    BAD_OPTION = 130
    FORBIDDEN = 131
    NOT_FOUND = 132
    METHOD_NOT_ALLOWED = 133
    NOT_ACCEPTABLE = 134
    REQUEST_ENTITY_INCOMPLETE = 136  # 4.08, RFC 7959
    CONFLICT = 137  # 4.09, RFC 8132
    PRECONDITION_FAILED = 140
    REQUEST_ENTITY_TOO_LARGE = 141
    UNSUPPORTED_CONTENT_FORMAT = 143
    UNPROCESSABLE_ENTITY = 150  # 4.22, RFC 8132
    TOO_MANY_REQUESTS = 157  # 4.29, RFC 8516
    # 5.xx Server error.
    INTERNAL_SERVER_ERROR = 160
    NOT_IMPLEMENTED = 161
    BAD_GATEWAY = 162
    SERVICE_UNAVAILABLE = 163
    GATEWAY_TIMEOUT = 164
    PROXYING_NOT_SUPPORTED = 165
    HOP_LIMIT_REACHED = 168  # 5.08, RFC 8768

    @property
    def dotted(self) -> str:
        """``"2.01"`` for CREATED."""
        return code_str(self.value)

    @property
    def code_class(self) -> int:
        return self.value >> 5

    @property
    def detail(self) -> int:
        return self.value & 0x1F

    @property
    def is_request(self) -> bool:
        return is_request(self.value)

    @property
    def is_response(self) -> bool:
        return is_response(self.value)

    @property
    def is_success(self) -> bool:
        return is_success(self.value)

    def __str__(self) -> str:
        return code_str(self.value)

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in _NUMERIC_SPECS:
            return int.__format__(self.value, spec)
        return format(code_str(self.value), spec)
