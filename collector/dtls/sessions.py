"""The DTLS session table: datagrams in, plaintexts and records out (sans-I/O).

Strategy. A peer (address, port) with no session may cost one library call and
nothing kept: only an epoch-0 ClientHello is looked at, and unless its cookie proves
that the peer receives at its address (RFC 6347 §4.2.1) the answer is a
HelloVerifyRequest made and forgotten within the call. An answer to a peer without a
session is never larger than the datagram that drew it (RFC 7252 §11.3), so the port
cannot amplify a spoofed flood. Only a ClientHello with a valid cookie takes a slot
in the table.

The table is bounded (--dtls-max-sessions) and ordered by last use. When it is full,
expired entries go first (handshakes older than the handshake timeout, sessions idle
past --dtls-idle-timeout), then the least recently used session if it has been quiet
for `STALE_AFTER` seconds; otherwise the newcomer is refused (no answer, outcome
"table_full") so that a crowd cannot push out devices that are talking.

Sessions are keyed by the peer's address and port. Without a Connection ID (RFC
9146, not offered by the backend today), a NAT rebinding gives the device a new
source port: its records then arrive from an unknown peer and are dropped silently,
the device's CoAP retransmissions time out, and it must handshake again (its old
session idles out of the table). The key is one function (`_key`) so that a CID
backend can key by connection id instead.

A close_notify or fatal alert from the peer, a replaced session (a new ClientHello
with a valid cookie from the same address: the device restarted, RFC 6347 §4.2.8),
eviction and identity revocation all free the entry. Lifecycle facts go to `events`
for the shell to log and count; keys never pass through this module.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from collector.dtls import backend, records
from collector.dtls.backend import Backend, Connection, HandshakeFailed, SessionClosed

Peer = tuple[object, ...]

HANDSHAKING = "handshaking"
OPEN = "open"
# A full table evicts its least recently used session only if that one has been
# quiet this long; a device talking more often than this keeps its place.
STALE_AFTER = 30.0
# A handshake must finish within this (Mbed TLS retransmits its flights up to
# handshake_timeout_max; a peer that stops half-way holds a slot until then).
HANDSHAKE_TIMEOUT = 20.0


@dataclass(slots=True, eq=False)
class Session:
    """One peer's session: its connection, identity, and when it was last heard."""

    peer: Peer
    conn: Connection
    created: float
    last_seen: float
    state: str = HANDSHAKING
    identity: str | None = None
    principal: Any = None  # what the shell derives from the identity (an Identity)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A lifecycle fact: a handshake outcome, or a session closed (with the reason)."""

    kind: str  # "handshake" or "closed"
    peer: Peer
    identity: str | None
    outcome: str  # handshake: ok/bad_key/...; closed: close_notify/idle/evicted/...
    cipher: str | None = None


@dataclass(slots=True)
class DtlsStats:
    """Counts the shell publishes; plain ints, cheap to bump."""

    handshakes: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # datagrams from unknown peers that were not a ClientHello
    hello_verify: int = 0


class DtlsServer:
    """The server side of DTLS for one socket, without I/O.

    `datagram()` returns the plaintexts of an open session's records; records to
    send accumulate in `outbox` as (bytes, peer); `send()` encrypts an answer.
    """

    def __init__(
        self,
        backend_: Backend,
        *,
        max_sessions: int,
        idle_timeout: float,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.backend = backend_
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.stale_after = stale_after
        self.sessions: OrderedDict[Peer, Session] = OrderedDict()
        self.outbox: list[tuple[bytes, Peer]] = []
        self.events: list[SessionEvent] = []
        self.stats = DtlsStats()

    @staticmethod
    def _key(peer: Peer) -> Peer:
        return peer

    def datagram(self, data: bytes, peer: Peer, now: float) -> tuple[Session, list[bytes]] | None:
        """Feed one datagram from `peer`. Returns (session, plaintexts) for an open
        session's application data, None otherwise. Never raises for bad input.
        """
        key = self._key(peer)
        session = self.sessions.get(key)
        if session is None:
            self._unknown(data, peer, now)
            return None
        if (
            data[:1] == b"\x16"  # a handshake record: only then can it be a ClientHello
            and session.state == OPEN
            and records.client_hello_cookie(data) is not None
        ):
            # RFC 6347 §4.2.8: a ClientHello on an open session's address is a new
            # connection if its cookie is good; until then the old session stands.
            self._unknown(data, peer, now, replacing=session)
            return None
        session.last_seen = now
        self.sessions.move_to_end(key)  # O(1): the table stays ordered by last use
        if session.state == HANDSHAKING:
            self._handshake(session, data)
            return None
        try:
            plaintexts = session.conn.decrypt(data)
        except SessionClosed as exc:
            self._drop(session, str(exc) or "alert", send_close=False)
            return None
        out = session.conn.outgoing()  # a re-sent Finished flight, if any
        if out:
            self.outbox.append((out, peer))
        return session, plaintexts

    def _unknown(
        self, data: bytes, peer: Peer, now: float, replacing: Session | None = None
    ) -> None:
        cookie = records.client_hello_cookie(data)
        if cookie is None:
            self.stats.dropped += 1
            return
        # A full table still answers cookie-less hellos (stateless, costs nothing);
        # only the ClientHello that would take a slot is refused.
        if replacing is None and cookie and not self._room(now):
            self._count(backend.TABLE_FULL)
            self.events.append(SessionEvent("handshake", peer, None, backend.TABLE_FULL))
            return
        try:
            result = self.backend.accept(data, peer)
        except HandshakeFailed as exc:
            self._count(exc.reason)
            return
        except Exception:  # a library error on hostile input must never reach the loop
            self._count(backend.PROTOCOL_ERROR)
            return
        if isinstance(result, bytes):
            if cookie:
                self._count(backend.COOKIE_MISMATCH)
            self.stats.hello_verify += 1
            if result and len(result) <= len(data):  # never amplify (RFC 7252 §11.3)
                self.outbox.append((result, peer))
            return
        if replacing is not None:
            self._drop(replacing, "replaced", send_close=False)
            if not self._room(now):
                self._count(backend.TABLE_FULL)
                return
        session = Session(peer, result, now, now)
        self.sessions[self._key(peer)] = session
        out = result.outgoing()
        if out:
            self.outbox.append((out, peer))

    def _handshake(self, session: Session, data: bytes) -> None:
        conn = session.conn
        try:
            done = conn.handshake(data)
        except HandshakeFailed as exc:
            out = conn.outgoing()  # a fatal alert tells the peer why, if any
            if out:
                self.outbox.append((out, session.peer))
            self._drop(session, exc.reason, send_close=False)
            self._count(exc.reason)
            self.events.append(SessionEvent("handshake", session.peer, conn.identity, exc.reason))
            return
        except Exception:
            self._drop(session, backend.PROTOCOL_ERROR, send_close=False)
            self._count(backend.PROTOCOL_ERROR)
            return
        out = conn.outgoing()
        if out:
            self.outbox.append((out, session.peer))
        if done:
            session.state = OPEN
            session.identity = conn.identity
            self._count(backend.OK)
            self.events.append(
                SessionEvent("handshake", session.peer, conn.identity, backend.OK, conn.cipher())
            )

    def send(self, session: Session, plaintext: bytes) -> None:
        """Encrypt `plaintext` as one record to the session's peer (into `outbox`)."""
        if session.state != OPEN or self.sessions.get(self._key(session.peer)) is not session:
            return  # closed meanwhile: the answer has nowhere to go
        self.outbox.append((session.conn.encrypt(plaintext), session.peer))

    def send_all(self, answers: list[tuple[bytes, Peer]]) -> None:
        """`send()` each (plaintext, peer) to the open session of its peer, if any (the
        shell's outbox, in one call: a burst's answers are many)."""
        sessions, key, outbox = self.sessions, self._key, self.outbox
        for plaintext, peer in answers:
            session = sessions.get(key(peer))
            if session is not None and session.state == OPEN:  # else closed meanwhile
                outbox.append((session.conn.encrypt(plaintext), session.peer))

    def session_for(self, peer: Peer) -> Session | None:
        """The open session of `peer`, if any."""
        session = self.sessions.get(self._key(peer))
        return session if session is not None and session.state == OPEN else None

    def tick(self, now: float) -> None:
        """Evict handshakes past their timeout and sessions idle past --dtls-idle-timeout."""
        expired = []
        for session in self.sessions.values():  # a full walk: once a second, O(table)
            if session.state == HANDSHAKING:
                if now - session.created >= self.handshake_timeout:
                    expired.append((session, backend.TIMEOUT))
            elif now - session.last_seen >= self.idle_timeout:
                expired.append((session, "idle"))
        for session, reason in expired:
            if session.state == HANDSHAKING:
                self._count(backend.TIMEOUT)
                self.events.append(
                    SessionEvent("handshake", session.peer, session.conn.identity, reason)
                )
                self._drop(session, reason, send_close=False)
            else:
                self._drop(session, reason, send_close=True)

    def close_identities(self, identities: set[str]) -> int:
        """Close (close_notify) every session of these identities; returns how many."""
        doomed = [
            s for s in self.sessions.values() if (s.identity or s.conn.identity) in identities
        ]
        for session in doomed:
            self._drop(session, "revoked", send_close=session.state == OPEN)
        return len(doomed)

    def close_all(self, reason: str = "shutdown") -> None:
        """Close every session (close_notify to the open ones)."""
        for session in list(self.sessions.values()):
            self._drop(session, reason, send_close=session.state == OPEN)

    def _room(self, now: float) -> bool:
        if len(self.sessions) < self.max_sessions:
            return True
        self.tick(now)
        if len(self.sessions) < self.max_sessions:
            return True
        oldest = next(iter(self.sessions.values()))
        if now - oldest.last_seen >= self.stale_after:
            self._drop(oldest, "evicted", send_close=oldest.state == OPEN)
            return True
        return False

    def _drop(self, session: Session, reason: str, *, send_close: bool) -> None:
        key = self._key(session.peer)
        if self.sessions.get(key) is session:
            del self.sessions[key]
        if send_close:
            try:
                out = session.conn.close()
            except Exception:
                out = b""
            if out:
                self.outbox.append((out, session.peer))
        if session.state == OPEN:
            self.events.append(SessionEvent("closed", session.peer, session.identity, reason))
        session.state = "closed"

    def _count(self, outcome: str) -> None:
        self.stats.handshakes[outcome] = self.stats.handshakes.get(outcome, 0) + 1
