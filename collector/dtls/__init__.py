"""CoAP over DTLS 1.2 with pre-shared keys (RFC 7252 §9.1), server side, sans-I/O.

`DtlsServer` (sessions.py) is fed datagrams and hands back plaintext CoAP messages
and the records to send; it holds the bounded session table and decides what an
unknown peer may cost. The cryptography sits behind `Backend`/`Connection`
(backend.py), implemented today by python-mbedtls (mbedtls_backend.py), so that
another library (OpenSSL 3 through a small binding) can replace it without touching
the session layer or the worker's DTLS shell.
"""

from collector.dtls.backend import (
    CIPHER_SUITES,
    Backend,
    Connection,
    HandshakeFailed,
    SessionClosed,
)
from collector.dtls.sessions import DtlsServer, Session, SessionEvent

__all__ = [
    "CIPHER_SUITES",
    "Backend",
    "Connection",
    "DtlsServer",
    "HandshakeFailed",
    "Session",
    "SessionClosed",
    "SessionEvent",
]
