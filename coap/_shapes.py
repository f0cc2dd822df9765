"""Recognising requests of a few fixed shapes from their bytes, without decoding.

A server that receives one kind of request far more often than any other (an IoT
collector: a POST to one path with one of a few Content-Formats) can recognise that
request by the exact bytes of its options instead of running the general decoder.

Why that is exact (RFC 7252 §3, §3.1): after the 4-byte header and the token, the
options run until the payload marker 0xFF or the end of the datagram. If the bytes
between the token and the first 0xFF equal a complete option sequence that contains
no 0xFF byte itself, then the decoder would read exactly those options and then the
marker: an option header byte 0xFF is the marker by definition, and a complete
sequence leaves the decoder at an option-header position. So a datagram whose
option bytes are one of the registered sequences *is* that request, and every
other datagram (malformed ones included) is left to :func:`coap.decode`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from ._codec import DEFAULT_MAX_MESSAGE_SIZE, encode
from ._message import Message, Type
from .options import OptionNumber, encode_uint

__all__ = ["RequestShapes", "shapes_for_paths"]

V = TypeVar("V")

_MARKER = 0xFF
_MISSING = object()
# A tuple, not bytes: indexing a tuple by an int is one specialised opcode.
_STARTS = tuple(4 + (b & 0x0F) if b & 0xE0 == 0x40 and b & 0x0F <= 8 else 0 for b in range(256))


class RequestShapes(Generic[V]):
    """A table of request shapes: (code, option sequence) -> a value of the caller's.

    ``shapes`` maps option tuples (``(number, value)`` pairs in ascending order, as in
    :attr:`Message.options`) to the value :meth:`match` hands back. Every shape is of
    the one request ``code``. Raises ValueError for a sequence whose encoding holds a
    0xFF byte (it could not be told from the payload marker).
    """

    __slots__ = ("_code", "_table")

    def __init__(self, code: int, shapes: Mapping[tuple[tuple[int, bytes], ...], V]) -> None:
        self._code = code
        self._table: dict[bytes, V] = {}
        for options, value in shapes.items():
            wire = encode(Message(Type.CON, code, 0, b"", options, b"x"))
            key = wire[4:-2]  # between the header and the marker
            if _MARKER in key:
                raise ValueError(f"options {options!r} encode with a 0xFF byte")
            self._table[key] = value

    @classmethod
    def empty(cls) -> RequestShapes[V]:
        """A table that matches nothing (every datagram takes the decoder)."""
        return cls(0, {})

    def __len__(self) -> int:
        return len(self._table)

    def match(self, data: bytes) -> tuple[int, int, bytes, V, bytes] | None:
        """A CON or NON request of a registered shape with a non-empty payload ->
        (type, Message ID, token, the shape's value, payload); None for anything else.

        None promises nothing about the datagram: decode it. A match promises that
        :func:`coap.decode` would return the request with exactly the shape's options.
        """
        n = len(data)
        # _STARTS[first byte]: where the options begin, for version 1, type CON or
        # NON and a token of 0-8 bytes; 0 for any other first byte.
        if not 6 <= n <= DEFAULT_MAX_MESSAGE_SIZE or data[1] != self._code:
            return None
        first = data[0]
        start = _STARTS[first]
        if not start:
            return None
        marker = data.find(0xFF, start)
        if marker < 0 or marker == n - 1:  # no marker, or a marker with no payload
            return None
        value = self._table.get(data[start:marker], _MISSING)
        if value is _MISSING:
            return None
        return (
            first >> 4 & 3,
            data[2] << 8 | data[3],
            data[4:start],
            value,  # type: ignore[return-value]
            data[marker + 1 :],
        )


def shapes_for_paths(
    code: int, paths: Iterable[tuple[str, ...]], content_formats: Iterable[int | None]
) -> RequestShapes[int | None]:
    """Shapes for each Uri-Path in ``paths`` with each Content-Format (None: no
    Content-Format option); a match's value is the Content-Format."""
    formats = list(content_formats)
    table: dict[tuple[tuple[int, bytes], ...], int | None] = {}
    for segments in paths:
        path = tuple((int(OptionNumber.URI_PATH), s.encode()) for s in segments)
        for fmt in formats:
            cf = () if fmt is None else ((int(OptionNumber.CONTENT_FORMAT), encode_uint(fmt)),)
            table[path + cf] = fmt
    return RequestShapes(code, table)
