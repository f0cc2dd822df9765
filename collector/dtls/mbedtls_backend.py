"""The python-mbedtls backend (Mbed TLS 2.28 inside the wheel), through its buffers.

python-mbedtls' socket-level `accept()` connects (rebinds) the listening socket for
every client, which cannot work in a SO_REUSEPORT group; its sans-I/O buffers
(`ServerContext.wrap_buffers()`) can. Their quirks, handled here:

- `do_handshake()` advances the state machine by one state per call and returns
  normally after each; the handshake is over when `cipher()` is no longer None.
- `WantWriteError` means "flush what is queued and call again"; `WantReadError`
  means the flight is complete and the peer must speak.
- A ClientHello without a valid cookie ends in `HelloVerifyRequest`; that buffer is
  spent (mbedtls wants a session reset), so it is dropped and a fresh buffer takes
  the next ClientHello. Dropping it is also what keeps the cookie exchange
  stateless: nothing of the peer survives the call.
- Mbed TLS does not report which PSK identity a finished session used; the key
  store records the identity each lookup asked for (collector.psk.PskStore.asked),
  and a worker steps one handshake at a time.

The cookie secret lives in the ServerContext (Mbed TLS' `ssl_cookie`: HMAC-SHA224 of
the client's transport id, keyed per process, valid 60 s); the transport id is the
peer's address and port, so a cookie obtained at one address does not open a
session from another.
"""

from __future__ import annotations

from mbedtls import exceptions as mbedtls_exceptions
from mbedtls import tls

from collector.dtls import backend
from collector.dtls.backend import HandshakeFailed, SessionClosed
from collector.psk import PskStore

_SUITES = tuple(name.replace("_", "-") for name in backend.CIPHER_SUITES)

# Mbed TLS error codes (ssl.h) that decide a handshake outcome label.
_ERR_INVALID_MAC = 0x7180  # Finished MAC wrong: the peer has another key
_ERR_UNKNOWN_IDENTITY = 0x6C80  # MBEDTLS_ERR_SSL_UNKNOWN_IDENTITY
_ERR_PEER_CLOSE_NOTIFY = 0x7880
# One read returns one record's plaintext; CoAP over DTLS puts one message in one
# record, and a record is at most 2^14 bytes (RFC 6347 §4.1).
_MAX_PLAINTEXT = 1 << 14
# How many states one flight can advance; a runaway loop ends as a protocol error.
_MAX_STEPS = 64


def _drain(buf: tls.TLSWrappedBuffer) -> bytes:
    data = buf.peek_outgoing(1 << 16)
    if data:
        buf.consume_outgoing(len(data))
    return bytes(data or b"")


def _transport_id(peer: tuple[object, ...]) -> bytes:
    return f"{peer[0]}|{peer[1]}".encode()


class MbedtlsConnection:
    """A python-mbedtls buffer pair as a `Connection`."""

    __slots__ = ("_buf", "_store", "identity")

    def __init__(self, buf: tls.TLSWrappedBuffer, store: PskStore) -> None:
        self._buf = buf
        self._store = store
        self.identity: str | None = None

    def _step(self) -> bool:
        buf = self._buf
        self._store.asked = None
        try:
            for _ in range(_MAX_STEPS):
                try:
                    buf.do_handshake()
                except tls.WantWriteError:
                    pass
                except tls.WantReadError:
                    return False
                if buf.cipher() is not None:
                    return True
        except tls.HelloVerifyRequest:
            raise HandshakeFailed(backend.COOKIE_MISMATCH) from None
        except mbedtls_exceptions.TLSError as exc:
            raise HandshakeFailed(self._reason(getattr(exc, "err", None))) from None
        finally:
            if self._store.asked is not None:
                self.identity = self._store.asked
        raise HandshakeFailed(backend.PROTOCOL_ERROR, "handshake did not settle")

    def _reason(self, err: int | None) -> str:
        if self.identity is not None and self._store.entry(self.identity) is None:
            return backend.UNKNOWN_IDENTITY
        if err == _ERR_UNKNOWN_IDENTITY:
            return backend.UNKNOWN_IDENTITY
        if err == _ERR_INVALID_MAC:
            return backend.BAD_KEY
        return backend.PROTOCOL_ERROR

    def handshake(self, data: bytes) -> bool:
        try:
            self._buf.receive_from_network(data)
        except (mbedtls_exceptions.TLSError, ValueError, OverflowError) as exc:
            raise HandshakeFailed(backend.PROTOCOL_ERROR, type(exc).__name__) from None
        return self._step()

    def decrypt(self, data: bytes) -> list[bytes]:
        buf = self._buf
        try:
            buf.receive_from_network(data)
        except (mbedtls_exceptions.TLSError, ValueError, OverflowError) as exc:
            raise SessionClosed(type(exc).__name__) from None
        out: list[bytes] = []
        while True:
            try:
                chunk = buf.read(_MAX_PLAINTEXT)
            except tls.WantReadError:
                return out
            except tls.WantWriteError:
                continue  # a retransmitted Finished flight was re-sent: in outgoing()
            except mbedtls_exceptions.TLSError as exc:
                raise SessionClosed(
                    "close_notify"
                    if getattr(exc, "err", None) == _ERR_PEER_CLOSE_NOTIFY
                    else "alert"
                ) from None
            except ValueError as exc:  # buffer in a state that cannot read
                raise SessionClosed(str(exc)) from None
            if not chunk:  # nothing (more) to read; a close_notify raises instead
                return out
            out.append(chunk)

    def encrypt(self, plaintext: bytes) -> bytes:
        self._buf.write(plaintext)
        return _drain(self._buf)

    def close(self) -> bytes:
        try:
            self._buf.shutdown()
        except (mbedtls_exceptions.TLSError, ValueError):
            pass
        return _drain(self._buf)

    def outgoing(self) -> bytes:
        return _drain(self._buf)

    def cipher(self) -> str | None:
        name = self._buf.cipher()
        return None if name is None else str(name).replace("-", "_")


class MbedtlsBackend:
    """Server-side PSK contexts over one reloadable `PskStore`."""

    def __init__(
        self,
        store: PskStore,
        *,
        handshake_timeout_min: float = 1.0,
        handshake_timeout_max: float = 16.0,
    ) -> None:
        self.store = store
        config = tls.DTLSConfiguration(
            ciphers=_SUITES,
            pre_shared_key_store=store,
            validate_certificates=False,
            lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
            highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            anti_replay=True,  # RFC 6347 §4.1.2.6
            handshake_timeout_min=handshake_timeout_min,
            handshake_timeout_max=handshake_timeout_max,
        )
        self._context = tls.ServerContext(config)

    def accept(self, client_hello: bytes, peer: tuple[object, ...]) -> MbedtlsConnection | bytes:
        buf = self._context.wrap_buffers()
        buf.setcookieparam(_transport_id(peer))
        conn = MbedtlsConnection(buf, self.store)
        try:
            conn.handshake(client_hello)
        except HandshakeFailed as exc:
            if exc.reason == backend.COOKIE_MISMATCH:
                return _drain(buf)  # the HelloVerifyRequest; the buffer is dropped
            raise
        return conn


def client_context(identity: str, key: bytes) -> tls.ClientContext:
    """A DTLS 1.2 PSK client context offering the collector's suites (tests, bench)."""
    return tls.ClientContext(
        tls.DTLSConfiguration(
            ciphers=_SUITES,
            pre_shared_key=(identity, key),
            validate_certificates=False,
            lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
            highest_supported_version=tls.DTLSVersion.DTLSv1_2,
        )
    )
