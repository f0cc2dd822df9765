"""An asyncio CoAP client endpoint: one UDP socket, many concurrent requests.

Strategy. The codec (:mod:`coap`) turns messages into bytes; this module adds the
message layer of RFC 7252 §4 for a client talking to one server:

* **Identifiers.** Message IDs and tokens come from per-endpoint counters that
  start at a random value and increment (§4.4: "a randomized initial value";
  §5.3.1: tokens must be unique among the endpoint's outstanding requests). A
  4-byte token counter cannot repeat before 2**32 requests. A Message ID is
  never reused within EXCHANGE_LIFETIME (:class:`MessageIds`): past 65536
  requests in that time, a request waits for its ID instead.
* **Reliability.** A CON request is retransmitted after ACK_TIMEOUT x a random
  factor in [1, ACK_RANDOM_FACTOR], the timeout doubling each time, at most
  MAX_RETRANSMIT times (§4.2, §4.8). An empty ACK stops retransmission; the
  answer then comes as a separate response (§5.2.2), which we ACK when it is
  CON. A RST ends the exchange (§4.2). NON requests are sent once (§4.3).
* **Matching.** A piggybacked response must carry the request's Message ID and
  token; a separate response is matched by token only (§5.3.2). A CON response
  seen before (same Message ID within EXCHANGE_LIFETIME) is acknowledged again
  but delivered only once (§4.5); an unknown one is rejected with RST.
* **Deadline.** Each request has one overall deadline, by default
  MAX_TRANSMIT_WAIT (§4.8.2): the time after which a sender gives up on a CON.

* **Block-wise** (RFC 7959). A body over ``BLOCK1_THRESHOLD`` bytes goes in
  1024-byte Block1 blocks (RFC 7252 §4.6 asks to keep datagrams within about 1152
  bytes; a server may well drop a larger one silently), the first with Size1; a
  smaller block size asked for in a 2.31 answer is followed (§2.5). While several
  such uploads are in flight on one endpoint, each carries its own Request-Tag
  (RFC 9175 §3), so the server keeps their bodies apart; a server that ignores the
  (elective) option and answers 4.08 to overlapping uploads gets that body again
  alone, and one upload at a time from then on. A response carrying Block2
  is fetched to its end, for any method (§2.4, §3.3).
* **Refusal.** On a connected socket the kernel reports an ICMP port unreachable as
  ECONNREFUSED. With ``refused_is_final`` (one-shot commands) that ends every
  outstanding request at once with :class:`ConnectionRefused`; otherwise (a fleet
  simulation across a server restart) retransmission goes on.

Each endpoint uses a connected UDP socket, so the kernel drops datagrams from any
other peer and each endpoint has its own source port (the simulator relies on it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Final, cast

import coap
from coap import Code, Message, OptionNumber, Type
from coap.codes import is_response, is_success
from coap.transmission import TransmissionParameters

__all__ = [
    "BLOCK1_THRESHOLD",
    "BlockwiseError",
    "ClientEndpoint",
    "ConnectionRefused",
    "EndpointClosed",
    "ExchangeReset",
    "MessageIds",
    "RequestError",
    "RequestTimeout",
    "Response",
]

_TOKEN_BYTES: Final = 4
#: Blocks a GET follows at most (64 KiB at the largest block size): a bound, not a
#: protocol limit, so that a misbehaving server cannot keep the client forever.
MAX_BLOCKS: Final = 64
#: Bodies larger than this go block-wise (Block1), in blocks of ``16 << BLOCK1_SZX``.
BLOCK1_THRESHOLD: Final = 1024
BLOCK1_SZX: Final = 6
#: RFC 9175 §3.2: Request-Tag, elective, repeatable, opaque 0-8 bytes.
REQUEST_TAG: Final = 292


class RequestError(Exception):
    """A request ended without a response."""


class RequestTimeout(RequestError):
    """No response before the deadline."""


class ExchangeReset(RequestError):
    """The server answered the request with RST (§4.2, §4.3)."""


class ConnectionRefused(RequestError):
    """The kernel reported the server's port closed (ICMP port unreachable)."""


class EndpointClosed(RequestError):
    """The endpoint was closed while the request was outstanding."""


class BlockwiseError(RequestError):
    """A block-wise response could not be reassembled."""


def _read_block(raw: bytes, name: str = "Block2") -> coap.Block:
    try:
        return coap.Block.decode(raw)
    except coap.CoapError as exc:
        raise BlockwiseError(f"bad {name} option: {exc}") from None


class MessageIds:
    """Message IDs in sequence from a random start, never reused within ``lifetime``.

    §4.4: "The same Message ID MUST NOT be reused (in the communication with the
    same endpoint) within the EXCHANGE_LIFETIME". A server deduplicates on (peer,
    Message ID), so a client that wraps its 16-bit space faster than that (about
    265 requests/s sustained with the default parameters) would have new requests
    answered from the server's cache and never stored. :meth:`allocate` therefore
    returns, with each ID, the earliest time it may be sent.

    Pure and clock-free: the caller passes ``now``. Memory is one gate per block
    of ``2 ** block_bits`` IDs: when the sequence enters a block again after a
    wrap, the whole block waits until ``lifetime`` after the block's last send in
    the previous round (conservative: no ID of the block was sent later than that).
    """

    def __init__(self, start: int, lifetime: float, *, bits: int = 16, block_bits: int = 10):
        self.space = 1 << bits
        self._next = start % self.space
        self._lifetime = lifetime
        self._shift = min(block_bits, bits)
        blocks = self.space >> self._shift
        self._round = 0
        self._block_round = [-1] * blocks  # the round in which the block was last entered
        self._block_gate = [0.0] * blocks  # this round's earliest send time for the block
        self._block_last = [-math.inf] * blocks  # the block's latest send time

    def allocate(self, now: float, in_use: Container[int] = ()) -> tuple[int, float]:
        """The next ID not in ``in_use`` and the earliest time (>= now) to send it.

        Raises RuntimeError when every ID is in use.
        """
        for _ in range(self.space):
            mid = self._next
            current = self._round
            self._next = (mid + 1) % self.space
            if self._next == 0:
                self._round += 1
            if mid not in in_use:
                break
        else:
            raise RuntimeError("every Message ID is in use")
        block = mid >> self._shift
        if self._block_round[block] != current:
            self._block_round[block] = current
            self._block_gate[block] = max(now, self._block_last[block] + self._lifetime)
        ready = max(now, self._block_gate[block])
        self._block_last[block] = max(self._block_last[block], ready)
        return mid, ready


@dataclass(frozen=True, slots=True)
class Response:
    """A response and how it came: ``separate`` when after an empty ACK or as its
    own message; ``transmissions`` counts copies of the request sent."""

    message: Message
    rtt: float
    transmissions: int
    separate: bool

    @property
    def code(self) -> int:
        return self.message.code

    @property
    def code_str(self) -> str:
        return coap.code_str(self.message.code)


@dataclass(slots=True)
class _Exchange:
    token: bytes
    mid: int
    datagram: bytes
    confirmable: bool
    future: asyncio.Future[Response]
    started: float
    next_timeout: float
    transmissions: int = 1
    acked: bool = False
    retransmit_timer: asyncio.TimerHandle | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    notes: list[str] = field(default_factory=list)


class ClientEndpoint(asyncio.DatagramProtocol):
    """A CoAP client bound to one server address. Use :meth:`connect`."""

    def __init__(
        self,
        params: TransmissionParameters | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.params = params or TransmissionParameters()
        self._rng = rng or random.Random()
        self._mids = MessageIds(self._rng.randrange(0x10000), self.params.exchange_lifetime)
        self._token = self._rng.randrange(1 << (8 * _TOKEN_BYTES))
        self._by_token: dict[bytes, _Exchange] = {}
        self._by_mid: dict[int, _Exchange] = {}
        # Message IDs of CON responses already delivered, oldest first: mid -> time.
        self._seen_con: OrderedDict[int, float] = OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False
        self.last_error: OSError | None = None
        self.retransmissions = 0
        #: Whether ECONNREFUSED ends every outstanding request (see the module text).
        self.refused_is_final = False
        #: How the server is named in messages ("HOST:PORT"), set by connect().
        self.server = ""
        self._upload_tags: set[bytes] = set()  # Request-Tags of uploads in flight
        self._next_tag = 0
        # A server that ignores Request-Tag (an elective option: RFC 7959-only servers
        # do) mixes concurrent uploads and answers 4.08; from then on this endpoint
        # uploads one body at a time (see _upload).
        self._serial_uploads = False
        self._uploads_begun = 0  # uploads started, for "was another one in flight"
        self._upload_lock: asyncio.Lock | None = None
        self._no_uploads: asyncio.Event | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        params: TransmissionParameters | None = None,
        rng: random.Random | None = None,
    ) -> ClientEndpoint:
        """An endpoint with its own UDP socket connected to ``host:port``.

        Raises OSError (socket.gaierror for a name that does not resolve).
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise socket.gaierror(f"no address for {host}")
        family, _, _, _, address = infos[0]
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: cls(params, rng=rng),
            remote_addr=(str(address[0]), int(address[1])),
            family=family,
        )
        endpoint.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return endpoint

    # -- asyncio.DatagramProtocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(EndpointClosed("endpoint closed"))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while the server restarts, for example) are
        # not final: retransmission goes on and the timeout message names the error.
        if isinstance(exc, OSError):
            self.last_error = exc
            if self.refused_is_final and isinstance(exc, ConnectionRefusedError):
                where = self.server or "the server"
                self._fail_all(
                    ConnectionRefused(f"no CoAP server at {where}/udp (connection refused)")
                )

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            msg = coap.decode(data)
        except coap.MessageFormatError as exc:
            # §4.2: a malformed CON is rejected with RST; anything else is dropped.
            if exc.type == Type.CON and exc.mid is not None:
                self._send_empty(Type.RST, exc.mid)
            return
        if msg.code == Code.EMPTY:
            self._on_empty(msg)
        elif is_response(msg.code):
            self._on_response(msg)
        elif msg.type == Type.CON:
            self._send_empty(Type.RST, msg.mid)  # we serve no resources

    # -- public ------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        sockname = self._transport.get_extra_info("sockname")
        return (sockname[0], sockname[1]) if sockname else None

    @property
    def outstanding(self) -> int:
        return len(self._by_token)

    async def request(
        self,
        code: int,
        path: str,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        confirmable: bool = True,
        timeout: float | None = None,
        options: tuple[tuple[int, bytes], ...] = (),
        max_blocks: int = MAX_BLOCKS,
    ) -> Response:
        """Send one request and wait for its response, block-wise where needed.

        A payload over BLOCK1_THRESHOLD bytes goes in Block1 blocks; a response with
        Block2 is followed to its end and returned whole (the last block's message
        with the whole body). ``timeout`` is the deadline of each message exchange
        in seconds (default MAX_TRANSMIT_WAIT). Raises RequestTimeout,
        ExchangeReset, ConnectionRefused, EndpointClosed, and BlockwiseError when
        the blocks of an answer do not line up.
        """
        kwargs: dict[str, Any] = {
            "content_format": content_format,
            "accept": accept,
            "confirmable": confirmable,
            "timeout": timeout,
        }
        if len(payload) > BLOCK1_THRESHOLD:
            response = await self._upload(code, path, payload, options, kwargs)
        else:
            response = await self._request_once(
                code, path, payload=payload, options=options, **kwargs
            )
        if response.message.option(OptionNumber.BLOCK2) is None or not is_success(response.code):
            return response
        return await self._download(code, path, response, options, kwargs, max_blocks)

    async def get(
        self,
        path: str,
        *,
        confirmable: bool = True,
        timeout: float | None = None,
        max_blocks: int = MAX_BLOCKS,
    ) -> Response:
        """GET ``path``, following a block-wise (RFC 7959 §2.4) response to its end."""
        return await self.request(
            Code.GET, path, confirmable=confirmable, timeout=timeout, max_blocks=max_blocks
        )

    async def _upload(
        self,
        code: int,
        path: str,
        payload: bytes,
        options: tuple[tuple[int, bytes], ...],
        kwargs: dict[str, Any],
    ) -> Response:
        """A block-wise upload, concurrent with others (Request-Tag) until the server
        shows it cannot keep them apart: a 4.08 on an upload that overlapped another
        is sent again alone (4.08 means nothing was processed), and every later
        upload on this endpoint waits for the one before."""
        if self._upload_lock is None or self._no_uploads is None:
            self._upload_lock, self._no_uploads = asyncio.Lock(), asyncio.Event()
            self._no_uploads.set()
        if self._serial_uploads:
            return await self._upload_alone(code, path, payload, options, kwargs)
        overlapped = bool(self._upload_tags)
        begun = self._uploads_begun = self._uploads_begun + 1
        self._no_uploads.clear()
        try:
            response = await self._upload_blocks(code, path, payload, options, kwargs)
        finally:
            if not self._upload_tags:
                self._no_uploads.set()
        overlapped = overlapped or self._uploads_begun != begun
        if response.code != Code.REQUEST_ENTITY_INCOMPLETE or not overlapped:
            return response
        self._serial_uploads = True
        return await self._upload_alone(code, path, payload, options, kwargs)

    async def _upload_alone(
        self,
        code: int,
        path: str,
        payload: bytes,
        options: tuple[tuple[int, bytes], ...],
        kwargs: dict[str, Any],
    ) -> Response:
        assert self._upload_lock is not None and self._no_uploads is not None
        async with self._upload_lock:
            await self._no_uploads.wait()  # uploads begun before the switch finish first
            return await self._upload_blocks(code, path, payload, options, kwargs)

    async def _upload_blocks(
        self,
        code: int,
        path: str,
        payload: bytes,
        options: tuple[tuple[int, bytes], ...],
        kwargs: dict[str, Any],
    ) -> Response:
        """RFC 7959 §2.3 Block1: the body in blocks, each answered 2.31 but the last.

        Any other answer to a block (4.13 with Size1, 4.08, 5.03 …) ends the upload
        and is the request's answer. Size1 on the first block tells the whole size
        (§4), so a server can refuse a body it cannot take before it arrives.
        """
        tag = self._take_tag()
        extra = options + (((REQUEST_TAG, tag),) if tag else ())
        szx, offset, num, transmissions = BLOCK1_SZX, 0, 0, 0
        try:
            while True:
                size = 16 << szx
                chunk = payload[offset : offset + size]
                more = offset + size < len(payload)
                block_opts = (*extra, (OptionNumber.BLOCK1, coap.Block(num, more, szx).encode()))
                if num == 0:
                    block_opts += ((OptionNumber.SIZE1, coap.encode_uint(len(payload))),)
                response = await self._request_once(
                    code, path, payload=chunk, options=block_opts, **kwargs
                )
                transmissions += response.transmissions
                if not more or response.code != Code.CONTINUE:
                    return dataclasses.replace(response, transmissions=transmissions)
                echoed = response.message.option(OptionNumber.BLOCK1)
                asked = _read_block(echoed, "Block1") if echoed is not None else None
                offset += size
                if asked is not None and asked.szx < szx:
                    szx = asked.szx  # §2.5: the server wants smaller blocks from now on
                num = offset // (16 << szx)
        finally:
            self._upload_tags.discard(tag)

    def _take_tag(self) -> bytes:
        """A Request-Tag no upload in flight uses: none (b"") while it is the only one."""
        tag = b""
        while tag in self._upload_tags:
            self._next_tag = (self._next_tag + 1) % (1 << 32)
            tag = self._next_tag.to_bytes(4, "big")
        self._upload_tags.add(tag)
        return tag

    async def _download(
        self,
        code: int,
        path: str,
        response: Response,
        options: tuple[tuple[int, bytes], ...],
        kwargs: dict[str, Any],
        max_blocks: int,
    ) -> Response:
        """RFC 7959 §2.4/§3.3 Block2: ask for the following blocks with the same method
        and no payload, until one says no more; the body is put back together."""
        block = _read_block(response.message.option(OptionNumber.BLOCK2) or b"", "Block2")
        if block.num != 0:
            raise BlockwiseError(f"the first block of {path} is number {block.num}")
        etag = response.message.option(OptionNumber.ETAG)
        body = bytearray(response.message.payload)
        transmissions = response.transmissions
        kwargs = dict(kwargs, content_format=None)
        while block.more:
            if block.num + 1 >= max_blocks:
                raise BlockwiseError(f"{path} is longer than {max_blocks} blocks")
            following = coap.Block(block.num + 1, False, block.szx)
            response = await self._request_once(
                code,
                path,
                options=(*options, (OptionNumber.BLOCK2, following.encode())),
                **kwargs,
            )
            transmissions += response.transmissions
            raw = response.message.option(OptionNumber.BLOCK2)
            if not is_success(response.code) or raw is None:
                return response  # an error answer midway is the answer
            block = _read_block(raw, "Block2")
            if block.num != following.num:
                raise BlockwiseError(f"asked for block {following.num}, got {block.num}")
            if response.message.option(OptionNumber.ETAG) != etag:
                raise BlockwiseError(f"{path} changed during the block-wise transfer")
            body += response.message.payload
        return Response(
            message=dataclasses.replace(response.message, payload=bytes(body)),
            rtt=response.rtt,
            transmissions=transmissions,
            separate=response.separate,
        )

    async def _request_once(
        self,
        code: int,
        path: str,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        confirmable: bool = True,
        timeout: float | None = None,
        options: tuple[tuple[int, bytes], ...] = (),
    ) -> Response:
        """Send one message and wait for its response (no block-wise handling)."""
        if self._closed or self._transport is None:
            raise EndpointClosed("endpoint closed")
        opts = list(coap.path_to_options(path)) + list(options)
        if content_format is not None:
            opts.append((OptionNumber.CONTENT_FORMAT, coap.encode_uint(content_format)))
        if accept is not None:
            opts.append((OptionNumber.ACCEPT, coap.encode_uint(accept)))
        opts.sort(key=lambda item: item[0])  # stable: repeated options keep their order
        started = time.monotonic()
        token = self._next_token()
        mid, ready = self._mids.allocate(started, self._by_mid)
        if ready > started:
            # Only after 65536 requests within EXCHANGE_LIFETIME (see MessageIds).
            await asyncio.sleep(ready - started)
            if self._closed or self._transport is None:
                raise EndpointClosed("endpoint closed")
        msg = Message(
            type=Type.CON if confirmable else Type.NON,
            code=code,
            mid=mid,
            token=token,
            options=tuple(opts),
            payload=payload,
        )
        datagram = coap.encode(msg)
        loop = asyncio.get_running_loop()
        params = self.params
        exchange = _Exchange(
            token=token,
            mid=mid,
            datagram=datagram,
            confirmable=confirmable,
            future=loop.create_future(),
            started=started,
            next_timeout=params.ack_timeout * self._rng.uniform(1.0, params.ack_random_factor),
        )
        self._by_token[token] = exchange
        self._by_mid[mid] = exchange
        deadline = params.max_transmit_wait if timeout is None else timeout
        exchange.deadline_timer = loop.call_later(deadline, self._on_deadline, exchange, deadline)
        if confirmable:
            exchange.retransmit_timer = loop.call_later(
                exchange.next_timeout, self._retransmit, exchange
            )
        self._transport.sendto(datagram)
        try:
            return await exchange.future
        finally:
            # Cancellation by the caller must not leave timers behind.
            self._forget(exchange)

    def close(self) -> None:
        """Close the socket; outstanding requests fail with EndpointClosed."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(EndpointClosed("endpoint closed"))
        if self._transport is not None:
            self._transport.close()

    # -- internals ---------------------------------------------------------------

    def _next_token(self) -> bytes:
        while True:
            self._token = (self._token + 1) % (1 << (8 * _TOKEN_BYTES))
            token = self._token.to_bytes(_TOKEN_BYTES, "big")
            if token not in self._by_token:
                return token

    def _send_empty(self, type: Type, mid: int) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(coap.encode(Message(type=type, code=Code.EMPTY, mid=mid)))

    def _retransmit(self, exchange: _Exchange) -> None:
        exchange.retransmit_timer = None
        if exchange.future.done() or exchange.acked or self._transport is None:
            return
        if exchange.transmissions - 1 >= self.params.max_retransmit:
            # §4.2: after MAX_RETRANSMIT retransmissions and one more timeout, give up.
            self._fail(
                exchange,
                RequestTimeout(self._timeout_text(exchange, time.monotonic() - exchange.started)),
            )
            return
        exchange.transmissions += 1
        self.retransmissions += 1
        self._transport.sendto(exchange.datagram)
        exchange.next_timeout *= 2
        exchange.retransmit_timer = asyncio.get_running_loop().call_later(
            exchange.next_timeout, self._retransmit, exchange
        )

    def _on_deadline(self, exchange: _Exchange, deadline: float) -> None:
        exchange.deadline_timer = None
        if not exchange.future.done():
            self._fail(exchange, RequestTimeout(self._timeout_text(exchange, deadline)))

    def _timeout_text(self, exchange: _Exchange, waited: float) -> str:
        what = "no response" if exchange.acked else "no answer"
        if exchange.acked:
            what += " after the empty ACK"
        text = f"{what} within {waited:.3g} s ({exchange.transmissions} transmissions)"
        if self.last_error is not None and not exchange.acked:
            text += f"; last error: {self.last_error.strerror or self.last_error}"
        return text

    def _on_empty(self, msg: Message) -> None:
        if msg.type == Type.ACK:
            exchange = self._by_mid.get(msg.mid)
            if exchange is not None and exchange.confirmable and not exchange.acked:
                # §5.2.2: the server will answer separately; stop retransmitting.
                exchange.acked = True
                if exchange.retransmit_timer is not None:
                    exchange.retransmit_timer.cancel()
                    exchange.retransmit_timer = None
        elif msg.type == Type.RST:
            exchange = self._by_mid.get(msg.mid)
            if exchange is not None:
                self._fail(exchange, ExchangeReset("the server answered with RST"))
        elif msg.type == Type.CON:
            self._send_empty(Type.RST, msg.mid)  # §4.3 CoAP ping: answer with RST

    def _on_response(self, msg: Message) -> None:
        if msg.type == Type.ACK:
            exchange = self._by_mid.get(msg.mid)
            if exchange is not None and exchange.token == msg.token:
                self._complete(exchange, msg, separate=False)
            return
        if msg.type == Type.CON:
            now = time.monotonic()
            self._prune_seen(now)
            if msg.mid in self._seen_con:
                self._send_empty(Type.ACK, msg.mid)  # duplicate: ACK again, deliver once
                return
            exchange = self._by_token.get(msg.token)
            if exchange is None:
                self._send_empty(Type.RST, msg.mid)  # §5.3.2: unknown token, reject
                return
            self._seen_con[msg.mid] = now
            self._send_empty(Type.ACK, msg.mid)
            self._complete(exchange, msg, separate=True)
            return
        if msg.type == Type.NON:
            exchange = self._by_token.get(msg.token)
            if exchange is not None:
                self._complete(exchange, msg, separate=True)

    def _prune_seen(self, now: float) -> None:
        horizon = now - self.params.exchange_lifetime
        while self._seen_con:
            mid, seen = next(iter(self._seen_con.items()))
            if seen >= horizon:
                break
            del self._seen_con[mid]

    def _complete(self, exchange: _Exchange, msg: Message, *, separate: bool) -> None:
        if not exchange.future.done():
            exchange.future.set_result(
                Response(
                    message=msg,
                    rtt=time.monotonic() - exchange.started,
                    transmissions=exchange.transmissions,
                    separate=separate,
                )
            )
        self._forget(exchange)

    def _fail(self, exchange: _Exchange, error: RequestError) -> None:
        if not exchange.future.done():
            exchange.future.set_exception(error)
        self._forget(exchange)

    def _forget(self, exchange: _Exchange) -> None:
        for timer in (exchange.retransmit_timer, exchange.deadline_timer):
            if timer is not None:
                timer.cancel()
        exchange.retransmit_timer = exchange.deadline_timer = None
        if self._by_token.get(exchange.token) is exchange:
            del self._by_token[exchange.token]
        if self._by_mid.get(exchange.mid) is exchange:
            del self._by_mid[exchange.mid]

    def _fail_all(self, error: RequestError) -> None:
        for exchange in list(self._by_token.values()):
            self._fail(exchange, error)
