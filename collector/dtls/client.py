"""The client side of a DTLS 1.2 PSK session, sans-I/O (python-mbedtls buffers).

Used by iot-client, the tests and the DTLS benchmark: `start()` gives the first
ClientHello; `receive()` takes a datagram from the server and returns application
plaintexts (empty during the handshake); `pending()` hands the records to send
(handshake flights, answered HelloVerifyRequests); `encrypt()` makes one record.
The HelloVerifyRequest round trip is handled inside Mbed TLS' client state machine.
"""

from __future__ import annotations

from mbedtls import exceptions as mbedtls_exceptions
from mbedtls import tls

from collector.dtls.backend import HandshakeFailed, SessionClosed
from collector.dtls.mbedtls_backend import client_context

_MAX_PLAINTEXT = 1 << 14
_MAX_STEPS = 64


class DtlsClientSession:
    """One PSK session to one server."""

    def __init__(self, identity: str, key: bytes, context: tls.ClientContext | None = None):
        self._buf = (context or client_context(identity, key)).wrap_buffers(None)
        self.connected = False
        self.closed = False

    def _flush(self) -> bytes:
        data = self._buf.peek_outgoing(1 << 16)
        if data:
            self._buf.consume_outgoing(len(data))
        return bytes(data or b"")

    def _step(self) -> None:
        try:
            for _ in range(_MAX_STEPS):
                try:
                    self._buf.do_handshake()
                except tls.WantWriteError:
                    pass
                except tls.WantReadError:
                    return
                if self._buf.cipher() is not None:
                    self.connected = True
                    return
        except mbedtls_exceptions.TLSError as exc:
            self.closed = True
            raise HandshakeFailed("failed", exc.msg or type(exc).__name__) from None

    def start(self) -> bytes:
        """The first flight (ClientHello) to send."""
        self._step()
        return self._flush()

    def retransmit(self) -> bytes:
        """Step the handshake again after a timeout: Mbed TLS re-sends its last flight
        once its retransmission timer has expired (b"" before that)."""
        if self.connected or self.closed:
            return b""
        self._step()
        return self._flush()

    def receive(self, data: bytes) -> list[bytes]:
        """Feed a datagram; returns application plaintexts. Raises HandshakeFailed
        during the handshake, SessionClosed once the server closed or failed."""
        if self.closed:
            raise SessionClosed("closed")
        try:
            self._buf.receive_from_network(data)
        except (mbedtls_exceptions.TLSError, ValueError) as exc:
            raise SessionClosed(type(exc).__name__) from None
        if not self.connected:
            self._step()
            if not self.connected:
                return []
        out: list[bytes] = []
        while True:
            try:
                chunk = self._buf.read(_MAX_PLAINTEXT)
            except tls.WantReadError:
                return out
            except tls.WantWriteError:
                continue
            except (mbedtls_exceptions.TLSError, ValueError) as exc:
                self.closed = True
                raise SessionClosed(str(exc) or type(exc).__name__) from None
            if not chunk:  # nothing (more) to read; a close_notify raises instead
                return out
            out.append(chunk)

    def pending(self) -> bytes:
        """Records waiting to be sent (the next handshake flight), consumed."""
        return self._flush()

    def encrypt(self, plaintext: bytes) -> bytes:
        """One application record holding `plaintext`."""
        self._buf.write(plaintext)
        return self._flush()

    def close(self) -> bytes:
        """A close_notify to send."""
        if self.closed:
            return b""
        self.closed = True
        try:
            self._buf.shutdown()
        except (mbedtls_exceptions.TLSError, ValueError):
            return b""
        return self._flush()
