"""Block1/Block2 option values (RFC 7959 §2.2).

The value is a uint ``NUM << 4 | M << 3 | SZX``; the block size is
``2 ** (SZX + 4)`` (16 to 1024 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import BadRequest
from .options import decode_uint, encode_uint

__all__ = ["Block"]

#: RFC 7959 §2.2: NUM is at most 20 bits (a 3-byte option value).
MAX_BLOCK_NUM = (1 << 20) - 1
#: RFC 7959 §2.2: "The value 7 for SZX ... is reserved, i.e., MUST NOT be sent and
#: MUST lead to a 4.00 Bad Request response code upon reception in a request."
MAX_SZX = 6


@dataclass(frozen=True, slots=True)
class Block:
    """One Block1/Block2 value: block number, more flag, size exponent."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        """Block size in bytes: 2 ** (SZX + 4)."""
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        """Byte offset of this block in the whole body: NUM * size."""
        return self.num << (self.szx + 4)

    def encode(self) -> bytes:
        """The option value. Raises ValueError for NUM or SZX out of range."""
        if not 0 <= self.num <= MAX_BLOCK_NUM:
            raise ValueError(f"block number {self.num} is not 0-{MAX_BLOCK_NUM}")
        if not 0 <= self.szx <= MAX_SZX:
            raise ValueError(f"SZX {self.szx} is not 0-{MAX_SZX}")
        return encode_uint((self.num << 4) | (8 if self.more else 0) | self.szx)

    @classmethod
    def decode(cls, value: bytes) -> Block:
        """Read an option value. Raises :class:`coap.BadRequest` (4.00) for a value
        longer than 3 bytes or the reserved SZX 7."""
        if len(value) > 3:
            raise BadRequest(f"block option value of {len(value)} bytes (at most 3)")
        n = decode_uint(value)
        szx = n & 7
        if szx > MAX_SZX:
            raise BadRequest("block option with reserved SZX 7")
        return cls(n >> 4, bool(n & 8), szx)

    @classmethod
    def for_size(cls, num: int, more: bool, size: int) -> Block:
        """A Block for a power-of-two ``size`` of 16-1024 bytes. Raises ValueError otherwise."""
        if size < 16 or size > 1024 or size & (size - 1):
            raise ValueError(f"block size {size} is not a power of two in 16-1024")
        return cls(num, more, size.bit_length() - 5)
