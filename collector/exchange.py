"""The exchange layer (RFC 7252 §4): deduplication, separate responses, retransmission.

Message deduplication (§4.5): a worker remembers each request it saw by (peer, Message
ID) for EXCHANGE_LIFETIME. While the request is being stored the entry holds the
in-progress `Request`, so a duplicate is absorbed (or, once an empty ACK went out,
ACKed again); afterwards it holds the exact response bytes, so a duplicate gets the
same answer again and is never stored twice. A duplicate is a retransmission, so it
has the original's length: a datagram that reuses a remembered (peer, Message ID)
with another length is dropped, never answered from the cache, so a small forged
datagram cannot draw a larger cached response (RFC 7252 §11.3, amplification).

Memory is bounded and shared fairly (`collector.fairness.FairTable`): at most
`capacity` exchanges are remembered, each charged to its source (the peer's address,
or the DTLS identity); when the table is full the heaviest source's oldest exchange is
forgotten, so a flood of unique Message IDs from one address evicts only that
address's entries. An answered entry with its peer tuple, response bytes and share of
the owner's queue costs about 430 bytes (645 when every entry has an address of its
own), so the default 200,000 entries take 81-123 MiB per worker
(bench/dedup_memory.py). A duplicate of a
forgotten exchange is processed again; the store's deterministic event ids still make
it harmless for events that carry an `id` or a timestamp. Peers' servers have fallen
over for want of such a bound (Californium issue 2167, aiocoap issue 183).

Separate responses (§5.2.2): when the store has not answered within `ack_delay`, the
layer sends an empty ACK and later the response as a CON of its own, retransmitted
with exponential back-off (§4.2) until the device ACKs or RSTs it, or MAX_RETRANSMIT
is spent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any

from coap import Type
from coap.transmission import (
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    EXCHANGE_LIFETIME,
    MAX_RETRANSMIT,
)
from collector.fairness import FairTable
from collector.responses import empty

Peer = Any  # the socket address tuple: (host, port) or (host, port, flow, scope)

_ACK = int(Type.ACK)


class Request:
    """A request whose events are being stored. Completes when every event has a result."""

    __slots__ = (
        "charged",
        "deadline",
        "error",
        "error_code",
        "key",
        "mid",
        "options",
        "owner",
        "peer",
        "received",
        "remaining",
        "separate",
        "silent",
        "size",
        "slot",
        "token",
        "type",
    )

    def __init__(
        self,
        peer: Peer,
        mid: int,
        token: bytes,
        type_: int,
        size: int,
        received: float,
        owner: Hashable,
        events: int = 0,
        options: tuple[tuple[int, bytes], ...] = (),
        silent: int = 0,
    ) -> None:
        self.peer = peer
        self.owner = owner  # whose share it counts in: source address or identity
        self.mid = mid
        self.token = token
        self.type = type_
        self.size = size  # request datagram length: the response's size limit
        self.received = received
        self.key = (peer, mid)
        self.remaining = events  # events still without a result
        self.charged = 0  # its events counted in its owner's pending share, if any
        self.deadline = 0.0  # when an empty ACK is due, if still unanswered
        self.slot = -1  # its place among the exchange layer's watched ones (-1: none)
        self.options = options  # echoed in the final response
        # The first failed event's answer (code 0: none): 4.00 > 4.09 > 5.03, each
        # with the first such event's reason.
        self.error_code = 0
        self.error = ""
        self.silent = silent  # No-Response (RFC 7967): the classes not to answer, as bits
        self.separate = False


# A dedup entry: (owner, arrival time, request length, Request | response bytes).
Entry = tuple[Hashable, float, int, Request | bytes]


class Retransmission:
    __slots__ = ("attempts", "data", "due", "peer", "timeout")

    def __init__(self, data: bytes, peer: Peer, now: float) -> None:
        self.data = data
        self.peer = peer
        self.attempts = 0
        self.timeout = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)
        self.due = now + self.timeout


class ExchangeLayer:
    """Dedup table, separate-response timers and CON retransmissions of one core."""

    def __init__(
        self,
        send: Callable[[bytes, Peer], None],
        *,
        capacity: int,
        ack_delay: float,
        lifetime: float = EXCHANGE_LIFETIME,
    ) -> None:
        self._send = send
        self.ack_delay = ack_delay
        self.lifetime = lifetime
        # (peer, MID) -> (owner, arrival time, request length, Request | response bytes).
        # Tuples, not lists: once answered, an entry holds only atomic values, so the
        # cyclic GC untracks it at its first pass and never walks it again; the
        # table holds up to `capacity` of them for minutes (see worker.serve_forever).
        self.seen: FairTable[tuple[Peer, int], Entry] = FairTable(capacity)
        # CON requests in arrival order, for ack-delay; None where one was settled, so
        # that a request answered in time is freed at once (see settle).
        self._waiting: list[Request | None] = []
        self._waiting_head = 0
        self._waiting_base = 0  # requests dropped from the front of _waiting so far
        self._outgoing: dict[tuple[Peer, int], Retransmission] = {}
        self._next_mid = random.randrange(0x10000)
        self.retransmitted = 0  # our own resends of separate responses, since last read

    # -- dedup ---------------------------------------------------------------------

    def duplicate(self, peer: Peer, mid: int, size: int) -> bool:
        """Handle a request seen before; True when it was a duplicate (and is done).

        `size` is the datagram's length; one unlike the original's gets no answer.
        """
        entry = self.seen.get((peer, mid))
        if entry is None:
            return False
        if entry[2] != size:
            return True
        state = entry[3]
        if isinstance(state, bytes):
            if state:  # b"": answered with silence (No-Response), and so again
                self._send(state, peer)
        elif state.separate:
            self._send(empty(_ACK, mid), peer)
        return True

    def remember(
        self, key: tuple[Peer, int], owner: Hashable, now: float, size: int, state: Request | bytes
    ) -> None:
        """Keep a request's state (or its answer's bytes) for EXCHANGE_LIFETIME."""
        self.seen.put(key, (owner, now, size, state))

    def answered(self, request: Request, data: bytes) -> None:
        """Replace a request's in-progress entry by its response bytes (keeps arrival
        order; no-op once the entry is gone)."""
        self.seen.replace(request.key, (request.owner, request.received, request.size, data))

    def track(self, request: Request) -> None:
        """Watch a CON request for the ack-delay deadline, until `settle`."""
        request.deadline = request.received + self.ack_delay
        waiting = self._waiting
        request.slot = self._waiting_base + len(waiting)
        waiting.append(request)

    def settle(self, request: Request) -> None:
        """Stop watching a tracked request: it is answered.

        The list lets go of it here rather than when the tick passes its deadline:
        held for ack-delay, every request of a busy worker outlived the young GC
        generation, and the cyclic GC walked ~25,000 of them in each middle-generation
        pass (18 ms at 30,000 requests/s).
        """
        index = request.slot - self._waiting_base
        # < 0: never tracked, or past its deadline and dropped by the tick already.
        if index >= 0:
            self._waiting[index] = None

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
        while i < len(waiting):
            request = waiting[i]
            if request is not None:  # (None: settled)
                if request.deadline > now:
                    break
                if request.remaining > 0 and not request.separate:
                    request.separate = True
                    self._send(empty(_ACK, request.mid), request.peer)
            i += 1
        # The front of the list goes here rather than on the hot path.
        if i > 1024 and i * 2 > len(waiting):
            del waiting[:i]
            self._waiting_base += i
            i = 0
        self._waiting_head = i
        if self._outgoing:
            for key, rt in list(self._outgoing.items()):
                if rt.due > now:
                    continue
                if rt.attempts >= MAX_RETRANSMIT:
                    del self._outgoing[key]  # §4.2: give up; the device asks again
                    continue
                rt.attempts += 1
                rt.timeout *= 2
                rt.due = now + rt.timeout
                self.retransmitted += 1
                self._send(rt.data, rt.peer)
        self.seen.expire(now - self.lifetime)

    @property
    def outgoing(self) -> int:
        """Separate responses sent and not yet ACKed (nor given up)."""
        return len(self._outgoing)
