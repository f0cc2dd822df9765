"""Bytes to :class:`Message` and back (RFC 7252 §3).

Decoding is on the server's hot path, so :func:`decode` is one pass over the
datagram with everything bound to locals: header bytes are classified by table
lookups, the common option (delta and length below 13) costs a shift, a mask and
a slice, no per-option object is built besides the ``(number, value)`` tuple,
reads of extension bytes past the end are caught once as IndexError rather than
tested byte by byte, and the Message is built by switching the class of a
same-layout draft (see :class:`_Draft`). Every rule of §3 is still checked;
every failure is a :class:`MessageFormatError` carrying the header fields
recovered so far.

Behaviour this module decides (RFC text that leaves a choice):

* Reserved code classes 1, 6 and 7 (§12.1) are reported as format errors: §4.2
  and §4.3 tell a recipient to reject such a message exactly as one with a
  format error (RST for CON, ignore otherwise), and the error carries the header
  needed for that. :func:`encode` refuses them for the same reason.
* An ACK carrying a request, a non-empty RST or an Empty NON decode normally:
  §4.2/§4.3 make those the exchange layer's business (silently ignored), not
  format errors.
* An option number above 65535 (possible with 16-bit extended deltas) is a
  format error: the option number space is 16 bits (§12.2).
"""

from __future__ import annotations

from operator import itemgetter
from struct import Struct
from struct import error as StructError

from ._errors import MessageFormatError
from ._message import Message, Type
from .codes import RESERVED_CLASSES, Code

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OPTIONS",
    "decode",
    "encode",
]

#: RFC 7252 §4.6: a message "SHOULD fit within a single IP packet", yet a
#: receiver cannot assume its peer follows that; the hard ceiling is the largest
#: UDP payload over IPv4 (65535 - 8 UDP header - 20 IP header). Anything larger
#: cannot have arrived in one datagram and is refused before parsing.
DEFAULT_MAX_MESSAGE_SIZE = 65507

#: RFC 7252 §3.1 puts no bound on the number of options, so a 64 KiB datagram
#: could carry ~65,000 one-byte empty options and make the decoder build as many
#: tuples (tens of milliseconds of CPU for one datagram). Real requests carry a
#: handful (a long Uri-Query list might reach a few dozen); 256 leaves plenty of
#: room while bounding the work per datagram: decoding stops at the 257th.
DEFAULT_MAX_OPTIONS = 256

#: §3: "Lengths 9-15 are reserved, MUST NOT be sent, and MUST be processed as a
#: message format error."
MAX_TOKEN_LENGTH = 8

#: §3.1: 14 means a 16-bit extension holding the value minus 269, so the largest
#: expressible option length is 65535 + 269.
MAX_OPTION_LENGTH = 65535 + 269

MAX_OPTION_NUMBER = 65535


def _code_member(code: int) -> int:
    try:
        return Code(code)
    except ValueError:
        return code


# Lookup tables indexed by a header byte, so the hot path does one index
# instead of shifts, masks and comparisons. _TYPE_BY_FIRST_BYTE is None where the
# version bits are not 1; _CODE_BY_BYTE is None for reserved classes and a Code
# member (else the plain int) otherwise.
_TYPE_BY_FIRST_BYTE: tuple[Type | None, ...] = tuple(
    Type((b >> 4) & 3) if b >> 6 == 1 else None for b in range(256)
)
_CODE_BY_BYTE: tuple[int | None, ...] = tuple(
    None if c >> 5 in RESERVED_CLASSES else _code_member(c) for c in range(256)
)
_EMPTY = Code.EMPTY
_first = itemgetter(0)
_new = object.__new__


class _Draft:
    """A mutable twin of :class:`Message` with the very same slot layout.

    The decoder fills a draft with plain attribute stores (specialised, cheap
    bytecodes) and then turns it into a Message by assigning ``__class__``, which
    CPython allows between classes with identical slots. That costs half of
    building a frozen dataclass through its slot descriptors, on every datagram.
    """

    # The very tuple of Message: slot order is layout, so it must not be re-sorted.
    __slots__ = Message.__slots__
    type: Type
    code: int
    mid: int
    token: bytes
    options: tuple[tuple[int, bytes], ...]
    payload: bytes


def _check_draft_layout() -> None:
    # Fail at import, not on the first datagram, if CPython ever refuses the switch.
    draft = _new(_Draft)
    try:
        draft.__class__ = Message  # type: ignore[assignment]
    except TypeError as exc:
        raise ImportError(f"coap: cannot build Message from a draft: {exc}") from exc


_check_draft_layout()
# Header plus token in one C call, one packer per token length; "B" and "H"
# refuse a code or MID out of range, which encode turns into a format error.
_HEADER_BY_TKL = tuple(Struct(f"!BBH{tkl}s").pack for tkl in range(MAX_TOKEN_LENGTH + 1))
# Version 1 and the type bits; a KeyError here means an invalid type.
_FIRST_BYTE_BY_TYPE = {t: 0x40 | (t << 4) for t in range(4)}
# One-byte bytes objects for every option header byte (avoids bytes((x,))).
_BYTE = tuple(bytes((b,)) for b in range(256))


def _coerce(data: object) -> bytes:
    try:
        return bytes(memoryview(data))  # type: ignore[arg-type]
    except Exception as exc:  # a non-bytes-like argument is still "not a message"
        raise MessageFormatError(f"not bytes-like: {type(data).__name__}") from exc


def _option_error(reason: str, mtype: Type, mid: int, token: bytes) -> MessageFormatError:
    return MessageFormatError(reason, type=mtype, mid=mid, token=token)


def decode(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_options: int = DEFAULT_MAX_OPTIONS,
) -> Message:
    """Parse one datagram into a :class:`Message`.

    ``data`` is any bytes-like object; ``max_size`` and ``max_options`` are the
    limits documented at :data:`DEFAULT_MAX_MESSAGE_SIZE` and
    :data:`DEFAULT_MAX_OPTIONS`. Raises :class:`MessageFormatError` (and nothing
    else) when the datagram breaks RFC 7252 §3/§4.1 or a limit; its ``type``,
    ``mid`` and ``token`` hold what was recovered.
    """
    if data.__class__ is not bytes:
        data = _coerce(data)
    n = len(data)
    if n < 4:
        # §3: the fixed header is 4 bytes; without the MID nobody can be answered.
        raise MessageFormatError(f"message shorter than the 4-byte header ({n} bytes)")
    b0 = data[0]
    mtype = _TYPE_BY_FIRST_BYTE[b0]
    if mtype is None:
        # §3: "Messages with unknown version numbers MUST be silently ignored."
        # type stays None so that nobody RSTs it.
        raise MessageFormatError(f"unsupported CoAP version {b0 >> 6}")
    mid = (data[2] << 8) | data[3]
    if n > max_size:
        raise MessageFormatError(
            f"message of {n} bytes exceeds the {max_size}-byte limit", type=mtype, mid=mid
        )
    tkl = b0 & 15
    if tkl > MAX_TOKEN_LENGTH:
        raise MessageFormatError(f"reserved token length {tkl}", type=mtype, mid=mid)
    pos = 4 + tkl
    if pos > n:
        raise MessageFormatError(
            f"token length {tkl} but only {n - 4} bytes follow the header", type=mtype, mid=mid
        )
    token = data[4:pos]
    code = _CODE_BY_BYTE[data[1]]
    if code is _EMPTY:
        # §4.1: an Empty message has TKL 0 and no bytes after the Message ID;
        # "If there are any bytes, they MUST be processed as a message format error."
        if n != 4:
            raise _option_error(
                "Empty message (0.00) with bytes after the header", mtype, mid, token
            )
    elif code is None:
        raise _option_error(
            f"code {data[1] >> 5}.{data[1] & 31:02d} has a reserved class", mtype, mid, token
        )

    message = _Draft()
    message.type = mtype
    message.code = code
    message.mid = mid
    message.token = token
    if pos == n:
        message.options = ()
        message.payload = b""
        message.__class__ = Message  # type: ignore[assignment]
        return message  # type: ignore[return-value]

    options: list[tuple[int, bytes]] = []
    append = options.append
    # Every option takes at least one byte, so only a datagram with more bytes
    # left than max_options can exceed the limit: only then is the count checked,
    # and it is checked as options are read, so a hostile datagram of 65,000
    # one-byte options costs max_options iterations, not 65,000.
    guard = n - pos > max_options
    number = 0
    payload = b""
    try:
        while pos < n:
            byte = data[pos]
            pos += 1
            if byte < 0xD0 and byte & 15 < 13:
                # Fast path: delta and length both fit their nibbles.
                number += byte >> 4
                end = pos + (byte & 15)
            elif byte == 0xFF:
                # §3: 0xFF is the payload marker; the payload runs to the end.
                if pos == n:
                    # §3: "The presence of a marker followed by a zero-length
                    # payload MUST be processed as a message format error."
                    raise _option_error(
                        "payload marker followed by an empty payload", mtype, mid, token
                    )
                payload = data[pos:]
                break
            else:
                delta = byte >> 4
                length = byte & 15
                if delta > 12:
                    if delta == 13:
                        delta = data[pos] + 13
                        pos += 1
                    elif delta == 14:
                        delta = ((data[pos] << 8) | data[pos + 1]) + 269
                        pos += 2
                    else:
                        # §3.1: delta nibble 15 is "Reserved for the Payload Marker";
                        # any other byte with it is a format error.
                        raise _option_error("reserved option delta 15", mtype, mid, token)
                if length > 12:
                    if length == 13:
                        length = data[pos] + 13
                        pos += 1
                    elif length == 14:
                        length = ((data[pos] << 8) | data[pos + 1]) + 269
                        pos += 2
                    else:
                        # §3.1: length nibble 15 "MUST be processed as a message format error".
                        raise _option_error("reserved option length 15", mtype, mid, token)
                number += delta
                end = pos + length
            if end > n:
                raise _option_error(
                    f"option {number} value runs past the end of the message", mtype, mid, token
                )
            if guard and len(options) >= max_options:
                raise _option_error(f"more than {max_options} options", mtype, mid, token)
            append((number, data[pos:end]))
            pos = end
    except IndexError:
        # Only the extended delta/length reads can run off the end.
        raise _option_error(
            "option header truncated in its extended delta/length", mtype, mid, token
        ) from None
    # number only grows, so checking the last one checks them all.
    if number > MAX_OPTION_NUMBER:
        raise _option_error(f"option number {number} exceeds 65535", mtype, mid, token)
    message.options = tuple(options)
    message.payload = payload
    message.__class__ = Message  # type: ignore[assignment]
    return message  # type: ignore[return-value]


def _encode_error(message: Message, cause: Exception | None = None) -> MessageFormatError:
    """Say which header field of ``message`` cannot be sent (the slow path of encode)."""
    mtype, code, mid, token = message.type, message.code, message.mid, message.token
    if not isinstance(mtype, int) or not 0 <= mtype <= 3:
        return MessageFormatError(f"message type {mtype} is not 0-3")
    if not isinstance(code, int) or not 0 <= code <= 255:
        return MessageFormatError(f"code {code} is not one byte")
    if _CODE_BY_BYTE[code] is None:
        return MessageFormatError(f"code {code >> 5}.{code & 31:02d} has a reserved class")
    if not isinstance(mid, int) or not 0 <= mid <= 0xFFFF:
        return MessageFormatError(f"message ID {mid} is not 0-65535")
    if len(token) > MAX_TOKEN_LENGTH:
        return MessageFormatError(f"token of {len(token)} bytes is longer than 8")
    if code == 0 and (token or message.options or message.payload):
        return MessageFormatError("an Empty message (0.00) carries no token, options or payload")
    return MessageFormatError(f"cannot encode the header: {cause}")


def encode(message: Message) -> bytes:
    """Serialise ``message`` (RFC 7252 §3).

    Options are sorted stably by number (repeats keep their order) and written
    with the smallest delta/length forms; the payload marker is written only for
    a non-empty payload. Raises ValueError (a :class:`MessageFormatError`) for a
    message that cannot be sent: type outside 0-3, code outside 0-255 or in a
    reserved class, MID outside 0-65535, token over 8 bytes, an Empty message
    with token/options/payload, option numbers outside 0-65535 or values longer
    than 65804 bytes.
    """
    mtype = message.type
    code = message.code
    mid = message.mid
    token = message.token
    options = message.options
    payload = message.payload
    tkl = len(token)
    try:
        header = _HEADER_BY_TKL[tkl](_FIRST_BYTE_BY_TYPE[mtype] | tkl, code, mid, token)
        reserved = _CODE_BY_BYTE[code] is None
    except (IndexError, KeyError, TypeError, StructError) as exc:
        raise _encode_error(message, exc) from None
    if reserved or (not code and (tkl or options or payload)):
        raise _encode_error(message)
    if not options:
        return header + b"\xff" + payload if payload else header
    # Joining a list of parts beats growing a bytearray for messages this small.
    parts = [header]
    add = parts.append
    byte = _BYTE
    previous = 0
    for number, value in options:
        delta = number - previous
        length = len(value)
        if 0 <= delta < 13 and length < 13:
            add(byte[(delta << 4) | length])
            add(value)
            previous = number
            continue
        if delta < 0:
            break  # not in ascending order: sort below
        previous = number
        if delta < 13:
            head = delta << 4
            dext = b""
        elif delta < 269:
            head = 0xD0
            dext = byte[delta - 13]
        else:
            if number > MAX_OPTION_NUMBER:
                raise MessageFormatError("option numbers must be 0-65535")
            head = 0xE0
            dext = (delta - 269).to_bytes(2, "big")
        if length < 13:
            add(byte[head | length])
            add(dext)
        elif length < 269:
            add(byte[head | 13])
            add(dext)
            add(byte[length - 13])
        elif length <= MAX_OPTION_LENGTH:
            add(byte[head | 14])
            add(dext)
            add((length - 269).to_bytes(2, "big"))
        else:
            raise MessageFormatError(f"option {number} value of {length} bytes is too long")
        add(value)
    else:
        if previous > MAX_OPTION_NUMBER:
            raise MessageFormatError("option numbers must be 0-65535")
        if payload:
            add(b"\xff")
            add(payload)
        return b"".join(parts)
    # Options out of order: encode a copy sorted stably by number (repeats keep
    # their relative order, §5.4.5). A negative number sorts first and stays
    # "out of order", so it is refused here rather than recursing forever.
    ordered = tuple(sorted(options, key=_first))
    if ordered[0][0] < 0:
        raise MessageFormatError("option numbers must be 0-65535")
    return encode(Message(mtype, code, mid, token, ordered, payload))
