"""A worker: one SO_REUSEPORT socket, one uvloop loop, one sink.

The worker reads its socket itself from a reader callback (up to READ_BURST datagrams
per wake-up, so timers and flushes still run under load): no transport object, no
per-datagram allocation beyond the message itself. Where libc offers them (Linux), it
moves datagrams with recvmmsg/sendmmsg (`collector.mmsg`), 64 per system call:
answers go to an outbox flushed once per read burst or per completed store batch, so a
batch of 500 completions leaves in 8 calls instead of 500. That measured 8-18% less
CPU per request (bench/mmsg_bench.py); elsewhere it keeps recvfrom/sendto.
Each POST's events go to the batch driver; when the last of them has its result, the
request is answered, piggybacked in the ACK if that is still possible, else as a
separate CON response. The worker never logs per datagram and never dies of one: the
codec raises only its format error, and everything after decoding is guarded.

What a device sends most, a CON or NON POST to /events whose only options are
Uri-Path and Content-Format, is read by a fast path that recognises those option
bytes whole (`_fast_posts`) and skips the general decoder; tests prove it answers
and stores exactly as the decoder path does. At the end of each read burst the
burst's events go to the store at once when it is idle, and a write that does not
wait (see `collector.batching`) is answered before the burst's outbox leaves: one
wake-up, one recvmmsg, one sendmmsg.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import uvloop

import coap
from coap import MessageFormatError, decode
from collector import mmsg, resources
from collector.batching import BatchDriver, Item
from collector.blockwise import BlockError, Reassembly
from collector.config import Config, event_limits
from collector.events import (
    DEFAULT_LIMITS,
    EventError,
    InvalidEvent,
    decode_events,
    decode_json_events,
)
from collector.exchange import (
    MAX_AGE_OVERLOADED,
    MAX_AGE_STORE_DOWN,
    ExchangeLayer,
    Peer,
    Request,
    build_response,
    empty,
    header,
)
from collector.exits import EXIT_DRAIN_INCOMPLETE, EXIT_OK, EXIT_STORE_UNAVAILABLE
from collector.metrics import PrometheusMetrics, WorkerStats
from collector.sinks import Outcome, Result, StoreUnavailable, make_sink
from collector.sinks.base import STORED
from collector.status import DRAINING, SERVING, STOPPED, STORE_DOWN, StatusBoard

log = logging.getLogger("collector.worker")


READ_BURST = 256  # datagrams per reader wake-up before yielding to timers
MAX_DATAGRAM = 65536  # read whole datagrams: an oversized body gets 4.13, not 4.00
TICK = 0.01  # seconds between exchange-timer sweeps
GC_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)
PUBLISH_EVERY = 1.0  # seconds between metric publishes and store probes

_CON, _NON, _ACK, _RST = 0, 1, 2, 3
_CREATED = int(coap.Code.CREATED)
_CONTENT = int(coap.Code.CONTENT)
_SIZE1 = int(coap.OptionNumber.SIZE1)
_MAX_AGE = int(coap.OptionNumber.MAX_AGE)
_CONTENT_FORMAT = int(coap.OptionNumber.CONTENT_FORMAT)
_BLOCK1 = int(coap.OptionNumber.BLOCK1)
_CONTINUE = int(coap.Code.CONTINUE)
_PROXY_URI = int(coap.OptionNumber.PROXY_URI)
_PROXY_SCHEME = int(coap.OptionNumber.PROXY_SCHEME)
_ACCEPT = int(coap.OptionNumber.ACCEPT)
_EVENT_FORMATS = frozenset(int(f) for f in resources.EVENT_FORMATS)
_SENML_FORMATS = frozenset((int(coap.ContentFormat.SENML_JSON), int(coap.ContentFormat.SENML_CBOR)))
_URI_QUERY = int(coap.OptionNumber.URI_QUERY)
_JSON = int(coap.ContentFormat.JSON)
_CODE_LABELS: dict[int, str] = {}
_POST_KEYS: dict[int, tuple[str, str, str]] = {}  # response code -> requests metric key
_POST = int(coap.Code.POST)
_MAX_MESSAGE = coap.DEFAULT_MAX_MESSAGE_SIZE
_SOURCE_CACHE = 16384  # peers whose "host:port" is kept (cleared when full)
_STORED, _DUPLICATE, _REJECTED = Outcome.STORED, Outcome.DUPLICATE, Outcome.REJECTED
_POST_EVENTS = ("POST", "/events")  # the events resource's (method, path) labels
_POST_CREATED = (*_POST_EVENTS, "2.01")
_SLOW: Any = object()
# What answering a request needs of it: (type, Message ID, token, peer, datagram size,
# arrival time on the loop's clock).
Head = tuple[int, int, bytes, Peer, int, float]


def _fast_posts() -> dict[bytes, int | None]:
    """The options of a plain event POST as they appear on the wire, between the
    token and the payload marker -> its Content-Format (None: absent).

    A datagram whose bytes from the token to the first 0xFF are one of these keys is
    exactly that POST: no key contains 0xFF, and after a complete option sequence a
    0xFF byte can only be the payload marker (RFC 7252 §3.1). So the fast path reads
    it without the decoder, and every other datagram takes the decoder.
    """
    table: dict[bytes, int | None] = {}
    for segments, (name, _method) in resources.ROUTES.items():
        if name is not resources.EVENTS:
            continue
        path = tuple((int(coap.OptionNumber.URI_PATH), s.encode()) for s in segments)
        for fmt in (None, *sorted(_EVENT_FORMATS)):
            cf = () if fmt is None else ((_CONTENT_FORMAT, coap.encode_uint(fmt)),)
            wire = coap.encode(coap.Message(coap.Type.CON, coap.Code.POST, 0, b"", path + cf, b"x"))
            key = wire[4:-2]  # between the header and the marker
            assert b"\xff" not in key
            table[key] = fmt
    return table


_FAST_POSTS = _fast_posts()


def _code_label(code: int) -> str:
    label = _CODE_LABELS.get(code)
    if label is None:
        label = _CODE_LABELS[code] = coap.code_str(code)
    return label


def _source(peer: Peer) -> str:
    host = peer[0]
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


class Worker:
    def __init__(
        self,
        index: int,
        sock: socket.socket,
        config: Config,
        status: StatusBoard | None = None,
        *,
        metrics: bool = True,
        batched_io: bool = True,
    ) -> None:
        self.index = index
        self.sock = sock
        self.config = config
        self.status = status
        self.stats = WorkerStats()
        self.sink = make_sink(config, index)
        self.limits = event_limits(config)
        # Batched I/O: slots hold the largest UDP datagram, so every request arrives
        # whole (whatever its options) and a body over max_body gets its 4.13 with Size1.
        # The slots are an anonymous mmap: only pages the kernel writes become resident.
        self._batch = (
            mmsg.DatagramBatch(sock, slot_size=MAX_DATAGRAM)
            if batched_io and mmsg.available()
            else None
        )
        self._outbox: list[tuple[bytes, Peer]] = []
        self._sources: dict[Peer, str] = {}  # peer -> "host:port", the events' source
        self._in_burst = False  # in a read burst, which flushes the outbox at its end
        self._blocks = Reassembly(self.limits.max_body)
        self.exchange = ExchangeLayer(
            self._send, capacity=config.dedup_capacity, ack_delay=config.ack_delay
        )
        self.driver = BatchDriver(
            self.sink,
            None,
            on_results=self._on_results,
            batch_max=config.batch_max,
            batch_ms=config.batch_ms,
            max_flushes=config.max_flushes,
            on_flushed=self._on_flushed,
        )
        self.store_up = True
        self.stopping = False
        self._with_metrics = metrics
        self._metrics: PrometheusMetrics | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now: Callable[[], float] = time.monotonic  # the loop's clock, once running
        self._stop: asyncio.Event | None = None
        self._access = log.info if config.access_log else None

    # -- lifecycle ---------------------------------------------------------------------

    def _set_status(self, state: int) -> None:
        if self.status is not None:
            self.status.set(self.index, state)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `stop()`), then drain. Returns the exit code."""
        loop = self._loop = asyncio.get_running_loop()
        self._now = loop.time
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # The supervisor forks with these blocked; one that came early is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            await self.sink.start()
        except StoreUnavailable as exc:
            log.error("store unavailable", extra={"worker": self.index, "reason": str(exc)})
            return EXIT_STORE_UNAVAILABLE
        if self._with_metrics:
            self._metrics = PrometheusMetrics(self.index)
        fd = self.sock.fileno()
        loop.add_reader(fd, self._on_readable)
        self._set_status(SERVING)
        log.debug("worker serving", extra={"worker": self.index})
        ticker = loop.create_task(self._tick_loop())
        await self._stop.wait()
        self.stopping = True
        loop.remove_reader(fd)
        self._set_status(DRAINING)
        code = await self._drain(loop)
        self._flush_outbox()
        ticker.cancel()
        self._publish()
        await self.sink.close()
        self._set_status(STOPPED)
        return code

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> int:
        """Flush, answer everything held, give separate responses a chance to be ACKed."""
        deadline = loop.time() + self.config.drain_timeout
        self.driver.flush()
        try:
            await asyncio.wait_for(self.driver.wait_idle(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "drain timed out",
                extra={"worker": self.index, "pending_events": self.driver.pending},
            )
            return EXIT_DRAIN_INCOMPLETE
        while self.exchange.outgoing and loop.time() < deadline:
            await asyncio.sleep(TICK)
        return EXIT_OK

    async def _tick_loop(self) -> None:
        """Exchange timers every TICK; once a second, a store probe and a metrics publish.

        The probe runs as its own task: a store that hangs (a locked sqlite file, an
        Elasticsearch that does not answer) must not hold up empty ACKs and
        retransmissions, which are exactly what devices need while the store is slow.
        """
        loop = asyncio.get_running_loop()
        next_publish = loop.time() + PUBLISH_EVERY
        probe: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(TICK)
                now = loop.time()
                self.exchange.tick(now)
                if now >= next_publish:
                    next_publish = now + PUBLISH_EVERY
                    if probe is None or probe.done():
                        probe = loop.create_task(self._probe_store())
                    self._publish()
        finally:
            if probe is not None:
                probe.cancel()

    async def _probe_store(self) -> None:
        try:
            up = await self.sink.healthy()
        except Exception:
            up = False
        if up != self.store_up:
            self.store_up = up
            log.warning("store up" if up else "store down", extra={"worker": self.index})
        if not self.stopping:
            self._set_status(SERVING if up else STORE_DOWN)

    def _publish(self) -> None:
        stats = self.stats
        stats.retransmissions += self.exchange.retransmitted
        self.exchange.retransmitted = 0
        if self._metrics is not None:
            self._metrics.publish(stats, self.driver.pending, self.store_up)

    # -- the hot path ------------------------------------------------------------------

    def _send(self, data: bytes, peer: Peer) -> None:
        if self._batch is None:
            try:
                self.sock.sendto(data, peer)
            except OSError:  # full send buffer or unreachable peer: UDP, the peer retries
                pass
            return
        if not self._outbox and not self._in_burst and self._loop is not None:
            self._loop.call_soon(self._flush_outbox)
        self._outbox.append((data, peer))

    def _flush_outbox(self) -> None:
        if self._outbox and self._batch is not None:
            outbox, self._outbox = self._outbox, []
            try:
                self._batch.send(outbox)
            except OSError:  # UDP: what did not go is retransmitted by the peer
                pass

    def _on_readable(self) -> None:
        if self._batch is not None:
            self._on_readable_batched(self._batch)
            return
        recv = self.sock.recvfrom
        handle = self._handle
        assert self._loop is not None
        now = self._loop.time()
        wall_ms = int(time.time() * 1000)
        for _ in range(READ_BURST):
            try:
                data, peer = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                handle(data, peer, now, wall_ms)
            except Exception:  # a bug must cost one datagram, never the worker
                log.exception("datagram handling failed", extra={"worker": self.index})

    def _on_readable_batched(self, batch: mmsg.DatagramBatch) -> None:
        handle = self._handle
        assert self._loop is not None
        now = self._loop.time()
        wall_ms = int(time.time() * 1000)
        taken = 0
        self._in_burst = True
        try:
            while taken < READ_BURST:
                try:
                    got = batch.recv()
                except OSError:
                    break
                for data, peer in got:
                    try:
                        handle(data, peer, now, wall_ms)
                    except Exception:  # a bug must cost one datagram, never the worker
                        log.exception("datagram handling failed", extra={"worker": self.index})
                for head, peer, size in batch.oversized:
                    try:
                        handle(head, peer, now, wall_ms, size)
                    except Exception:
                        log.exception("datagram handling failed", extra={"worker": self.index})
                received = len(got) + len(batch.oversized)
                if received < batch.slots:  # the queue is empty: no EAGAIN call needed
                    break
                taken += received
            # The burst's events go to the store now; a write that needs no wait
            # (the null sink) answers them before the outbox leaves below.
            try:
                self.driver.close_idle()
            except Exception:  # answering is guarded like handling: log, keep serving
                log.exception("answering a batch failed", extra={"worker": self.index})
        finally:
            self._in_burst = False
            self._flush_outbox()

    def _handle(
        self, data: bytes, peer: Peer, now: float, wall_ms: int, oversized: int = 0
    ) -> None:
        """One datagram. `oversized` > 0: only its first bytes are in `data` (a receive
        slot's worth) and it is that long: it gets 4.13 from its header and options,
        or RST when even those did not fit."""
        n = len(data)
        if 4 < n <= _MAX_MESSAGE and data[1] == _POST and not oversized:
            # Fast path for what devices send most: a CON or NON POST whose options
            # are exactly those of an event route (see `_fast_posts`). Anything else,
            # including every malformed datagram, takes the full decoder below.
            first = data[0]
            if first & 0xE0 == 0x40 and first & 0x0F <= 8:
                start = 4 + (first & 0x0F)
                marker = data.find(b"\xff", start)
                if 0 < marker < n - 1:
                    fmt = _FAST_POSTS.get(data[start:marker], _SLOW)
                    if fmt is not _SLOW:
                        mid = (data[2] << 8) | data[3]
                        if self.exchange.duplicate(peer, mid, n):
                            self.stats.duplicates += 1
                            return
                        head = ((first >> 4) & 3, mid, data[4:start], peer, n, now)
                        self._post_events(head, fmt, data[marker + 1 :], wall_ms, None)
                        return
        try:
            msg = decode(data)
        except MessageFormatError as exc:
            self.stats.malformed += 1
            # RFC 7252 §4.2: a CON that cannot be processed is rejected with RST;
            # §4.3: anything else malformed is silently ignored.
            if exc.type == _CON and exc.mid is not None:
                self._send(empty(_RST, exc.mid), peer)
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
                self._send(empty(_RST, msg.mid), peer)
            return
        size = oversized or n
        if self.exchange.duplicate(peer, msg.mid, size):
            self.stats.duplicates += 1
            return
        if oversized:
            self._too_large((msg.type, msg.mid, msg.token, peer, size, now), _label(msg))
            return
        self._request(msg, peer, size, now, wall_ms)

    def _request(self, msg: coap.Message, peer: Peer, size: int, now: float, wall_ms: int) -> None:
        segments = msg.uri_path
        route = resources.ROUTES.get(segments)
        options = msg.options
        if options and options[-1][0] >= _PROXY_URI and self._proxied(msg):
            self._reply(msg, peer, size, now, coap.Code.PROXYING_NOT_SUPPORTED, "not a proxy")
            return
        bad = msg.unrecognized_critical()
        if bad is not None:
            if msg.type == _NON:  # RFC 7252 §5.4.1: a NON with one is rejected (ignored)
                self.stats.malformed += 1
                return
            self._reply(
                msg, peer, size, now, coap.Code.BAD_OPTION, f"unrecognized critical option {bad}"
            )
            return
        if route is None:
            self._reply(msg, peer, size, now, coap.Code.NOT_FOUND, "not found")
            return
        name, method = route
        if msg.code != method:
            self._reply(
                msg, peer, size, now, coap.Code.METHOD_NOT_ALLOWED, f"use {coap.Code(method).name}"
            )
            return
        if name is resources.EVENTS:
            head = (msg.type, msg.mid, msg.token, peer, size, now)
            self._post_events(head, msg.content_format, msg.payload, wall_ms, msg)
        elif name is resources.HEALTH:
            healthy = self.store_up and not self.stopping
            budget = size - (4 + len(msg.token) + 3 + 1)  # header, token, CF option, marker
            degraded = getattr(self.sink, "degraded", None)  # a spooling sink's "spooling"
            fmt, body = resources.health_body(healthy, msg.uint_option(_ACCEPT), budget, degraded)
            code = coap.Code.CONTENT if healthy else coap.Code.SERVICE_UNAVAILABLE
            options = ((_CONTENT_FORMAT, coap.encode_uint(fmt)),) if body else ()
            if not healthy:
                options = ((_MAX_AGE, coap.encode_uint(MAX_AGE_STORE_DOWN)), *options)
            self._reply(msg, peer, size, now, code, options=options, payload=body)
        else:  # /.well-known/core: the one response allowed to exceed its request
            self._reply(
                msg,
                peer,
                size,
                now,
                _CONTENT,
                options=((_CONTENT_FORMAT, coap.encode_uint(coap.ContentFormat.LINK_FORMAT)),),
                payload=resources.WELL_KNOWN_CORE,
                limit=None,
            )

    def _too_large(self, head: Head, label: tuple[str, str] = _POST_EVENTS) -> None:
        """RFC 7252 §5.9.2.9: 4.13 with Size1, the largest body taken."""
        max_body = self.limits.max_body
        self._answer(
            head,
            coap.Code.REQUEST_ENTITY_TOO_LARGE,
            f"body over {max_body} bytes",
            options=((_SIZE1, coap.encode_uint(max_body)),),
            label=label,
        )

    @staticmethod
    def _proxied(msg: coap.Message) -> bool:
        """RFC 7252 §5.7.2: a request for a proxy (Proxy-Uri/Proxy-Scheme) gets 5.05."""
        return any(n in (_PROXY_URI, _PROXY_SCHEME) for n, _v in msg.options)

    def _post_events(
        self, head: Head, fmt: int | None, payload: bytes, wall_ms: int, msg: coap.Message | None
    ) -> None:
        """POST /events. `msg` is the decoded request, or None from the fast path
        (whose options are only Uri-Path and Content-Format)."""
        mtype, mid, token, peer, size, now = head
        if fmt is not None and fmt not in _EVENT_FORMATS:
            self._answer(
                head,
                coap.Code.UNSUPPORTED_CONTENT_FORMAT,
                f"content format {fmt} not supported; use 50, 60, 110 or 112",
            )
            return
        max_body = self.limits.max_body
        options: tuple[tuple[int, bytes], ...] = ()
        block1 = msg.option(_BLOCK1) if msg is not None else None
        if block1 is not None:  # RFC 7959 §2.5: a body in blocks, answered 2.31 until the last
            assert msg is not None
            try:
                block = coap.Block.decode(block1)
                assembled = self._blocks.feed((peer, msg.uri_path), block, payload, fmt, now)
            except (coap.CoapError, BlockError) as exc:
                code = getattr(exc, "code", None) or coap.Code.BAD_REQUEST
                size1 = ((_SIZE1, coap.encode_uint(max_body)),)
                extra = size1 if code == coap.Code.REQUEST_ENTITY_TOO_LARGE else ()
                self._answer(head, code, str(exc), options=extra)
                return
            options = ((_BLOCK1, block1),)
            if assembled is None:
                self._answer(head, _CONTINUE, options=options)
                return
            payload, fmt = assembled
        if len(payload) > max_body:
            self._too_large(head)
            return
        source = self._sources.get(peer)
        if source is None:
            if len(self._sources) >= _SOURCE_CACHE:
                self._sources.clear()
            source = self._sources[peer] = _source(peer)
        try:
            if fmt is None or fmt == _JSON:
                events = decode_json_events(payload, source, mid, wall_ms, self.index, self.limits)
            else:
                if fmt in _SENML_FORMATS and msg is not None:  # SenML has no sender: `?sender=`
                    sender, namespace = _senml_defaults(msg)
                else:
                    sender, namespace = "senml", "default"
                events = decode_events(
                    payload,
                    fmt,
                    source=source,
                    mid=mid,
                    received_ms=wall_ms,
                    worker=self.index,
                    limits=self.limits,
                    default_sender=sender,
                    default_namespace=namespace,
                )
        except EventError as exc:
            self._answer(head, exc.code, str(exc))
            return
        driver = self.driver
        # Over max-pending: 5.03 at once. A request larger than max-pending itself is
        # still taken when nothing waits, or it could never be accepted.
        if driver.pending and driver.pending + len(events) > self.config.max_pending:
            self.stats.overloaded += 1
            self._answer(
                head,
                coap.Code.SERVICE_UNAVAILABLE,
                "overloaded",
                options=((_MAX_AGE, coap.encode_uint(MAX_AGE_OVERLOADED)),),
            )
            return
        request = Request(peer, mid, token, mtype, size, now)
        request.remaining = len(events)
        request.options = options
        exchange = self.exchange
        exchange.remember(request.key, now, size, request)
        if mtype == _CON:
            exchange.track(request)
        add = driver.add
        for position, event in enumerate(events):
            add(event, request, position)

    def _on_results(self, batch: list[Item], results: list[Result]) -> None:
        """A written batch: count its outcomes and answer every request it completes."""
        now = self._now()
        stored = 0
        for (_event, request, position), result in zip(batch, results, strict=True):
            if result is STORED:  # what sinks return for a new document
                stored += 1
            else:
                self._judge(request, position, result)
            request.remaining -= 1
            if request.remaining == 0:
                self._complete(request, now)
        self.stats.events_stored += stored

    def _judge(self, request: Request, position: int, result: Result) -> None:
        """Count an outcome other than the shared STORED, and note why it failed."""
        outcome = result.outcome
        stats = self.stats
        if outcome is _STORED:
            stats.events_stored += 1
        elif outcome is _DUPLICATE:
            stats.events_duplicate += 1
        elif outcome is _REJECTED:
            stats.events_rejected += 1
            if not request.rejection:
                request.rejection = (
                    f"event[{position}]: {result.reason}" if position else result.reason
                )
        elif outcome is Outcome.CONFLICT:  # counted as rejected until the core has a metric
            stats.events_rejected += 1
            if not request.conflict:
                request.conflict = (
                    f"event[{position}].{result.reason}" if position else result.reason
                )
        else:
            stats.events_failed += 1
            if not request.failure:
                request.failure = result.reason or "store unavailable"

    def _complete(self, request: Request, now: float) -> None:
        peer, token, options = request.peer, request.token, request.options
        if request.rejection or request.failure or options or request.separate or request.conflict:
            self._complete_other(request, now)
            return
        # The common answer: 2.01, piggybacked on the ACK of a CON or as a NON.
        if request.type == _CON:
            rtype, mid = _ACK, request.mid
        else:
            rtype, mid = _NON, self.exchange.next_mid()
        data = header(rtype, _CREATED, mid, token)
        self._send(data, peer)
        self.exchange.answered(request.key, data)
        self.stats.requests[_POST_CREATED] += 1
        self.stats.latency.observe(now - request.received)
        if self._access is not None:
            self._access(
                "request", extra={"peer": _source(peer), "mid": request.mid, "code": "2.01"}
            )

    def _complete_other(self, request: Request, now: float) -> None:
        """Any other final answer: 4.00, 5.03, a Block1 echo, or a separate response."""
        options = request.options  # Block1, echoed on the last block's answer
        if request.rejection:
            code, diagnostic = int(coap.Code.BAD_REQUEST), request.rejection
        elif request.conflict:
            code, diagnostic = int(coap.Code.CONFLICT), request.conflict
        elif request.failure:
            code, diagnostic = int(coap.Code.SERVICE_UNAVAILABLE), request.failure
            options = ((_MAX_AGE, coap.encode_uint(MAX_AGE_STORE_DOWN)), *options)
        else:
            code, diagnostic = _CREATED, ""
        peer, token = request.peer, request.token
        if request.separate:  # the empty ACK went out already: a CON of our own (§5.2.2)
            rtype, mid = _CON, self.exchange.next_mid()
        elif request.type == _CON:
            rtype, mid = _ACK, request.mid
        else:
            rtype, mid = _NON, self.exchange.next_mid()
        if code == _CREATED and not options:
            data = header(rtype, code, mid, token)
        else:
            data = build_response(
                rtype, mid, token, code, options=options, diagnostic=diagnostic, limit=request.size
            )
        if request.separate:
            self.exchange.send_confirmable(peer, mid, data, now)
            self.exchange.answered(request.key, empty(_ACK, request.mid))
        else:
            self._send(data, peer)
            self.exchange.answered(request.key, data)
        stats = self.stats
        key = _POST_KEYS.get(code)
        if key is None:
            key = _POST_KEYS[code] = (*_POST_EVENTS, _code_label(code))
        stats.requests[key] += 1
        stats.latency.observe(now - request.received)
        if self._access is not None:
            self._access(
                "request",
                extra={"peer": _source(peer), "mid": request.mid, "code": _code_label(code)},
            )

    def _reply(
        self,
        msg: coap.Message,
        peer: Peer,
        size: int,
        now: float,
        code: int,
        diagnostic: str = "",
        **response: Any,
    ) -> None:
        """Answer a decoded request at once (no store involved); `response` takes
        `_answer`'s options, payload and limit."""
        head = (msg.type, msg.mid, msg.token, peer, size, now)
        self._answer(head, code, diagnostic, label=_label(msg), **response)

    def _answer(
        self,
        head: Head,
        code: int,
        diagnostic: str = "",
        *,
        options: tuple[tuple[int, bytes], ...] = (),
        payload: bytes = b"",
        limit: int | None = -1,
        label: tuple[str, str] = _POST_EVENTS,
    ) -> None:
        """Answer at once (no store involved): piggybacked for CON, NON for NON.

        `head` is the request's (type, Message ID, token, peer, datagram size, arrival
        time); `label` its (method, path) for the requests metric."""
        mtype, request_mid, token, peer, size, now = head
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
        self._send(data, peer)
        self.exchange.remember((peer, request_mid), now, size, data)
        stats = self.stats
        stats.requests[(*label, _code_label(code))] += 1
        stats.latency.observe(0.0)
        if self._access is not None:
            self._access(
                "request",
                extra={"peer": _source(peer), "mid": request_mid, "code": _code_label(code)},
            )

    def _on_flushed(self, count: int, seconds: float) -> None:
        self.stats.batch_size.observe(float(count))
        self.stats.flush_seconds.observe(seconds)


def _label(msg: coap.Message) -> tuple[str, str]:
    """A decoded request's (method, path) for the requests metric: closed sets."""
    return (
        resources.METHOD_LABELS.get(msg.code, "other"),
        resources.PATH_LABELS.get(msg.uri_path, "other"),
    )


def _senml_defaults(msg: coap.Message) -> tuple[str, str]:
    """Sender and namespace for SenML events, from Uri-Query `sender=` / `namespace=`.

    SenML (RFC 8428) records carry no sender, so a device names itself in the query:
    `coap://collector/events?sender=dev-17`. Raises InvalidEvent for an empty or long one.
    """
    found = {"sender": "senml", "namespace": "default"}
    for number, value in msg.options:
        if number != _URI_QUERY:
            continue
        key, sep, text = value.decode("utf-8", "replace").partition("=")
        if key in found and sep:
            if not 0 < len(text) <= DEFAULT_LIMITS.max_string:
                raise InvalidEvent(f"?{key}: must be 1-{DEFAULT_LIMITS.max_string} characters")
            found[key] = text
    return found["sender"], found["namespace"]


def serve_forever(
    index: int, sock: socket.socket, config: Config, status: StatusBoard | None
) -> int:
    """Run one worker on a fresh uvloop loop (the worker process's main)."""
    # The dedup cache holds up to --dedup-capacity live entries; the cyclic GC would
    # walk them on every old-generation pass (measured: p99 at 4000 req/s 22-26 ms with
    # the default settings, 10-12 ms without). The hot path makes no cycles, so freeze
    # what start-up made and collect rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 1000)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = Worker(index, sock, config, status, metrics=bool(config.metrics_port))
        return loop.run_until_complete(worker.run())
    finally:
        loop.close()


__all__ = ["EXIT_OK", "EXIT_STORE_UNAVAILABLE", "Worker", "serve_forever"]
