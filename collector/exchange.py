"""The exchange layer (RFC 7252 §4): deduplication, responses, separate responses.

Message deduplication (§4.5): a worker remembers each request it saw by (peer, Message
ID) for EXCHANGE_LIFETIME. While the request is being stored the entry holds the
in-progress `Request`, so a duplicate is absorbed (or, once an empty ACK went out,
ACKed again); afterwards it holds the exact response bytes, so a duplicate gets the
same answer again and is never stored twice. A duplicate is a retransmission, so it
has the original's length: a datagram that reuses a remembered (peer, Message ID)
with another length is dropped, never answered from the cache, so a small forged
datagram cannot draw a larger cached response (RFC 7252 §11.3, amplification).

Memory is bounded: at most `capacity` exchanges are remembered. Entries are kept in
arrival order (an OrderedDict keeps insertion order and arrivals are monotonic), so
expiry pops from the front, and when the cap is reached the oldest exchange is
forgotten first. A duplicate of a forgotten exchange is processed again; the store's
deterministic event ids still make it harmless for events that carry an `id` or a
timestamp. Peers' servers have fallen over for want of this bound (Californium
issue 2167, aiocoap issue 183).

Separate responses (§5.2.2): when the store has not answered within `ack_delay`, the
worker sends an empty ACK and later the response as a CON of its own, retransmitted
with exponential back-off (§4.2) until the device ACKs or RSTs it, or MAX_RETRANSMIT
is spent.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import coap
from coap.transmission import (
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    EXCHANGE_LIFETIME,
    MAX_RETRANSMIT,
)

Peer = Any  # the socket address tuple: (host, port) or (host, port, flow, scope)

_CON, _NON, _ACK, _RST = 0, 1, 2, 3
_VERSION = 0x40

MAX_AGE_OVERLOADED = 1  # seconds: the queue drains within milliseconds
MAX_AGE_STORE_DOWN = 5  # seconds: a store restart takes longer


def header(type_: int, code: int, mid: int, token: bytes) -> bytes:
    """The 4-byte header and the token: a whole response when it has no options."""
    return bytes((_VERSION | (type_ << 4) | len(token), code, mid >> 8, mid & 0xFF)) + token


def empty(type_: int, mid: int) -> bytes:
    """An Empty message: empty ACK or RST (§4.1: code 0.00, no token)."""
    return bytes((_VERSION | (type_ << 4), 0, mid >> 8, mid & 0xFF))


def fit(text: str, budget: int) -> bytes:
    """`text` as UTF-8, cut to `budget` bytes on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= budget:
        return data
    return data[: max(budget, 0)].decode("utf-8", "ignore").encode("utf-8")


def build_response(
    type_: int,
    mid: int,
    token: bytes,
    code: int,
    *,
    options: tuple[tuple[int, bytes], ...] = (),
    payload: bytes = b"",
    diagnostic: str = "",
    limit: int | None = None,
) -> bytes:
    """Encode a response; a text diagnostic is cut so the whole datagram fits `limit`.

    RFC 7252 §11.3 (amplification): a response should not be larger than the request
    that caused it, so error diagnostics are shortened, or dropped, to fit.
    """
    if not options and not payload and not diagnostic:
        return header(type_, code, mid, token)
    if diagnostic:
        options = (*options, (coap.OptionNumber.CONTENT_FORMAT, b""))  # text/plain = 0
        bare = coap.encode(coap.Message(coap.Type(type_), code, mid, token, options))
        budget = (limit - len(bare) - 1) if limit is not None else len(diagnostic) * 4
        payload = fit(diagnostic, budget)
        if not payload:
            options = options[:-1]
    return coap.encode(coap.Message(coap.Type(type_), code, mid, token, options, payload))


class Request:
    """A request whose events are being stored. Completes when every event has a result."""

    __slots__ = (
        "conflict",
        "deadline",
        "failure",
        "key",
        "mid",
        "options",
        "peer",
        "received",
        "rejection",
        "remaining",
        "separate",
        "size",
        "token",
        "type",
    )

    def __init__(
        self, peer: Peer, mid: int, token: bytes, type_: int, size: int, received: float
    ) -> None:
        self.peer = peer
        self.mid = mid
        self.token = token
        self.type = type_
        self.size = size  # request datagram length: the response's size limit
        self.received = received
        self.key = (peer, mid)
        self.remaining = 0
        self.deadline = 0.0  # when an empty ACK is due, if still unanswered
        self.options: tuple[tuple[int, bytes], ...] = ()  # echoed in the final response
        self.rejection = ""  # first REJECTED reason, with its event position
        self.failure = ""  # first FAILED reason
        self.conflict = ""  # first CONFLICT reason (a client id reused: 4.09)
        self.separate = False


class Retransmission:
    __slots__ = ("attempts", "data", "due", "peer", "timeout")

    def __init__(self, data: bytes, peer: Peer, now: float) -> None:
        self.data = data
        self.peer = peer
        self.attempts = 0
        self.timeout = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)
        self.due = now + self.timeout


class ExchangeLayer:
    """Dedup cache, separate-response timers and CON retransmissions of one worker."""

    def __init__(
        self,
        send: Callable[[bytes, Peer], None],
        *,
        capacity: int,
        ack_delay: float,
        lifetime: float = EXCHANGE_LIFETIME,
    ) -> None:
        self._send = send
        self.capacity = capacity
        self.ack_delay = ack_delay
        self.lifetime = lifetime
        # key -> (arrival time, request datagram length, Request | response bytes)
        # Tuples, not lists: once answered, an entry holds only atomic values, so the
        # cyclic GC untracks it at its first pass and never walks it again; the
        # table holds up to `capacity` of them for minutes (see worker.serve_forever).
        # An OrderedDict, not a dict: removing a plain dict's first key leaves a dummy
        # that every later `next(iter(...))` scans past, O(n) per eviction once full.
        self.seen: OrderedDict[tuple[Peer, int], tuple[float, int, Request | bytes]] = OrderedDict()
        self._waiting: list[Request] = []  # CON requests in arrival order, for ack-delay
        self._waiting_head = 0
        self._outgoing: dict[tuple[Peer, int], Retransmission] = {}
        self._next_mid = random.randrange(0x10000)
        self.given_up = 0
        self.retransmitted = 0

    # -- dedup ---------------------------------------------------------------------

    def duplicate(self, peer: Peer, mid: int, size: int) -> bool:
        """Handle a request seen before; True when it was a duplicate (and is done).

        `size` is the datagram's length; one unlike the original's gets no answer.
        """
        entry = self.seen.get((peer, mid))
        if entry is None:
            return False
        if entry[1] != size:
            return True
        state = entry[2]
        if isinstance(state, bytes):
            self._send(state, peer)
        elif state.separate:
            self._send(empty(_ACK, mid), peer)
        return True

    def remember(
        self, key: tuple[Peer, int], now: float, size: int, state: Request | bytes
    ) -> None:
        seen = self.seen
        if len(seen) >= self.capacity and key not in seen:
            seen.popitem(last=False)  # the oldest exchange is forgotten first
        seen[key] = (now, size, state)

    def answered(self, key: tuple[Peer, int], data: bytes) -> None:
        """Replace an in-progress entry by its response bytes (keeps arrival order)."""
        seen = self.seen
        entry = seen.get(key)
        if entry is not None:
            seen[key] = (entry[0], entry[1], data)

    def track(self, request: Request) -> None:
        """Watch a CON request for the ack-delay deadline."""
        request.deadline = request.received + self.ack_delay
        self._waiting.append(request)

    # -- separate responses ------------------------------------------------------------

    def next_mid(self) -> int:
        self._next_mid = (self._next_mid + 1) & 0xFFFF
        return self._next_mid

    def send_confirmable(self, peer: Peer, mid: int, data: bytes, now: float) -> None:
        """Send a CON of ours (a separate response, Message ID from `next_mid`) and
        retransmit it until ACKed."""
        self._send(data, peer)
        self._outgoing[(peer, mid)] = Retransmission(data, peer, now)

    def on_ack(self, peer: Peer, mid: int) -> None:
        """An ACK or RST from a device ends the retransmission of our CON."""
        self._outgoing.pop((peer, mid), None)

    # -- timers ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run due work: empty ACKs, retransmissions, expiry. Called every few ms."""
        waiting = self._waiting
        i = self._waiting_head
        while i < len(waiting) and waiting[i].deadline <= now:
            request = waiting[i]
            if request.remaining > 0 and not request.separate:
                request.separate = True
                self._send(empty(_ACK, request.mid), request.peer)
            i += 1
        if i > 1024 and i * 2 > len(waiting):
            del waiting[:i]
            i = 0
        self._waiting_head = i
        # Requests that completed early leave the deque here rather than on the hot path.
        if self._outgoing:
            for key, rt in list(self._outgoing.items()):
                if rt.due > now:
                    continue
                if rt.attempts >= MAX_RETRANSMIT:
                    del self._outgoing[key]
                    self.given_up += 1
                    continue
                rt.attempts += 1
                rt.timeout *= 2
                rt.due = now + rt.timeout
                self.retransmitted += 1
                self._send(rt.data, rt.peer)
        seen = self.seen
        horizon = now - self.lifetime
        while seen:
            key = next(iter(seen))
            if seen[key][0] > horizon:
                break
            seen.popitem(last=False)

    @property
    def outgoing(self) -> int:
        return len(self._outgoing)
