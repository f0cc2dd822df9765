"""The codec's one error family.

Errors know their effect on the wire (Californium's model): a
:class:`MessageFormatError` carries the header fields recovered before the fault,
so a server can RST a malformed CON (it needs type and Message ID) and silently
drop anything else (RFC 7252 §4.2, §4.3). Request-level errors carry the response
``code`` they turn into.
"""

from __future__ import annotations

from ._message import Type
from .codes import Code

__all__ = [
    "BadOption",
    "BadRequest",
    "CoapError",
    "MessageFormatError",
    "UnsupportedContentFormat",
]


class CoapError(Exception):
    """Base of every error this package raises on purpose.

    ``code`` is the response code the error maps to, or None when it maps to no
    response (a message format error is answered with RST or silence).
    """

    code: int | None = None


class MessageFormatError(CoapError, ValueError):
    """The datagram is not a valid CoAP message (RFC 7252 §3, §4.1, §5.4).

    ``type``, ``mid`` and ``token`` are whatever the header yielded before the
    fault, or None. ``type`` is None when the version is not 1, since §3 says such
    messages "MUST be silently ignored": a server RSTs only when ``type`` is CON
    and ``mid`` is known.
    """

    def __init__(
        self,
        reason: str,
        *,
        type: Type | None = None,
        mid: int | None = None,
        token: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type = type
        self.mid = mid
        self.token = token


class BadRequest(CoapError, ValueError):
    """4.00: the request is well-formed CoAP but its content is wrong."""

    code = Code.BAD_REQUEST


class BadOption(CoapError, ValueError):
    """4.02: an unrecognised (or unusable) critical option, RFC 7252 §5.4.1."""

    code = Code.BAD_OPTION

    def __init__(self, number: int, reason: str | None = None) -> None:
        super().__init__(reason or f"unrecognised critical option {number}")
        self.number = number


class UnsupportedContentFormat(CoapError, ValueError):
    """4.15: the Content-Format of a request is not one the resource accepts."""

    code = Code.UNSUPPORTED_CONTENT_FORMAT

    def __init__(self, content_format: int | None, reason: str | None = None) -> None:
        super().__init__(reason or f"unsupported content format {content_format}")
        self.content_format = content_format
