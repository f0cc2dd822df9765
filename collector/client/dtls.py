"""coaps for iot-client: a ClientEndpoint whose datagrams travel in a DTLS session.

The CoAP message layer (endpoint.py) is unchanged: it is given a transport whose
`sendto()` encrypts one CoAP message into one DTLS record (RFC 7252 §9.1) and is fed
the plaintexts of the records that arrive. The handshake (cookie exchange included,
PSK: `--psk-identity`, `--psk-key`/`--psk-key-hex`) completes before the endpoint is
handed out; lost handshake flights are re-sent with a doubling timeout.

A server that lost the session (a collector worker restarted, a NAT rebinding moved
us to an unknown port) drops our records without a word, so the only sign is
silence: when nothing has come back for `REHANDSHAKE_AFTER` seconds since a CoAP
message went out, the next one opens a new session on the same socket instead, and
the endpoint's own retransmissions carry the request over it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

from coap.transmission import TransmissionParameters
from collector.dtls.backend import HandshakeFailed, SessionClosed
from collector.dtls.client import DtlsClientSession

from .endpoint import ClientEndpoint

DEFAULT_COAPS_PORT = 5684  # RFC 7252 §12.7
HANDSHAKE_TIMEOUT = 15.0  # seconds for a whole handshake, retransmissions included
FLIGHT_TIMEOUT = 1.0  # RFC 6347 §4.2.4.1: initial retransmission timer, doubled
REHANDSHAKE_AFTER = 5.0  # silence (while sending) after which the session is presumed lost


class DtlsError(OSError):
    """The DTLS session could not be established (handshake failed or timed out)."""


class _Transport:
    """What the CoAP endpoint sees as its transport: plaintext in, records out."""

    def __init__(self, link: _DtlsLink) -> None:
        self._link = link

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._link.send_plain(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        udp = self._link.udp
        return default if udp is None else udp.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._link.udp is None or self._link.udp.is_closing()

    def close(self) -> None:
        self._link.close()

    def abort(self) -> None:
        self._link.close()


class _DtlsLink(asyncio.DatagramProtocol):
    """The UDP protocol under the endpoint: runs the session and re-handshakes."""

    def __init__(self, identity: str, key: bytes, endpoint: ClientEndpoint) -> None:
        self.identity = identity
        self.key = key
        self.endpoint = endpoint
        self.udp: asyncio.DatagramTransport | None = None
        self.session = DtlsClientSession(identity, key)
        self._connected: asyncio.Event | None = None
        self._flight = b""
        self._unanswered_since: float | None = None  # first send since we last heard
        self._rehandshake: asyncio.Task[None] | None = None
        self.handshakes = 0
        self.error: str | None = None

    # -- asyncio.DatagramProtocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.udp = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.udp = None
        self.endpoint.connection_lost(exc)

    def error_received(self, exc: Exception) -> None:
        self.endpoint.error_received(exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._unanswered_since = None
        session = self.session
        was_connected = session.connected
        try:
            plaintexts = session.receive(data)
        except HandshakeFailed as exc:
            self.error = f"DTLS handshake failed: {exc}"
            if self._connected is not None:
                self._connected.set()  # ends the wait: no need to time out
            return
        except SessionClosed:
            self._start_rehandshake()  # the server closed (idle, revoked, restarted)
            return
        if not was_connected:
            flight = session.pending()
            if flight:
                self._flight = flight
                self._send(flight)
            if session.connected and self._connected is not None:
                self._connected.set()
        for plain in plaintexts:
            self.endpoint.datagram_received(plain, addr)

    # -- sessions ----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.udp is not None and not self.udp.is_closing():
            self.udp.sendto(data)

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Open a new session; raises DtlsError when it cannot be opened in time."""
        loop = asyncio.get_running_loop()
        self.error = None
        self._connected = asyncio.Event()
        self._flight = self.session.start()
        self._send(self._flight)
        deadline = loop.time() + timeout
        wait = FLIGHT_TIMEOUT
        while not self.session.connected:
            left = deadline - loop.time()
            if left <= 0 or self.session.closed:
                break
            try:
                await asyncio.wait_for(self._connected.wait(), min(wait, left))
                if self.error is not None:
                    break
            except TimeoutError:
                self._send(self._flight)  # our flight or its answer was lost
                wait *= 2
        if not self.session.connected:
            raise DtlsError(self.error or f"DTLS handshake timed out after {timeout:g} s")
        self.handshakes += 1
        self._unanswered_since = None

    def send_plain(self, data: bytes) -> None:
        if not self.session.connected:
            return  # re-handshaking: the endpoint's retransmission will carry it
        now = time.monotonic()
        if self._unanswered_since is None:
            self._unanswered_since = now
        elif now - self._unanswered_since > REHANDSHAKE_AFTER:
            self._start_rehandshake()
            return
        self._send(self.session.encrypt(data))

    def _start_rehandshake(self) -> None:
        if self._rehandshake is not None and not self._rehandshake.done():
            return
        if self.udp is None:
            return
        self.session = DtlsClientSession(self.identity, self.key)
        self._rehandshake = asyncio.get_running_loop().create_task(self._rehandshake_quietly())

    async def _rehandshake_quietly(self) -> None:
        try:
            await self.handshake()
        except DtlsError:
            self._unanswered_since = None  # try again after the next silence

    def close(self) -> None:
        if self._rehandshake is not None:
            self._rehandshake.cancel()
        if self.udp is not None:
            if self.session.connected:
                farewell = self.session.close()
                if farewell:
                    self._send(farewell)
            self.udp.close()


async def connect(
    host: str,
    port: int,
    identity: str,
    key: bytes,
    *,
    params: TransmissionParameters | None = None,
    rng: random.Random | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> ClientEndpoint:
    """A CoAP endpoint over a new DTLS session to ``host:port`` (own UDP socket).

    Raises DtlsError when the handshake fails or times out (a wrong key looks like a
    timeout: the server answers a failed handshake with silence or an alert), OSError
    for a name that does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise socket.gaierror(f"no address for {host}")
    family, _, _, _, address = infos[0]
    endpoint = ClientEndpoint(params, rng=rng)
    udp, link = await loop.create_datagram_endpoint(
        lambda: _DtlsLink(identity, key, endpoint),
        remote_addr=(str(address[0]), int(address[1])),
        family=family,
    )
    try:
        await link.handshake(timeout)
    except BaseException:
        udp.close()
        raise
    endpoint.connection_made(_Transport(link))  # type: ignore[arg-type]
    return endpoint
