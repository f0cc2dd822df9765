"""CoAP over DTLS 1.2 with pre-shared keys (RFC 7252 §9.1), server side, sans-I/O.

`DtlsServer` (sessions.py) is fed datagrams and hands back plaintext CoAP messages
and the records to send; it holds the bounded session table and decides what an
unknown peer may cost. The cryptography sits behind `Backend`/`Connection`
(backend.py), implemented twice: OpenSSL 3 through a small ctypes binding
(openssl_backend.py, the default) and python-mbedtls (mbedtls_backend.py); either
replaces the other without touching the session layer or the worker's DTLS shell
(`--dtls-backend`). Why OpenSSL is the default: README "Securing devices".
"""

from __future__ import annotations

from collector.dtls.backend import (
    CIPHER_SUITES,
    Backend,
    Connection,
    HandshakeFailed,
    SessionClosed,
)
from collector.dtls.sessions import DtlsServer, Session, SessionEvent
from collector.psk import PskStore

BACKENDS = ("openssl", "mbedtls")


def make_backend(name: str, store: PskStore) -> Backend:
    """The backend called `name` ("openssl" or "mbedtls") over `store`.

    Raises OSError when its library cannot be loaded.
    """
    if name == "openssl":
        from collector.dtls.openssl_backend import OpensslBackend

        return OpensslBackend(store)
    if name == "mbedtls":
        from collector.dtls.mbedtls_backend import MbedtlsBackend

        return MbedtlsBackend(store)
    raise ValueError(f"unknown DTLS backend {name!r}")


__all__ = [
    "BACKENDS",
    "CIPHER_SUITES",
    "Backend",
    "Connection",
    "DtlsServer",
    "HandshakeFailed",
    "Session",
    "SessionClosed",
    "SessionEvent",
    "make_backend",
]
