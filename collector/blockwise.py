"""Block-wise transfers (RFC 7959): Block1 request bodies in, Block2 responses out.

Block1 (§2.5, atomic). Standard clients (libcoap, aiocoap) send a body larger than
about 1 KiB in blocks: each block is its own exchange, answered 2.31 Continue until
the last, whose answer is the request's answer. `Reassembly` keeps the partial bodies
and hands back the whole body with the last block. Transfers are kept apart by
endpoint, path and Request-Tag (RFC 9175 §3.3: two uploads from one endpoint with
different Request-Tags are different operations, and a client runs them side by side
exactly that way), as the libcoap and aiocoap servers do. A body is never assembled
from blocks of two transfers: a block that does not continue its own transfer at the
next offset ends that transfer with 4.08.

Bounds, each a defence against one host taking the state all devices share: a body
may not exceed `max_body` (4.13 with Size1, §2.9.3); blocks come in order from block
0 (4.08 Request Entity Incomplete otherwise, §2.9.2); one endpoint keeps at most
`per_endpoint` transfers open (its oldest goes first); the worker keeps at most
`capacity`, shared fairly by source (`collector.fairness`: when full, the source with
the most open transfers loses its oldest), so one host opening a thousand transfers
never evicts another device's; a transfer not finished within `lifetime` seconds of
its first block is dropped.

Block2 (§2.4): `block2` cuts a response payload to the block the client asked for, at
the client's size or smaller, or to 1024-byte blocks when the payload is larger than
that and the client did not ask.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import coap
from collector.errors import RequestError
from collector.fairness import FairTable

DEFAULT_CAPACITY = 1024  # open Block1 transfers per worker
DEFAULT_PER_ENDPOINT = 8  # open Block1 transfers per endpoint (address and port)
DEFAULT_LIFETIME = 120.0  # seconds from a transfer's first block to its last
#: RFC 7959 §2.2: SZX 6 = 1024 bytes, the largest block; a response payload above it
#: goes block-wise even when the client did not ask (RFC 7252 §4.6: stay within
#: about 1152 bytes per message).
MAX_BLOCK_SIZE = 1024

_INCOMPLETE = coap.Code.REQUEST_ENTITY_INCOMPLETE


class BlockError(RequestError):
    """A block that cannot be taken (the code says which answer)."""


class _Transfer:
    __slots__ = ("content_format", "parts", "size")

    def __init__(self, content_format: int | None) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.content_format = content_format


# (endpoint, path, Request-Tag values: None when absent, RFC 9175 §3.2)
TransferKey = tuple[Any, tuple[str, ...], tuple[bytes, ...] | None]


class Reassembly:
    """Open Block1 transfers of one core; see the module docstring."""

    def __init__(
        self,
        max_body: int,
        *,
        capacity: int = DEFAULT_CAPACITY,
        per_endpoint: int = DEFAULT_PER_ENDPOINT,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.max_body = max_body
        self.per_endpoint = per_endpoint
        self.lifetime = lifetime
        # key -> (owner, arrival time, transfer)
        self._open: FairTable[TransferKey, tuple[Hashable, float, _Transfer]] = FairTable(capacity)
        self._endpoints: dict[Any, list[TransferKey]] = {}  # endpoint -> its open keys

    def __len__(self) -> int:
        return len(self._open)

    def feed(
        self,
        key: TransferKey,
        owner: Hashable,
        block: coap.Block,
        payload: bytes,
        content_format: int | None,
        now: float,
    ) -> tuple[bytes, int | None] | None:
        """Take one block of the transfer `key` = (endpoint, path, Request-Tag), charged
        to `owner` (the source address or identity). Returns None while more are due,
        else (body, content format).

        Raises BlockError: 4.13 past max_body, 4.08 out of order or of a forgotten
        transfer, 4.00 a short block that claims more follow.
        """
        self.expire(now)
        if block.more and len(payload) != block.size:
            raise BlockError(f"block {block.num} is not {block.size} bytes")
        if block.num == 0:
            self._drop(key)
            transfer = _Transfer(content_format)
            self._admit(key, owner, now, transfer)
        else:
            entry = self._open.get(key)
            if entry is None or block.offset != entry[2].size:
                self._drop(key)
                raise BlockError(f"block {block.num} out of order", code=_INCOMPLETE)
            transfer = entry[2]
        transfer.size += len(payload)
        if transfer.size > self.max_body:
            self._drop(key)
            raise BlockError(
                f"body over {self.max_body} bytes",
                code=coap.Code.REQUEST_ENTITY_TOO_LARGE,
                options=((int(coap.OptionNumber.SIZE1), coap.encode_uint(self.max_body)),),
            )
        transfer.parts.append(payload)
        if block.more:
            return None
        self._drop(key)
        fmt = content_format if content_format is not None else transfer.content_format
        return b"".join(transfer.parts), fmt

    def _admit(self, key: TransferKey, owner: Hashable, now: float, transfer: _Transfer) -> None:
        endpoint = key[0]
        keys = self._endpoints.get(endpoint)
        if keys is None:
            keys = self._endpoints[endpoint] = []
        while len(keys) >= self.per_endpoint:
            self._drop(keys[0])  # the endpoint's oldest transfer goes first
        evicted = self._open.put(key, (owner, now, transfer))
        if evicted is not None:
            self._forget(evicted)
        keys.append(key)

    def _drop(self, key: TransferKey) -> None:
        if self._open.pop(key) is not None:
            self._forget(key)

    def _forget(self, key: TransferKey) -> None:
        keys = self._endpoints.get(key[0])
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._endpoints[key[0]]

    def expire(self, now: float) -> None:
        horizon = now - self.lifetime
        while True:
            oldest = self._open.oldest()
            if oldest is None or oldest[1][1] > horizon:
                return
            self._drop(oldest[0])


def block2(
    payload: bytes, requested: coap.Block | None, *, size2: bool = False
) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
    """The part of a response `payload` to send and the Block2 (and Size2) options
    to add (RFC 7959 §2.4).

    With no Block2 in the request, a payload of at most MAX_BLOCK_SIZE bytes goes whole
    (no options); a larger one goes as block 0 of 1024 bytes. With one, the block it
    names goes, at its size. `size2`: the client asked for the total size (a Size2
    option in the request, §4), sent with block 0. Raises BlockError 4.02 for a block
    past the end.
    """
    if requested is None:
        if len(payload) <= MAX_BLOCK_SIZE:
            return payload, ()
        requested = coap.Block(0, False, 6)
    size = requested.size
    start = requested.offset
    if start and start >= len(payload):
        raise BlockError(
            f"block {requested.num} is past the end ({len(payload)} bytes)",
            code=coap.Code.BAD_OPTION,
        )
    chunk = payload[start : start + size]
    more = start + size < len(payload)
    options: tuple[tuple[int, bytes], ...] = (
        (int(coap.OptionNumber.BLOCK2), coap.Block(requested.num, more, requested.szx).encode()),
    )
    if size2 and requested.num == 0:
        options += ((int(coap.OptionNumber.SIZE2), coap.encode_uint(len(payload))),)
    return chunk, options
