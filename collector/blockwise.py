"""Block-wise request bodies (RFC 7959 §2.5, Block1, atomic): reassembly, bounded.

Standard clients (libcoap, aiocoap) send a body larger than about 1 KiB in Block1
blocks: each block is its own exchange, answered 2.31 Continue until the last, whose
answer is the request's answer. This pure object (no clock, no I/O) keeps the partial
bodies, keyed by peer and path, and hands back the whole body with the last block.

Bounds: a body may not exceed `max_body` (4.13 with Size1, §2.9.3), blocks must come
in order from block 0 (4.08 Request Entity Incomplete otherwise, §2.9.2), at most
`capacity` transfers are open at once (the oldest is forgotten first) and a transfer
idle for `lifetime` seconds is dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import coap

DEFAULT_CAPACITY = 1024  # open transfers per worker
DEFAULT_LIFETIME = 60.0  # seconds a transfer may wait for its next block


class BlockError(Exception):
    """A block that cannot be taken; `code` is the response code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Transfer:
    __slots__ = ("content_format", "parts", "size", "touched")

    def __init__(self, content_format: int | None, now: float) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.content_format = content_format
        self.touched = now


class Reassembly:
    def __init__(
        self,
        max_body: int,
        *,
        capacity: int = DEFAULT_CAPACITY,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.max_body = max_body
        self.capacity = capacity
        self.lifetime = lifetime
        self._open: OrderedDict[Any, _Transfer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def feed(
        self, key: Any, block: coap.Block, payload: bytes, content_format: int | None, now: float
    ) -> tuple[bytes, int | None] | None:
        """Take one block. Returns None while more are due, else (body, content format).

        Raises BlockError: 4.13 past max_body, 4.08 out of order, 4.00 a short block
        that claims more follow.
        """
        self.expire(now)
        if block.more and len(payload) != block.size:
            raise BlockError(coap.Code.BAD_REQUEST, f"block {block.num} is not {block.size} bytes")
        if block.num == 0:
            transfer = _Transfer(content_format, now)
            self._open.pop(key, None)
            if len(self._open) >= self.capacity:
                self._open.popitem(last=False)
            self._open[key] = transfer
        else:
            found = self._open.get(key)
            if found is None or block.offset != found.size:
                self._open.pop(key, None)
                raise BlockError(
                    coap.Code.REQUEST_ENTITY_INCOMPLETE, f"block {block.num} out of order"
                )
            transfer = found
            transfer.touched = now
            self._open.move_to_end(key)
        transfer.size += len(payload)
        if transfer.size > self.max_body:
            self._open.pop(key, None)
            raise BlockError(coap.Code.REQUEST_ENTITY_TOO_LARGE, f"body over {self.max_body} bytes")
        transfer.parts.append(payload)
        if block.more:
            return None
        del self._open[key]
        fmt = content_format if content_format is not None else transfer.content_format
        return b"".join(transfer.parts), fmt

    def expire(self, now: float) -> None:
        horizon = now - self.lifetime
        while self._open:
            transfer = next(iter(self._open.values()))
            if transfer.touched > horizon:
                return
            self._open.popitem(last=False)
