"""Just enough DTLS record parsing to decide what an unknown peer may cost.

The session layer looks at a datagram from a peer with no session before any library
does: only a ClientHello in an epoch-0 handshake record can start a session (RFC
6347 §4.2.1); anything else is dropped without an answer and without allocating.
"""

from __future__ import annotations

# RFC 6347 §4.1: type(1) version(2) epoch(2) sequence_number(6) length(2).
RECORD_HEADER = 13
# RFC 6347 §4.2.2: msg_type(1) length(3) message_seq(2) fragment_offset(3)
# fragment_length(3).
HANDSHAKE_HEADER = 12
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CLIENT_HELLO = 1
DTLS_MAJOR = 0xFE  # DTLS 1.0 is {254, 255}, 1.2 is {254, 253}
# client_version(2) random(32) before the session id's length byte.
_HELLO_FIXED = 34


def client_hello_cookie(datagram: bytes) -> bytes | None:
    """The cookie of the ClientHello that opens `datagram`, b"" when it has none.

    None when the datagram does not start with an unfragmented epoch-0 ClientHello
    record (what the session layer drops from an unknown peer).
    """
    if len(datagram) < RECORD_HEADER + HANDSHAKE_HEADER + _HELLO_FIXED + 2:
        return None
    if datagram[0] != CONTENT_HANDSHAKE or datagram[1] != DTLS_MAJOR:
        return None
    if datagram[3] or datagram[4]:  # epoch 0 only
        return None
    length = int.from_bytes(datagram[11:13], "big")
    record_end = RECORD_HEADER + length
    if record_end > len(datagram):
        return None
    body = RECORD_HEADER
    if datagram[body] != CLIENT_HELLO:
        return None
    if datagram[body + 6 : body + 9] != b"\0\0\0":  # fragment_offset: the first fragment
        return None
    pos = body + HANDSHAKE_HEADER + _HELLO_FIXED
    pos += 1 + datagram[pos]  # session_id
    if pos >= record_end:
        return None
    cookie_len = datagram[pos]
    if pos + 1 + cookie_len > record_end:
        return None
    return bytes(datagram[pos + 1 : pos + 1 + cookie_len])


def is_application_data(datagram: bytes) -> bool:
    """Whether the datagram's first record carries application data."""
    return len(datagram) >= RECORD_HEADER and datagram[0] == CONTENT_APPLICATION_DATA
