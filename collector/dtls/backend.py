"""The interface between the DTLS session layer and a TLS library.

A backend answers one question statelessly — what to do with a ClientHello from a
peer that has no session — and makes `Connection`s, one per authenticated peer.
Everything is bytes in, bytes out: a backend never touches a socket or a clock the
caller did not pass in.
"""

from __future__ import annotations

from typing import Protocol

# RFC 7252 §9.1.3.1: TLS_PSK_WITH_AES_128_CCM_8 is mandatory to implement; the CCM
# suite with the full 16-byte tag is offered too (RFC 6655). IANA names.
CIPHER_SUITES = ("TLS_PSK_WITH_AES_128_CCM_8", "TLS_PSK_WITH_AES_128_CCM")

# Handshake outcomes, the label values of iot_collector_dtls_handshakes_total.
OK = "ok"
BAD_KEY = "bad_key"
UNKNOWN_IDENTITY = "unknown_identity"
TIMEOUT = "timeout"
COOKIE_MISMATCH = "cookie_mismatch"
PROTOCOL_ERROR = "protocol_error"
TABLE_FULL = "table_full"


class HandshakeFailed(Exception):
    """A handshake cannot complete; `.reason` is one of the outcome labels above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class SessionClosed(Exception):
    """The peer closed the session (close_notify) or it failed (fatal alert, bad state)."""


class Connection(Protocol):
    """One peer's DTLS state: handshake first, then records <-> plaintext."""

    identity: str | None  # the PSK identity, once the handshake has asked for it

    def handshake(self, data: bytes) -> bool:
        """Feed handshake records; True once the handshake is complete.

        Raises HandshakeFailed. Records to send are in `outgoing()`.
        """
        ...

    def decrypt(self, data: bytes) -> list[bytes]:
        """Feed application records; returns their plaintexts (replays dropped).

        Raises SessionClosed on close_notify or a fatal alert.
        """
        ...

    def encrypt(self, plaintext: bytes) -> bytes:
        """One application record holding `plaintext`, ready to send as a datagram."""
        ...

    def close(self) -> bytes:
        """A close_notify alert to send; the connection is unusable afterwards."""
        ...

    def outgoing(self) -> bytes:
        """Records the last call produced (a handshake flight, an alert), consumed."""
        ...

    def cipher(self) -> str | None:
        """The negotiated suite's IANA name, None before the handshake completes."""
        ...


class Backend(Protocol):
    """Makes connections; answers cookie-less ClientHellos without keeping state."""

    def accept(self, client_hello: bytes, peer: tuple[object, ...]) -> Connection | bytes:
        """Handle a ClientHello datagram from a peer with no session.

        Returns the HelloVerifyRequest to send (bytes) when the ClientHello carries no
        valid cookie for `peer` — nothing is kept — or a new Connection, already fed
        with the ClientHello, when the cookie proves the peer receives at `peer`
        (RFC 6347 §4.2.1). Raises HandshakeFailed for a ClientHello it refuses.
        """
        ...
