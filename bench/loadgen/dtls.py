"""The generator's coaps side: DTLS 1.2 PSK sessions on the device sockets.

Strategy: the client session is the project's own, :class:`collector.dtls.client.
DtlsClientSession` (python-mbedtls buffers, the one iot-client and the tests use), so
the generator adds no third DTLS implementation. What lives here is what a load
generator needs around it:

* :func:`handshake_all` opens one session per device socket, all at once, before the
  run's clock starts (the handshakes are outside the measured window); lost flights
  are sent again after :data:`FLIGHT_TIMEOUT`, doubling.
* :class:`Link` is one device's session as the send and receive loops see it: the
  staged CoAP datagram goes in, one record comes out (RFC 7252 §9.1: one CoAP message
  per record); records come in, plaintexts go out.
* :func:`handshake_share` is the handshake-rate measurement: ``concurrent`` fresh
  sessions at a time, each on a new socket (a new peer for the server), closed with
  close_notify once established so the server frees its slot, for ``duration``
  seconds. It returns the same kind of raw result as the load loops, so the process
  plumbing of :func:`loadgen.generator.run_load` runs it unchanged.
* :func:`probe` is the readiness check of a DTLS-only server: a completed handshake.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.dtls.backend import HandshakeFailed, SessionClosed
from collector.dtls.client import DtlsClientSession
from collector.dtls.mbedtls_backend import client_context

FLIGHT_TIMEOUT = 0.5  # s before a handshake flight is sent again (RFC 6347 §4.2.4.1: 1 s
# for the Internet; loopback answers within a millisecond, so half that is plenty)
HANDSHAKE_TIMEOUT = 20.0  # s for all the sessions of one process


class DtlsSetupError(RuntimeError):
    """The sessions could not be opened: the message says why (key, server, time)."""


@dataclass(frozen=True)
class Psk:
    """A PSK identity and its key. ``repr`` never shows the key."""

    identity: str
    key: bytes

    def __repr__(self) -> str:
        return f"Psk(identity={self.identity!r})"


class Link:
    """One device's DTLS session: CoAP datagrams in and out of records."""

    __slots__ = ("errors", "session")

    def __init__(self, session: DtlsClientSession) -> None:
        self.session = session
        self.errors = 0  # records that could not be read (a closed or failed session)

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """One record holding one CoAP message."""
        return self.session.encrypt(bytes(plaintext))

    def reader(
        self, raw: Callable[[], list[tuple[bytes, Any]]]
    ) -> Callable[[], list[tuple[bytes, Any]]]:
        """``raw`` (a datagram reader) turned into a reader of plaintexts."""
        receive = self.session.receive

        def read() -> list[tuple[bytes, Any]]:
            out: list[tuple[bytes, Any]] = []
            for data, peer in raw():
                try:
                    for plain in receive(data):
                        out.append((plain, peer))
                except (SessionClosed, HandshakeFailed):
                    self.errors += 1
            return out

        return read


def handshake_all(
    socks: Sequence[socket.socket], psk: Psk, timeout: float = HANDSHAKE_TIMEOUT
) -> list[Link]:
    """A session on each connected, non-blocking socket; returns their links in order.

    Raises DtlsSetupError when a handshake fails (a wrong key gets an alert or silence)
    or not every session is open within ``timeout`` seconds.
    """
    context = client_context(psk.identity, psk.key)
    sessions = [DtlsClientSession(psk.identity, psk.key, context) for _ in socks]
    ep = select.epoll()
    flights: list[bytes] = []
    due: list[float] = []
    waits: list[float] = []
    try:
        now = time.monotonic()
        for i, (s, session) in enumerate(zip(socks, sessions, strict=True)):
            ep.register(s.fileno(), select.EPOLLIN)
            flights.append(session.start())
            waits.append(FLIGHT_TIMEOUT)
            due.append(now + FLIGHT_TIMEOUT)
            _send(s, flights[i])
        index = {s.fileno(): i for i, s in enumerate(socks)}
        open_ = 0
        deadline = now + timeout
        while open_ < len(socks):
            now = time.monotonic()
            if now > deadline:
                raise DtlsSetupError(
                    f"DTLS: {len(socks) - open_} of {len(socks)} handshakes did not complete"
                    f" in {timeout:g} s (server down, or a wrong identity or key)"
                )
            for fd, _ev in ep.poll(0.05):
                i = index[fd]
                session = sessions[i]
                while not session.connected:
                    try:
                        data = socks[i].recv(4096)
                    except OSError:
                        break
                    try:
                        session.receive(data)
                    except (HandshakeFailed, SessionClosed) as exc:
                        raise DtlsSetupError(f"DTLS handshake failed: {exc}") from None
                    flight = session.pending()
                    if flight:
                        flights[i] = flight
                        _send(socks[i], flight)
                        due[i] = time.monotonic() + waits[i]
                if session.connected and flights[i]:
                    flights[i] = b""
                    ep.unregister(fd)
                    open_ += 1
            for i, session in enumerate(sessions):
                if flights[i] and not session.connected and now >= due[i]:
                    _send(socks[i], flights[i])  # our flight or the answer was lost
                    waits[i] *= 2
                    due[i] = now + waits[i]
    finally:
        ep.close()
    return [Link(s) for s in sessions]


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.send(data)


def probe(host: str, port: int, psk: Psk, deadline: float) -> bool:
    """Whether a DTLS session to ``host:port`` opens before ``deadline`` (monotonic)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            s.setblocking(False)
            try:
                links = handshake_all([s], psk, max(0.1, min(1.0, deadline - time.monotonic())))
            except DtlsSetupError:
                continue
            _send(s, links[0].session.close())
            return True
    return False


def handshake_share(
    spec: Any, index: int, start: float, publish: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Open sessions as fast as the server completes them, ``spec.window`` (at least 1)
    at a time, from ``start`` for ``spec.duration`` s; returns the raw result
    (``handshakes`` completed, ``failed``, CPU and wall seconds). ``publish`` is given
    the count so far, now and then (the progress line)."""
    psk = Psk(spec.psk_identity, spec.psk_key)
    context = client_context(psk.identity, psk.key)
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    ep = select.epoll()
    live: dict[int, tuple[socket.socket, DtlsClientSession, float, bytes]] = {}
    done = failed = 0

    def begin() -> None:
        s = socket.socket(family, socket.SOCK_DGRAM)
        if spec.bind:
            s.bind((spec.bind, 0))
        s.connect((spec.host, spec.port))
        s.setblocking(False)
        session = DtlsClientSession(psk.identity, psk.key, context)
        flight = session.start()
        _send(s, flight)
        ep.register(s.fileno(), select.EPOLLIN)
        live[s.fileno()] = (s, session, time.monotonic(), flight)

    def end(fd: int) -> None:
        s = live.pop(fd)[0]
        ep.unregister(fd)
        s.close()

    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    end_at = wall0 + spec.duration
    try:
        for _ in range(max(1, spec.window)):
            begin()
        while (now := time.monotonic()) < end_at:
            for fd, _ev in ep.poll(min(0.05, end_at - now)):
                s, session, t0, _flight = live[fd]
                try:
                    session.receive(s.recv(4096))
                except OSError:
                    continue
                except (HandshakeFailed, SessionClosed):
                    failed += 1
                    end(fd)
                    begin()
                    continue
                flight = session.pending()
                if flight:
                    _send(s, flight)
                    live[fd] = (s, session, t0, flight)
                if session.connected:
                    done += 1
                    _send(s, session.close())
                    end(fd)
                    begin()
            now = time.monotonic()
            for fd, (_s, _session, t0, _flight) in list(live.items()):
                if now - t0 > 2.0:  # a flight was lost: start over on a new socket
                    failed += 1
                    end(fd)
                    begin()
            if publish is not None:
                publish(done)
    finally:
        for fd in list(live):
            end(fd)
        ep.close()
    wall = time.monotonic() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "mode": "handshakes",
        "index": index,
        "handshakes": done,
        "failed": failed,
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "wall_s": wall,
    }


__all__ = ["DtlsSetupError", "Link", "Psk", "handshake_all", "handshake_share", "probe"]
