"""The immutable CoAP message value and its typed accessors.

A :class:`Message` is what travels in one datagram and nothing more: no peer
address, no direction, no timing (the caller keeps a (datagram, peer) pair).
Options are an ordered tuple of ``(number, raw value)`` in ascending number
order, repeats in wire order; accessors interpret values on demand so that
decoding never pays for options nobody reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from .options import OPTIONS, decode_uint

__all__ = ["Message", "Type", "path_to_options"]

_URI_PATH = 11
_CONTENT_FORMAT = 12


class Type(IntEnum):
    """Message types (RFC 7252 §3, §4)."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """One CoAP message (RFC 7252 §3).

    ``code`` is a :class:`coap.Code` member when registered, else a plain int.
    Construction does not validate; :func:`coap.encode` does.
    """

    type: Type
    code: int
    mid: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""

    def __init__(
        self,
        type: Type,
        code: int,
        mid: int,
        token: bytes = b"",
        options: tuple[tuple[int, bytes], ...] = (),
        payload: bytes = b"",
    ) -> None:
        # The generated frozen __init__ goes through object.__setattr__ by name
        # for each field; calling the slot descriptors directly halves the cost
        # of building a message, which the decoder does for every datagram.
        _set_type(self, type)
        _set_code(self, code)
        _set_mid(self, mid)
        _set_token(self, token)
        _set_options(self, options)
        _set_payload(self, payload)

    @property
    def is_empty(self) -> bool:
        """Code 0.00 (RFC 7252 §4.1): a ping, an empty ACK or a RST."""
        return self.code == 0

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number``, or None if absent."""
        for n, value in self.options:
            if n == number:
                return value
        return None

    def option_values(self, number: int) -> list[bytes]:
        """Every value of option ``number``, in message order."""
        return [value for n, value in self.options if n == number]

    def uint_option(self, number: int) -> int | None:
        """The first value of option ``number`` read as a §3.2 uint, or None."""
        for n, value in self.options:
            if n == number:
                return decode_uint(value)
        return None

    @property
    def content_format(self) -> int | None:
        """The Content-Format option (12) as an int, or None when absent."""
        return self.uint_option(_CONTENT_FORMAT)

    @property
    def uri_path(self) -> tuple[str, ...]:
        """The Uri-Path segments (option 11) as text.

        Invalid UTF-8 is replaced (U+FFFD) rather than raised: such a path matches
        no resource, so the answer is 4.04 instead of a crash.
        """
        return tuple(
            value.decode("utf-8", "replace") for n, value in self.options if n == _URI_PATH
        )

    @property
    def path(self) -> str:
        """The Uri-Path as an absolute path: ``"/events"``, ``"/"`` when there is none."""
        return "/" + "/".join(self.uri_path)

    def unrecognized_critical(self, known: Iterable[int] | None = None) -> int | None:
        """The number of the first critical option the receiver must treat as unrecognised.

        That is a critical (odd) option which is not in ``known`` (default: the
        registry :data:`coap.options.OPTIONS`), or whose value length is outside its
        registered bounds (RFC 7252 §5.4.3: such a value "MUST be treated like an
        unrecognized option"), or a second occurrence of a non-repeatable option
        (§5.4.5: supernumerary occurrences are treated the same way).
        Returns None when there is none (a critical number is odd, never 0).
        """
        known_set = None if known is None else frozenset(known)
        previous = -1
        for number, value in self.options:
            repeat = number == previous
            previous = number
            if not number & 1:
                continue
            if known_set is not None and number not in known_set:
                return number
            spec = OPTIONS.get(number)
            if spec is None:
                if known_set is None:
                    return number
                continue  # the caller recognises it; we cannot check its bounds
            if repeat and not spec.repeatable:
                return number
            if not spec.min_length <= len(value) <= spec.max_length:
                return number
        return None


# Slot descriptors of the frozen Message: writing through them is how the
# constructor (and the decoder's fast path) fill a new instance.
_set_type = Message.__dict__["type"].__set__
_set_code = Message.__dict__["code"].__set__
_set_mid = Message.__dict__["mid"].__set__
_set_token = Message.__dict__["token"].__set__
_set_options = Message.__dict__["options"].__set__
_set_payload = Message.__dict__["payload"].__set__


def path_to_options(path: str) -> tuple[tuple[int, bytes], ...]:
    """Uri-Path options for an absolute path (RFC 7252 §6.4 step 8).

    ``"/"`` and ``""`` give no option; otherwise the single leading slash is
    dropped and each ``/``-separated segment (even an empty one) becomes one
    Uri-Path option. Percent-decoding is not done. Raises ValueError for a
    segment longer than 255 bytes (Table 4 bound).
    """
    if path in ("", "/"):
        return ()
    if path.startswith("/"):
        path = path[1:]
    options = []
    for segment in path.split("/"):
        value = segment.encode("utf-8")
        if len(value) > 255:
            raise ValueError(f"Uri-Path segment longer than 255 bytes: {segment[:20]!r}...")
        options.append((_URI_PATH, value))
    return tuple(options)
