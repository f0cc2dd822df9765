"""Batched datagram I/O: `recvmmsg`/`sendmmsg` from libc through ctypes (Linux only).

A worker that reads its UDP socket with one `recvfrom` per datagram and answers with
one `sendto` per response pays the kernel's system-call entry and socket locking once
per datagram. `DatagramBatch` moves up to `slots` datagrams per system call in either
direction, and keeps the per-datagram Python work to a few slices and a dict lookup:

- Everything is preallocated once: the `mmsghdr` array, one `iovec` per slot, one
  `sockaddr` per slot and one receive buffer cut into `slots` slices of `slot_size`
  bytes. Per datagram there is no ctypes object: lengths are read and pointers written
  through `memoryview` casts over those arrays, and the receive buffer is an anonymous
  `mmap`, so slicing it yields `bytes` in one copy and pages the kernel never writes
  are never made resident.
- Peers repeat, so both address conversions are cached in bounded dicts (cleared when
  full): raw `sockaddr` bytes -> the tuple `socket.recvfrom` would return, and peer
  tuple -> raw `sockaddr`. A cache hit also hands back the same tuple object for the
  same peer, which makes the caller's own dict lookups on peers cheaper.
- Replies are sent in place, from their own `bytes` objects: in CPython a bytes
  object's data sits at id() plus a fixed header, which a probe at import checks
  (where it fails, `available()` is False). Up to `slots` go per system call.

Slot size versus truncation. Receiving into 64 KiB slots (what one `recvfrom(65536)`
does) would make the slots 64 KiB apart (4 MiB for 64 slots, and every slot's first
bytes competing for the same cache sets). Instead a slot holds `slot_size` bytes (the
default, 2048, covers RFC 7252 §4.6's 1152-byte message-size guidance with room to
spare) and a larger datagram is truncated by the kernel, but not silently: the call
passes MSG_TRUNC, with which Linux's UDP `recvmsg` reports the datagram's real length
in `msg_len`. Such a datagram is left out of `recv()`'s list and put in `oversized`
as (first `slot_size` bytes, peer, real length), so the caller can still answer it
(the collector: 4.13 with Size1, from the header and token in those first bytes). A
caller that must see every acceptable datagram whole sets `slot_size` to the largest
one it accepts (the collector: `max_body` plus room for header, token and options).

`available()` says whether this works here; where it does not (not Linux, or a libc
without the calls) the caller keeps `recvfrom`/`sendto`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import socket
import sys
from collections.abc import Iterable
from typing import Any

Peer = Any  # what socket.recvfrom returns: (host, port) or (host, port, flowinfo, scope_id)

DEFAULT_SLOTS = 64
DEFAULT_SLOT_SIZE = 2048
DEFAULT_CACHE_SIZE = 16384  # peers per conversion cache before it is cleared

# Plain ints: the socket module's constants are IntFlag members, and `|` on those
# runs enum code in Python on every call.
_MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
_RECV_FLAGS = _MSG_DONTWAIT | _MSG_TRUNC
_RETRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
_FATAL = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EFAULT})
_SOCKADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}
# The part of a sockaddr that identifies the peer: sockaddr_in's family, port and
# address (the rest is sin_zero); sockaddr_in6 whole (flowinfo and scope are in the
# tuple recvfrom returns).
_KEY_LEN = {socket.AF_INET: 8, socket.AF_INET6: 28}


# The C structures of recvmmsg/sendmmsg (Linux <sys/socket.h>, <bits/uio.h>), public
# so that the benchmark's generator batches its system calls the same way.
class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


_HDR = ctypes.sizeof(Mmsghdr)
_IOV = ctypes.sizeof(Iovec)


def _load() -> tuple[Any, Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_HDR_WORDS = _HDR // 8
# Where a `bytes` object's data starts, counted from id() (CPython: the object's
# address; the data follows the header, whose size getsizeof(b"") - 1 is). Sending
# from the reply objects in place saves a copy and two slice stores per datagram. It
# is an implementation detail, so it is proven on a probe before it is trusted.
_BYTES_DATA = sys.getsizeof(b"") - 1


def _bytes_in_place() -> bool:
    probe = b"recvmmsg/sendmmsg probe"
    try:
        return ctypes.string_at(id(probe) + _BYTES_DATA, len(probe)) == probe
    except Exception:
        return False


_CALLS = _load() if _bytes_in_place() and _HDR % 8 == 0 else None


def available() -> bool:
    """True where `DatagramBatch` works: Linux with a libc that has recvmmsg/sendmmsg."""
    return _CALLS is not None


def _u16be(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 2], "big")


def peer_from_sockaddr(raw: bytes) -> Peer:
    """The tuple `socket.recvfrom` returns for a raw sockaddr_in / sockaddr_in6.

    Raises ValueError for any other family.
    """
    family = int.from_bytes(raw[0:2], sys.byteorder)
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), _u16be(raw, 2))
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope_id = int.from_bytes(raw[24:28], sys.byteorder)
        port = _u16be(raw, 2)
        if scope_id:
            # CPython formats addresses with getnameinfo(NI_NUMERICHOST), which adds
            # "%<interface>" for a scoped address: ask it to, so the tuples match.
            flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
            host = socket.getnameinfo((host, port, 0, scope_id), flags)[0]
        return (host, port, flowinfo, scope_id)
    raise ValueError(f"unsupported address family {family}")


def sockaddr_from_peer(family: int, peer: Peer) -> bytes:
    """The raw sockaddr `socket.sendto` would use for `peer` on a `family` socket.

    Hosts must be numeric (an IPv6 one may carry a "%scope" suffix): unlike sendto this
    never resolves a name, since a DNS lookup has no place in an event loop's callback.
    Raises OSError (socket.gaierror), ValueError, TypeError or OverflowError for a
    peer it cannot convert.
    """
    host, port = peer[0], peer[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r}")
    if family == socket.AF_INET:
        if len(peer) != 2:
            raise ValueError("AF_INET address must be (host, port)")
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            resolved = socket.getaddrinfo(
                host, port, socket.AF_INET, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
            )
            packed = socket.inet_pton(socket.AF_INET, str(resolved[0][4][0]))
        return (
            socket.AF_INET.to_bytes(2, sys.byteorder) + port.to_bytes(2, "big") + packed + bytes(8)
        )
    if family == socket.AF_INET6:
        if not 2 <= len(peer) <= 4:
            raise ValueError("AF_INET6 address must be (host, port[, flowinfo[, scope_id]])")
        flowinfo = peer[2] if len(peer) > 2 else 0
        scope_id = peer[3] if len(peer) > 3 else 0
        if not 0 <= flowinfo <= 0xFFFFF:
            raise OverflowError("flowinfo must be 0-1048575")
        try:
            packed = socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            resolved = socket.getaddrinfo(
                host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
            )
            address: Any = resolved[0][4]
            packed = socket.inet_pton(socket.AF_INET6, str(address[0]).partition("%")[0])
            scope_id = scope_id or int(address[3])
        return (
            socket.AF_INET6.to_bytes(2, sys.byteorder)
            + port.to_bytes(2, "big")
            + flowinfo.to_bytes(4, "big")
            + packed
            + scope_id.to_bytes(4, sys.byteorder)
        )
    raise ValueError(f"unsupported address family {family}")


def _address(buffer: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class DatagramBatch:
    """Receive and send up to `slots` datagrams per system call on one UDP socket.

    `sock` must be an AF_INET or AF_INET6 datagram socket; the calls never block
    (MSG_DONTWAIT) whatever the socket's own mode. Raises RuntimeError where
    `available()` is False, ValueError for another kind of socket or bad sizes.
    """

    def __init__(
        self,
        sock: socket.socket,
        slots: int = DEFAULT_SLOTS,
        slot_size: int = DEFAULT_SLOT_SIZE,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if _CALLS is None:
            raise RuntimeError("recvmmsg/sendmmsg are not available here")
        if sock.family not in _SOCKADDR_LEN or sock.type != socket.SOCK_DGRAM:
            raise ValueError("DatagramBatch needs an AF_INET or AF_INET6 datagram socket")
        if not 1 <= slots <= 1024 or slot_size < 1 or cache_size < 1:
            raise ValueError("slots must be 1-1024; sizes must be positive")
        self.sock = sock
        self.family = sock.family
        self.slots = slots
        self.slot_size = slot_size
        self.cache_size = cache_size
        self.oversized: list[tuple[bytes, Peer, int]] = []
        self._recvmmsg, self._sendmmsg = _CALLS
        namelen = _SOCKADDR_LEN[self.family]
        self._keylen = _KEY_LEN[self.family]
        self._peers: dict[bytes, Peer] = {}
        self._sockaddrs: dict[Peer, bytes] = {}
        # Receive side: its own headers, iovecs and names; the kernel rewrites only
        # msg_len, msg_flags and msg_namelen (to the same value for one family).
        self._rdata = mmap.mmap(-1, slots * slot_size)
        self._rnames = mmap.mmap(-1, slots * namelen)
        self._rhdrs = bytearray(slots * _HDR)
        self._riovs = bytearray(slots * _IOV)
        self._rhdr_addr = self._wire(
            self._rhdrs, self._riovs, self._rnames, namelen, self._rdata, slot_size
        )
        msg_len = Mmsghdr.msg_len.offset // 4
        self._rlens = memoryview(self._rhdrs).cast("I")
        self._rslots = [
            (i * _HDR // 4 + msg_len, i * namelen, i * namelen + self._keylen, i * slot_size)
            for i in range(slots)
        ]
        # Send side: msg_name and iov_base point straight at the cached sockaddr and
        # at the reply (`bytes` objects, alive for the call), so staging a datagram is
        # three word stores; msg_namelen is the family's, set once.
        self._shdrs = bytearray(slots * _HDR)
        self._siovs = bytearray(slots * _IOV)
        self._shdr_addr = self._wire(self._shdrs, self._siovs, None, namelen, None, 0)
        self._shdr_words = memoryview(self._shdrs).cast("Q")
        self._siov_words = memoryview(self._siovs).cast("Q")

    @staticmethod
    def _wire(
        hdrs: bytearray,
        iovs: bytearray,
        names: Any,
        namelen: int,
        data: Any,
        slot_size: int,
    ) -> int:
        """Point every header at its iovec and name (and iovec at its data slot).

        `names` or `data` None leaves those pointers for the sender to set per message.
        """
        slots = len(hdrs) // _HDR
        # The buffers are never resized, so these addresses outlive the views.
        hdr_array = (Mmsghdr * slots).from_buffer(hdrs)
        iov_array = (Iovec * slots).from_buffer(iovs)
        iov_base = ctypes.addressof(iov_array)
        name_base = _address(names) if names is not None else 0
        data_base = _address(data) if data is not None else 0
        for i in range(slots):
            msg = hdr_array[i].msg_hdr
            msg.msg_name = name_base + i * namelen if names is not None else None
            msg.msg_namelen = namelen
            msg.msg_iov = iov_base + i * _IOV
            msg.msg_iovlen = 1
            if data is not None:
                iov_array[i].iov_base = data_base + i * slot_size
                iov_array[i].iov_len = slot_size
        return ctypes.addressof(hdr_array)

    # -- receive ---------------------------------------------------------------------------

    def recv(self) -> list[tuple[bytes, Peer]]:
        """Every datagram waiting (up to `slots`), as (data, peer) like `recvfrom`.

        Returns [] when none is waiting. A datagram longer than `slot_size` is not in
        the list: it is in `oversized` (reset by each call) as (its first `slot_size`
        bytes, peer, real length). Raises OSError for a socket error other than
        "would block" or "interrupted".
        """
        if self.oversized:
            self.oversized = []
        count = self._recvmmsg(self.sock.fileno(), self._rhdr_addr, self.slots, _RECV_FLAGS, None)
        if count <= 0:
            if count == 0:
                return []
            code = ctypes.get_errno()
            if code in _RETRY_LATER or code == errno.EINTR:
                return []
            raise OSError(code, errno.errorcode.get(code, "recvmmsg failed"))
        lens = self._rlens
        names = self._rnames
        data = self._rdata
        peers = self._peers
        slot_size = self.slot_size
        out: list[tuple[bytes, Peer]] = []
        append = out.append
        for len_at, name_at, name_end, data_at in self._rslots[:count]:
            size = lens[len_at]
            key = names[name_at:name_end]
            peer = peers.get(key)
            if peer is None:
                peer = self._new_peer(key, name_at)
            if size <= slot_size:
                append((data[data_at : data_at + size], peer))
            else:
                self.oversized.append((data[data_at : data_at + slot_size], peer, size))
        return out

    def _new_peer(self, key: bytes, name_at: int) -> Peer:
        peer = peer_from_sockaddr(self._rnames[name_at : name_at + _SOCKADDR_LEN[self.family]])
        if len(self._peers) >= self.cache_size:
            self._peers.clear()
        self._peers[key] = peer
        return peer

    # -- send ------------------------------------------------------------------------------

    def send(self, items: Iterable[tuple[bytes, Peer]]) -> int:
        """Send (data, peer) datagrams, `slots` per system call; returns how many went.

        Like `sendto` on a non-blocking UDP socket, nothing waits: when the socket's
        send buffer is full (EAGAIN/ENOBUFS) the rest are dropped, and a datagram the
        kernel refuses (unreachable network, too large) or whose peer sendto would
        refuse (or that names a host instead of an address) is skipped. Raises OSError only for a
        closed or non-socket fd.
        """
        sockaddrs = self._sockaddrs
        hdr_words = self._shdr_words
        iov_words = self._siov_words
        slots = self.slots
        keep: list[bytes] = []  # copies of non-bytes data, alive until the call returns
        sent = count = 0
        for data, peer in items:
            if count == slots:
                sent += self._flush(count)
                count = 0
            try:
                sockaddr = sockaddrs[peer]
            except (KeyError, TypeError):
                try:
                    sockaddr = sockaddr_from_peer(self.family, peer)
                except (OSError, ValueError, TypeError, OverflowError, IndexError):
                    continue  # sendto would have raised for this peer: skip it
                if len(sockaddrs) >= self.cache_size:
                    # Staged messages point into the cached values: send them before
                    # the cache lets go of those.
                    if count:
                        sent += self._flush(count)
                        count = 0
                    sockaddrs.clear()
                with contextlib.suppress(TypeError):  # an unhashable peer is not kept
                    sockaddrs[peer] = sockaddr
            if type(data) is not bytes:
                data = bytes(data)
                keep.append(data)
            hdr_words[count * _HDR_WORDS] = id(sockaddr) + _BYTES_DATA
            iov_words[count * 2] = id(data) + _BYTES_DATA
            iov_words[count * 2 + 1] = len(data)
            count += 1
        if count:
            sent += self._flush(count)
        return sent

    def _flush(self, count: int) -> int:
        fd = self.sock.fileno()
        start = sent = 0
        while start < count:
            done = self._sendmmsg(fd, self._shdr_addr + start * _HDR, count - start, _MSG_DONTWAIT)
            if done > 0:
                sent += done
                start += done
                continue
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in _RETRY_LATER:
                break  # send buffer full: UDP, the rest are dropped
            if code in _FATAL:
                raise OSError(code, errno.errorcode.get(code, "sendmmsg failed"))
            start += 1  # this datagram was refused (EMSGSIZE, ENETUNREACH, ...): skip it
        return sent


__all__ = [
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_SIZE",
    "DatagramBatch",
    "available",
    "peer_from_sockaddr",
    "sockaddr_from_peer",
]


def send_all(
    sock: socket.socket, batch: DatagramBatch | None, items: list[tuple[bytes, Peer]]
) -> None:
    """Send every (datagram, peer): through `batch` (sendmmsg) when there is one, else
    one sendto each. UDP: a datagram the kernel refuses (a full send buffer, an
    unreachable peer) is dropped, and the peer retransmits."""
    if batch is not None:
        try:
            batch.send(items)
        except OSError:
            pass
        return
    send = sock.sendto
    for data, peer in items:
        try:
            send(data, peer)
        except OSError:
            pass
