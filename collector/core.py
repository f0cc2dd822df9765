"""The request core: datagrams in, answers and events out, with no I/O and no clock.

Like h11's `Connection`, the core is fed what arrived and hands back what to do: the
shell (plain UDP in `collector.worker`, or DTLS) gives it each datagram with its
peer, the time on the loop's clock and the wall time; the core appends the datagrams
to send to `outbox` and hands the events to store to `store(event, request,
position)`, the batch driver's `add`. When the driver has a batch's results, the
shell passes them to `on_results`, and the core answers every request they complete.
`tick(now)` runs the exchange timers. The core opens no socket and reads no clock,
so every rule here is tested by calling it (tests/collector/test_core.py).

The path of one datagram reads straight down:
- `datagram`: a plain event POST is recognised from its option bytes
  (`coap.RequestShapes`); anything else goes through `coap.decode`. Message-layer
  rules come first (RFC 7252 §4): RST for a malformed CON or a ping, ACK/RST end our
  retransmissions, duplicates are answered from the exchange layer (`exchange`).
- `_request`: options (§5.4.1 critical, proxying, No-Response), routing (4.04/4.05),
  then the resource: `_post_events` (conditions, Block1, decoding, back-pressure,
  then the store) or a readable resource (`_read`: Accept, Block2).
- Every refusal is a `collector.errors.RequestError` (or a codec request error) that
  becomes an answer in one place, `_refuse`; every answer leaves through `_answer`
  (at once) or `_complete` (after the store).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable

import coap
from collector import resources
from collector.blockwise import Reassembly, block2
from collector.config import Config, event_limits
from collector.errors import (
    Options,
    PreconditionFailed,
    RequestError,
    TooManyRequests,
    Unavailable,
)
from collector.events import (
    Event,
    Limits,
    check_identifier,
    decode_events,
    decode_json_events,
)
from collector.exchange import ExchangeLayer, Peer, Request
from collector.identity import Identity
from collector.metrics import WorkerStats
from collector.ratelimit import RateLimiter
from collector.responses import build_response, empty, header
from collector.sinks.base import STORED, Outcome, Result

# What answering a request needs of it: (type, Message ID, token, peer, datagram size,
# arrival time on the loop's clock, owner: whose share of shared state it uses).
Head = tuple[int, int, bytes, Peer, int, float, Hashable]
Store = Callable[[Event, Request, int], None]

MAX_AGE_OVERLOADED = 1  # seconds: the queue drains within milliseconds
MAX_AGE_STORE_DOWN = 5  # seconds: a store restart takes longer
MAX_AGE_DRAINING = 2  # seconds: another replica or the restarted worker answers then
SOURCE_CACHE = 16384  # peers whose "host:port" is kept (cleared when full)
# 1/PENDING_RESERVE of --max-pending is kept for owners under their share, so one
# device (or one address) that fills the queue cannot shut the others out.
PENDING_RESERVE = 8

_CON, _NON, _ACK = int(coap.Type.CON), int(coap.Type.NON), int(coap.Type.ACK)
_RST = int(coap.Type.RST)
_POST = int(coap.Code.POST)
_CREATED = int(coap.Code.CREATED)
_CONTENT = int(coap.Code.CONTENT)
_CONTINUE = int(coap.Code.CONTINUE)
_N = coap.OptionNumber
_IF_MATCH, _IF_NONE_MATCH = int(_N.IF_MATCH), int(_N.IF_NONE_MATCH)
_CONTENT_FORMAT, _MAX_AGE, _ACCEPT = int(_N.CONTENT_FORMAT), int(_N.MAX_AGE), int(_N.ACCEPT)
_URI_QUERY, _BLOCK1, _BLOCK2 = int(_N.URI_QUERY), int(_N.BLOCK1), int(_N.BLOCK2)
_SIZE1, _SIZE2 = int(_N.SIZE1), int(_N.SIZE2)
_PROXY_URI, _PROXY_SCHEME = int(_N.PROXY_URI), int(_N.PROXY_SCHEME)
_NO_RESPONSE, _REQUEST_TAG = int(_N.NO_RESPONSE), int(_N.REQUEST_TAG)
_JSON = int(coap.ContentFormat.JSON)
_EVENT_FORMATS = frozenset(int(f) for f in resources.EVENT_FORMATS)
_SENML_FORMATS = frozenset((int(coap.ContentFormat.SENML_JSON), int(coap.ContentFormat.SENML_CBOR)))
_STORED, _DUPLICATE = Outcome.STORED, Outcome.DUPLICATE
_REJECTED, _CONFLICT = Outcome.REJECTED, Outcome.CONFLICT
# A failed event's answer, and its precedence when a request's events fail
# differently: the device's own fault (4.00, 4.09) over the store's (5.03).
_FAILURE_CODES = {
    _REJECTED: int(coap.Code.BAD_REQUEST),
    _CONFLICT: int(coap.Code.CONFLICT),
    Outcome.FAILED: int(coap.Code.SERVICE_UNAVAILABLE),
}
_PRECEDENCE = {int(coap.Code.BAD_REQUEST): 3, int(coap.Code.CONFLICT): 2}
_POST_EVENTS = ("POST", "/events")  # the events resource's (method, path) labels
_POST_CREATED = (*_POST_EVENTS, "2.01")
_CODE_LABELS: dict[int, str] = {}
# RFC 7967 §2: No-Response bits, by response class: 2 = 2.xx, 8 = 4.xx, 16 = 5.xx.
_NO_RESPONSE_BIT = {2: 2, 4: 8, 5: 16}

_EVENT_SHAPES = coap.shapes_for_paths(
    _POST,
    [path for path, (name, _m) in resources.ROUTES.items() if name is resources.EVENTS],
    [None, *sorted(_EVENT_FORMATS)],
)


def max_age(base: int) -> bytes:
    """A Max-Age option value of `base` to 2 x `base` seconds: jittered, so that a
    fleet told to come back does not come back in lock-step."""
    return coap.encode_uint(random.randint(base, 2 * base))


def code_label(code: int) -> str:
    label = _CODE_LABELS.get(code)
    if label is None:
        label = _CODE_LABELS[code] = coap.code_str(code)
    return label


def source_of(peer: Peer) -> str:
    host = peer[0]
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


class RequestCore:
    """The request path of one transport in one worker; see the module docstring."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        worker: int = 0,
        stats: WorkerStats | None = None,
        limits: Limits | None = None,
        fast_path: bool = True,
    ) -> None:
        self.config = config
        self.worker = worker
        self.stats = stats if stats is not None else WorkerStats()
        self.limits = limits or event_limits(config)
        self.store = store
        self.outbox: list[tuple[bytes, Peer]] = []
        self.exchange = ExchangeLayer(
            self._emit, capacity=config.dedup_capacity, ack_delay=config.ack_delay
        )
        self._seen = self.exchange.seen  # the dedup table
        self._seen_keys = self._seen.entries  # tested on the fast path
        self.blocks = Reassembly(self.limits.max_body)
        self.shapes = _EVENT_SHAPES if fast_path else coap.RequestShapes.empty()
        self.pending = 0  # events handed to the store and not yet answered
        # The pending queue's shares (see _admit): owner -> its events admitted while
        # more than `_counted` were pending, released when their request completes.
        self._held: dict[Hashable, int] = {}
        self._soft = config.max_pending - config.max_pending // PENDING_RESERVE
        self._counted = self._soft // 2
        self.health = resources.HEALTH_OK  # what /health says; the shell keeps it true
        self.draining = False
        # Told of every answer, (peer, request MID, code), when set: the shell's
        # access log (--access-log). None on the fast path of production.
        self.access: Callable[[Peer, int, int], None] | None = None
        self._sources: dict[Peer, str] = {}  # peer -> "host:port", the events' source
        # --rate-limit (issue 15): a bucket per owner, i.e. identity or source address.
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit else None

    # -- what the shell calls ----------------------------------------------------------

    def datagram(
        self,
        data: bytes,
        peer: Peer,
        now: float,
        wall_ms: int,
        identity: Identity | None = None,
        oversized: int = 0,
    ) -> None:
        """One datagram from `peer`. `oversized` > 0: only its first bytes are in
        `data` and it is that long; it gets 4.13 from its header and options, or RST
        when even those did not fit. Never raises for anything in `data`."""
        owner: Hashable = peer[0] if identity is None else identity.name
        if not oversized:
            shaped = self.shapes.match(data)
            if shaped is not None:  # a plain event POST: see coap.RequestShapes
                mtype, mid, token, fmt, payload = shaped
                size = len(data)
                if (peer, mid) in self._seen_keys and self.exchange.duplicate(peer, mid, size):
                    self.stats.duplicates += 1
                    return
                try:
                    if self.draining:
                        raise _draining()
                    self._post_events(
                        mtype, mid, token, peer, size, now, owner, fmt, payload, wall_ms, identity
                    )
                except coap.CoapError as exc:
                    self._refuse((mtype, mid, token, peer, size, now, owner), exc, _POST_EVENTS)
                return
        try:
            msg = coap.decode(data)
        except coap.MessageFormatError as exc:
            self.stats.malformed += 1
            # RFC 7252 §4.2: a CON that cannot be processed is rejected with RST;
            # §4.3: anything else malformed is silently ignored.
            if exc.type == _CON and exc.mid is not None:
                self._emit(empty(_RST, exc.mid), peer)
            return
        mtype = msg.type
        if mtype >= _ACK:
            self.exchange.on_ack(peer, msg.mid)
            return
        code = msg.code
        if code == 0 or code >= 32:
            # An empty CON is a ping (§4.3): RST. A response sent to us as a request,
            # or an empty NON, is not ours to process: RST the CON, ignore the NON.
            if mtype == _CON:
                self._emit(empty(_RST, msg.mid), peer)
            return
        size = oversized or len(data)
        if self.exchange.duplicate(peer, msg.mid, size):
            self.stats.duplicates += 1
            return
        head = (int(mtype), msg.mid, msg.token, peer, size, now, owner)
        label = _label(msg)
        try:
            silent = self._silent(msg)
        except coap.CoapError as exc:
            self._refuse(head, exc, label)
            return
        try:
            if self.draining:
                raise _draining()
            if oversized:
                raise self._too_large()
            self._request(msg, head, wall_ms, identity, silent)
        except coap.CoapError as exc:
            self._refuse(head, exc, label, silent)

    def on_results(
        self, batch: list[tuple[Event, Request, int]], results: list[Result], now: float
    ) -> None:
        """A written batch: count its outcomes and answer every request it completes."""
        stored = 0
        held = self._held
        for (_event, request, position), result in zip(batch, results, strict=True):
            if result is STORED:  # what sinks return for a new document
                stored += 1
            else:
                self._judge(request, position, result)
            request.remaining -= 1
            if request.remaining == 0:
                if request.type == _CON:
                    self.exchange.settle(request)
                if request.charged:  # its events leave its owner's share
                    owner = request.owner
                    left = held[owner] - request.charged
                    if left:
                        held[owner] = left
                    else:
                        del held[owner]
                self._complete(request, now)
        self.pending -= len(batch)
        self.stats.events_stored += stored

    def tick(self, now: float) -> None:
        """Exchange timers: empty ACKs due, retransmissions, expiry."""
        self.exchange.tick(now)

    def drain(self) -> None:
        """Stop taking requests: new ones get 5.03 with Max-Age, while duplicates are
        still answered and ACKs/RSTs of our separate responses still read."""
        self.draining = True
        self.health = resources.HEALTH_DRAINING

    @property
    def owed(self) -> bool:
        """Whether anything is still owed: requests being stored, or separate
        responses not yet ACKed (nor given up)."""
        return self.pending > 0 or self.exchange.outgoing > 0

    # -- requests ----------------------------------------------------------------------

    def _request(
        self, msg: coap.Message, head: Head, wall_ms: int, identity: Identity | None, silent: int
    ) -> None:
        options = msg.options
        if options and options[-1][0] >= _PROXY_URI and _proxied(msg):
            raise RequestError("not a proxy", code=coap.Code.PROXYING_NOT_SUPPORTED)
        bad = msg.unrecognized_critical()
        if bad is not None:
            if msg.type == _NON:  # RFC 7252 §5.4.1: a NON with one is rejected (ignored)
                self.stats.malformed += 1
                return
            raise coap.BadOption(bad, f"unrecognized critical option {bad}")
        route = resources.ROUTES.get(msg.uri_path)
        if route is None:
            raise RequestError("not found", code=coap.Code.NOT_FOUND)
        name, method = route
        if msg.code != method:
            raise RequestError(f"use {coap.Code(method).name}", code=coap.Code.METHOD_NOT_ALLOWED)
        if name is resources.EVENTS:
            self._post_events(
                *head, msg.content_format, msg.payload, wall_ms, identity, msg, silent
            )
        else:
            self._read(name, msg, head, silent)

    def _read(self, name: str, msg: coap.Message, head: Head, silent: int) -> None:
        """GET /health or /.well-known/core: Accept (§5.10.4), conditions (§5.10.8),
        Block2 (RFC 7959 §2.4)."""
        fmt = resources.negotiate(name, msg.uint_option(_ACCEPT))
        if msg.option(_IF_NONE_MATCH) is not None:  # the resource exists
            raise PreconditionFailed("If-None-Match: the resource exists")
        for etag in msg.option_values(_IF_MATCH):
            if etag:  # these resources carry no ETag; an empty If-Match matches any
                raise PreconditionFailed("If-Match: no such ETag")
        options: Options = ((_CONTENT_FORMAT, coap.encode_uint(fmt)),)
        if name is resources.HEALTH:
            status = self.health
            body = resources.health_body(status, fmt)
            if status in (resources.HEALTH_STORE_DOWN, resources.HEALTH_DRAINING):
                base = (
                    MAX_AGE_STORE_DOWN
                    if status == resources.HEALTH_STORE_DOWN
                    else MAX_AGE_DRAINING
                )
                options = ((_MAX_AGE, max_age(base)), *options)
                self._answer(
                    head,
                    int(coap.Code.SERVICE_UNAVAILABLE),
                    options=options,
                    payload=body,
                    label=_label(msg),
                    silent=silent,
                )
                return
            limit: int | None = -1
        else:  # /.well-known/core: discovery, the one answer allowed past its request
            body = resources.WELL_KNOWN_CORE
            limit = None
        requested = msg.option(_BLOCK2)
        chunk, extra = block2(
            body,
            None if requested is None else coap.Block.decode(requested),
            size2=msg.option(_SIZE2) is not None,
        )
        self._answer(
            head,
            _CONTENT,
            options=options + extra,
            payload=chunk,
            limit=limit,
            label=_label(msg),
            silent=silent,
        )

    def _post_events(
        self,
        mtype: int,
        mid: int,
        token: bytes,
        peer: Peer,
        size: int,
        now: float,
        owner: Hashable,
        fmt: int | None,
        payload: bytes,
        wall_ms: int,
        identity: Identity | None,
        msg: coap.Message | None = None,
        silent: int = 0,
    ) -> None:
        """POST /events: a request's head (see `Head`, spread: the fast path builds
        no tuple), its body, and the decoded request, or None from the fast path
        (whose options are only Uri-Path and Content-Format)."""
        echo: Options = ()
        if msg is not None:  # (a shape's Content-Format is always one of ours)
            if fmt is not None and fmt not in _EVENT_FORMATS:
                raise coap.UnsupportedContentFormat(
                    fmt, f"content format {fmt} not supported; use 50, 60, 110 or 112"
                )
            # §5.10.8: /events is a collection with no representation of its own, so
            # an If-Match never matches and an If-None-Match finds it existing.
            if msg.option(_IF_MATCH) is not None:
                raise PreconditionFailed("If-Match: /events has no representation")
            if msg.option(_IF_NONE_MATCH) is not None:
                raise PreconditionFailed("If-None-Match: /events exists")
            block1 = msg.option(_BLOCK1)
            if block1 is not None:  # RFC 7959 §2.5: a body in blocks, 2.31 until the last
                tag = tuple(msg.option_values(_REQUEST_TAG)) or None
                key = (peer, msg.uri_path, tag)
                assembled = self.blocks.feed(
                    key, owner, coap.Block.decode(block1), payload, fmt, now
                )
                echo = ((_BLOCK1, block1),)
                if assembled is None:
                    head = (mtype, mid, token, peer, size, now, owner)
                    self._answer(head, _CONTINUE, options=echo, silent=silent)
                    return
                payload, fmt = assembled
        if len(payload) > self.limits.max_body:
            raise self._too_large()
        source = self._sources.get(peer)
        if source is None:
            if len(self._sources) >= SOURCE_CACHE:
                self._sources.clear()
            source = self._sources[peer] = source_of(peer)
        if fmt is None or fmt == _JSON:
            events = decode_json_events(
                payload, source, mid, wall_ms, self.worker, self.limits, identity
            )
        else:
            sender: str | None = None
            namespace: str | None = None
            if fmt in _SENML_FORMATS and msg is not None:  # SenML has no sender: `?sender=`
                sender, namespace = _senml_defaults(msg)
            events = decode_events(
                payload,
                fmt,
                source=source,
                mid=mid,
                received_ms=wall_ms,
                worker=self.worker,
                limits=self.limits,
                default_sender=sender,
                default_namespace=namespace,
                identity=identity,
            )
        count = len(events)
        if self.limiter is not None:
            wait = self.limiter.check(owner, count, now)
            if wait:
                self.stats.rate_limited += 1
                raise TooManyRequests(
                    "rate limit exceeded", options=((_MAX_AGE, coap.encode_uint(wait)),)
                )
        pending = self.pending
        request = Request(peer, mid, token, mtype, size, now, owner, count, echo, silent)
        if pending + count > self._counted:  # a queue half full: shares count
            self._admit(owner, count)
            request.charged = count
        self._seen.add(request.key, (owner, now, size, request))  # not a duplicate: absent
        if mtype == _CON:
            self.exchange.track(request)
        self.pending = pending + count
        store = self.store
        if count == 1:  # most requests: no enumerate object, no tuple per event
            store(events[0], request, 0)
        else:
            for position, event in enumerate(events):
                store(event, request, position)

    def _admit(self, owner: Hashable, count: int) -> None:
        """Back-pressure, once more than half the soft limit is pending.

        A request that would pass --max-pending gets 5.03 with Max-Age (one larger
        than --max-pending itself is still taken when nothing waits, or it could
        never be). Between the soft limit and --max-pending lies the reserve: there a
        request is refused when its owner already holds its share, the counted half
        of the soft limit divided among the owners holding counted events, this one
        included. Events are counted from half the soft limit only, which keeps the
        common case (a short queue) free of per-owner bookkeeping; the uncounted
        events are the oldest, so they are the first to be answered."""
        pending, held = self.pending, self._held
        mine = held.get(owner, 0)
        total = pending + count
        reason = ""
        if total > self.config.max_pending and pending:
            reason = "overloaded"
        elif total > self._soft and mine:
            share = (self._soft - self._counted) // len(held)
            if mine + count > share:
                reason = "overloaded: this device's share"
        if reason:
            self.stats.overloaded += 1
            raise Unavailable(reason, options=((_MAX_AGE, max_age(MAX_AGE_OVERLOADED)),))
        held[owner] = mine + count

    def _too_large(self) -> RequestError:
        """RFC 7252 §5.9.2.9: 4.13 with Size1, the largest body taken."""
        max_body = self.limits.max_body
        return RequestError(
            f"body over {max_body} bytes",
            code=coap.Code.REQUEST_ENTITY_TOO_LARGE,
            options=((_SIZE1, coap.encode_uint(max_body)),),
        )

    def _silent(self, msg: coap.Message) -> int:
        """RFC 7967: the No-Response bits of a NON request (0: answer everything).
        A CON is always answered: its ACK is owed (RFC 7252 §4.2)."""
        if msg.type != _NON:
            return 0
        value = msg.option(_NO_RESPONSE)
        return 0 if value is None else coap.decode_uint(value)

    # -- answers -----------------------------------------------------------------------

    def _emit(self, data: bytes, peer: Peer) -> None:
        self.outbox.append((data, peer))

    def _refuse(
        self, head: Head, exc: coap.CoapError, label: tuple[str, str], silent: int = 0
    ) -> None:
        """The one place a refusal becomes an answer: its code, diagnostic, options."""
        code = exc.code if exc.code is not None else int(coap.Code.BAD_REQUEST)
        options = exc.options if isinstance(exc, RequestError) else ()
        self._answer(head, int(code), str(exc), options=options, label=label, silent=silent)

    def _answer(
        self,
        head: Head,
        code: int,
        diagnostic: str = "",
        *,
        options: Options = (),
        payload: bytes = b"",
        limit: int | None = -1,
        label: tuple[str, str] = _POST_EVENTS,
        silent: int = 0,
    ) -> None:
        """Answer at once (no store involved): piggybacked for CON, NON for NON.
        `limit` caps the datagram (-1: the request's size, None: no cap)."""
        mtype, request_mid, token, peer, size, now, owner = head
        if silent and silent & _NO_RESPONSE_BIT.get(code >> 5, 0):
            data = b""  # RFC 7967: not wanted; a duplicate gets silence too
        else:
            if mtype == _CON:
                rtype, mid = _ACK, request_mid
            else:
                rtype, mid = _NON, self.exchange.next_mid()
            data = build_response(
                rtype,
                mid,
                token,
                code,
                options=options,
                payload=payload,
                diagnostic=diagnostic,
                limit=size if limit == -1 else limit,
            )
            self._emit(data, peer)
        self.exchange.remember((peer, request_mid), owner, now, size, data)
        stats = self.stats
        stats.requests[(*label, code_label(code))] += 1
        stats.latency.observe(0.0)
        if self.access is not None:
            self.access(peer, request_mid, code)

    def _judge(self, request: Request, position: int, result: Result) -> None:
        """Count an outcome other than the shared STORED, and keep the answer it
        calls for (the device's fault over the store's, the first reason of each)."""
        outcome = result.outcome
        stats = self.stats
        if outcome is _STORED:
            stats.events_stored += 1
            return
        if outcome is _DUPLICATE:
            stats.events_duplicate += 1
            return
        if outcome is _REJECTED or outcome is _CONFLICT:
            stats.events_rejected += 1
        else:
            stats.events_failed += 1
        code = _FAILURE_CODES.get(outcome, int(coap.Code.SERVICE_UNAVAILABLE))
        if _PRECEDENCE.get(code, 1) > _PRECEDENCE.get(request.error_code, 0):
            reason = result.reason or ("store unavailable" if outcome is Outcome.FAILED else "")
            request.error_code = code
            if not position:
                request.error = reason
            elif outcome is _CONFLICT:  # its reason names the field: event[3].id: ...
                request.error = f"event[{position}].{reason}"
            else:
                request.error = f"event[{position}]: {reason}"

    def _complete(self, request: Request, now: float) -> None:
        """Every event of `request` has its result: answer it."""
        if request.error_code or request.options or request.separate or request.silent:
            self._complete_other(request, now)
            return
        # The common answer: 2.01, piggybacked on the ACK of a CON, or as a NON.
        if request.type == _CON:
            rtype, mid = _ACK, request.mid
        else:
            rtype, mid = _NON, self.exchange.next_mid()
        data = header(rtype, _CREATED, mid, request.token)
        peer = request.peer
        self.outbox.append((data, peer))
        self._seen.replace(request.key, (request.owner, request.received, request.size, data))
        stats = self.stats
        stats.requests[_POST_CREATED] += 1
        stats.latency.observe(now - request.received)
        if self.access is not None:
            self.access(peer, request.mid, _CREATED)

    def _complete_other(self, request: Request, now: float) -> None:
        """`_complete` for any answer but a plain 2.01 as ACK or NON."""
        peer, token, options = request.peer, request.token, request.options
        code = request.error_code or _CREATED
        if request.separate:  # the empty ACK went out already: a CON of our own (§5.2.2)
            rtype, mid = _CON, self.exchange.next_mid()
        elif request.type == _CON:
            rtype, mid = _ACK, request.mid
        else:
            rtype, mid = _NON, self.exchange.next_mid()
        if code == _CREATED and not options:
            data = header(rtype, code, mid, token)
        else:
            if code == _CREATED:
                diagnostic = ""
            else:
                diagnostic = request.error
                if code == coap.Code.SERVICE_UNAVAILABLE:
                    options = ((_MAX_AGE, max_age(MAX_AGE_STORE_DOWN)), *options)
            data = build_response(
                rtype, mid, token, code, options=options, diagnostic=diagnostic, limit=request.size
            )
        silent = request.silent
        if silent and silent & _NO_RESPONSE_BIT.get(code >> 5, 0):
            self.exchange.answered(request, b"")
        elif request.separate:
            self.exchange.send_confirmable(peer, mid, data, now)
            self.exchange.answered(request, empty(_ACK, request.mid))
        else:
            self._emit(data, peer)
            self.exchange.answered(request, data)
        stats = self.stats
        stats.requests[
            _POST_CREATED if code == _CREATED else (*_POST_EVENTS, code_label(code))
        ] += 1
        stats.latency.observe(now - request.received)
        if self.access is not None:
            self.access(peer, request.mid, code)


def _draining() -> Unavailable:
    return Unavailable("draining", options=((_MAX_AGE, max_age(MAX_AGE_DRAINING)),))


def _proxied(msg: coap.Message) -> bool:
    """RFC 7252 §5.7.2: a request for a proxy (Proxy-Uri/Proxy-Scheme) gets 5.05."""
    return any(n in (_PROXY_URI, _PROXY_SCHEME) for n, _v in msg.options)


def _label(msg: coap.Message) -> tuple[str, str]:
    """A decoded request's (method, path) for the requests metric: closed sets."""
    return (
        resources.METHOD_LABELS.get(msg.code, "other"),
        resources.PATH_LABELS.get(msg.uri_path, "other"),
    )


def _senml_defaults(msg: coap.Message) -> tuple[str | None, str | None]:
    """Sender and namespace for SenML events, from Uri-Query `sender=` / `namespace=`
    (None when the query has none: decoding then takes the identity's, or `senml` and
    `default` on plain CoAP).

    SenML (RFC 8428) records carry no sender, so a device names itself in the query:
    `coap://collector/events?sender=dev-17`. Raises InvalidEvent for an empty or long
    one, or one with a control character.
    """
    found: dict[str, str | None] = {"sender": None, "namespace": None}
    for number, value in msg.options:
        if number != _URI_QUERY:
            continue
        key, sep, text = value.decode("utf-8", "replace").partition("=")
        if key in found and sep:
            found[key] = check_identifier(text, f"?{key}")
    return found["sender"], found["namespace"]


__all__ = ["MAX_AGE_OVERLOADED", "MAX_AGE_STORE_DOWN", "RequestCore", "max_age", "source_of"]
