"""Batched sends of pre-encoded requests: one sendmmsg(2) per device burst.

The generator's per-request cost is dominated by system calls, so requests go out
in bursts through ``sendmmsg`` on the device's connected socket (no address per
message: ``msg_name`` stays NULL). Every request of a process has the same length
(device names are fixed-width), so the send side is one preallocated arena of
``slots`` equal slots with their ``mmsghdr``/``iovec`` arrays wired once: staging a
request is one slice copy of the device's template into the next slot and a few
``pack_into`` patches, with no Python object per datagram. Receives use
:class:`collector.mmsg.DatagramBatch` (recvmmsg), the collector's own reader.

Where the calls are missing (not Linux) :func:`available` is False and the caller
falls back to one ``send`` per request.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from typing import Any

from collector.mmsg import Iovec, Mmsghdr

_MSG_DONTWAIT = 0x40
_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SENDMMSG = _load()


def available() -> bool:
    """True where :class:`Arena` works (Linux with sendmmsg in libc)."""
    return _SENDMMSG is not None


class Arena:
    """``slots`` staged datagrams of ``size`` bytes each, sent by :meth:`flush`.

    ``buf`` is the arena itself (a bytearray); slot ``i`` starts at ``i * size``.
    The caller writes a datagram into the next slot (``count``) and then calls
    :meth:`flush` with the socket's fd when the burst is done or the arena is full.
    """

    def __init__(self, size: int, slots: int = 64) -> None:
        if _SENDMMSG is None:
            raise RuntimeError("sendmmsg is not available here")
        if size < 1 or not 1 <= slots <= 1024:
            raise ValueError("size must be positive and slots 1-1024")
        self.size = size
        self.slots = slots
        self.buf = bytearray(size * slots)
        self._hdrs = (Mmsghdr * slots)()
        self._iovs = (Iovec * slots)()
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        for i in range(slots):
            self._iovs[i].iov_base = base + i * size
            self._iovs[i].iov_len = size
            self._hdrs[i].msg_hdr.msg_iov = ctypes.addressof(self._iovs[i])
            self._hdrs[i].msg_hdr.msg_iovlen = 1
        self._addr = ctypes.addressof(self._hdrs)
        self._hdr = ctypes.sizeof(Mmsghdr)

    def flush(self, fd: int, count: int) -> int:
        """Send slots ``0..count-1`` on connected socket ``fd``; return how many went.

        A full send buffer (EAGAIN, ENOBUFS) drops the rest and a refused datagram
        (ECONNREFUSED after an ICMP error) is skipped, as lost datagrams would be:
        the caller's retransmission timer or timeout accounts for them.
        """
        at = sent = 0
        while at < count:
            done = _SENDMMSG(fd, self._addr + at * self._hdr, count - at, _MSG_DONTWAIT)
            if done > 0:
                at += done
                sent += done
                continue
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in _FULL:
                break
            at += 1  # this one was refused: skip it, like a lost datagram
        return sent


__all__ = ["Arena", "available"]
