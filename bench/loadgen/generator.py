"""The send/receive loops (open and closed loop) and the processes that run them.

Strategy: batch the system calls, keep Python's per-request work to a few stores.
Each generator process owns a share of the devices, one connected non-blocking UDP
socket per device (its own source port and Message ID space). Requests go out in
device bursts through one ``sendmmsg`` (:mod:`loadgen.batch`); responses come in
through ``recvmmsg`` (:class:`collector.mmsg.DatagramBatch`), one call per readable
socket. What a request costs in Python is one template copy and three patches on
the way out, one header read, a byte-array store and a histogram increment on the
way back; there is no per-request timer or dict entry.

Open loop (``window == 0``): request ``i`` of the run is due at ``start + i / rate``
whatever the server does (:mod:`loadgen.schedule`); process ``p`` sends ``i % procs
== p``. Its k-th request goes to device ``(k // burst) % ndev``, so consecutive due
requests share a socket and leave in one ``sendmmsg``. The token is ``k`` itself, so a
response gives k back without a lookup, and k gives the scheduled time: latency runs
from the schedule (no coordinated omission). Per-request state is one byte of a
``bytearray`` (unsent, pending, acknowledged-empty, answered, given up), so the
retransmission and timeout sweeps are ``find``/``count`` calls over ranges that
became due, done in C: a CON still pending ACK_TIMEOUT after its schedule gets a
randomised RFC 7252 §4.2 timer (ACK_TIMEOUT x [1, ACK_RANDOM_FACTOR], doubling, at
most MAX_RETRANSMIT times) in a heap that only ever holds the rare unanswered ones.
The send lag of a burst is its oldest request's, counted for every request of the
burst (an upper bound).

Closed loop (``window > 0``, the *max* measurement): every device keeps ``window``
requests outstanding and sends a new one for each answer, so the rate is whatever
the server sustains. A request unanswered after ``timeout`` counts as lost and is
replaced.

Both loops record answers per 100 ms (the timeline a stall shows in) and the
process's own CPU time and run-queue wait (``/proc/self/schedstat``), so the report
can say whether the generator, rather than the server, was the limit.

Engines: these loops are also written in C (``engine.c`` through
:mod:`loadgen.cengine`), rule for rule, for when the interpreter's per-request cost
is the ceiling; ``LoadSpec.engine`` picks one (``auto``: C where it can run). Both
return :func:`raw_result`'s dict, so the report cannot tell them apart but by its
``engine`` field.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import multiprocessing as mp
import os
import random
import resource
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from collector import mmsg

from . import batch, cengine, dtls, wire
from .histogram import _EXACT, _HALF, N_BUCKETS, SUB_BITS, LogHistogram
from .schedule import Schedule

# progress counters per process, in a shared array of doubles
_SENT, _ANSWERED, _OK, _TIMEOUTS, _RETRANS, _LAG, _NFIELDS = range(7)

MAX_SEQ_PER_DEVICE = 60_000  # stay clear of a 16-bit MID wrap within one run
TIMELINE_HZ = 10  # answers are counted per 1/TIMELINE_HZ s
_SWEEP_S = 0.002  # how often the open loop sweeps retransmission and timeout ranges
# Open loop: a wait shorter than this is slept without watching the sockets, and the
# answers that came meanwhile are read in one go. An answer's time is then when it was
# read, up to this much after it arrived (0.5 ms against a 25 ms p99 bound), but a busy
# generator stops paying a wake-up (select, epoll, recvmmsg) per answer.
_WATCH_S = 0.0005

# request states of the open loop (one byte each)
_UNSENT, _PENDING, _EMPTY_ACKED, _ANSWERED_STATE, _GIVEN_UP = range(5)
_EXPIRE = bytes(_GIVEN_UP if b in (_PENDING, _EMPTY_ACKED) else b for b in range(256))


@dataclass(frozen=True)
class LoadSpec:
    """One run against one address: open loop at ``rate``, or closed with ``window``."""

    host: str
    port: int
    rate: float
    duration: float
    warmup: float = 1.0
    devices: int = 256
    fmt: str = "json"
    events: int = 1
    non: bool = False
    timeout: float = 5.0
    procs: int = 1
    path: str = "/events"
    bind: str = ""  # source address; "" picks a fresh 127.x.y.z for loopback targets
    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    tick: float = 0.0002  # shortest wait: coalesces wake-ups, adding at most this send lag
    window: int = 0  # >0: closed loop, this many requests outstanding per device
    burst: int = 16  # open loop: consecutive requests per device (one sendmmsg)
    cpus: tuple[int, ...] = ()  # CPUs the generator processes are pinned to (none: any)
    # coaps: with an identity, every device socket opens its own DTLS 1.2 PSK session
    # before the run starts, and requests and answers travel in its records
    psk_identity: str = ""
    psk_key: bytes = field(default=b"", repr=False)
    # a handshake-rate run instead of a load: ``window`` fresh sessions at a time per
    # process, each closed once open, for ``duration`` s (loadgen.dtls.handshake_share)
    handshakes: bool = False
    # the loops' engine: "python" (this module), "c" (loadgen.cengine), "auto" (C where
    # it can run, see cengine.choose)
    engine: str = "auto"

    @property
    def dtls(self) -> bool:
        return bool(self.psk_identity)

    @property
    def total(self) -> int:
        return math.floor((self.warmup + self.duration) * self.rate + 1e-9)

    @property
    def first_measured(self) -> int:
        """Global index of the first request after the warm-up."""
        return math.ceil(self.warmup * self.rate - 1e-9)


def min_devices(spec: LoadSpec) -> int:
    """Devices needed so that no device reuses a Message ID within an open-loop run."""
    if spec.window:
        return 1
    return max(1, math.ceil(spec.total / MAX_SEQ_PER_DEVICE))


def pick_bind_address(host: str) -> str:
    """A fresh loopback source address per run, so reused ephemeral ports never meet
    the server's dedup cache of an earlier run; other targets bind the wildcard."""
    if host.startswith("127."):
        return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    return ""


def _set_timer_slack() -> None:
    """Ask for 1 us timer slack (default 50 us) so short waits wake on time."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, nanoseconds
    except (OSError, AttributeError):
        pass


def _schedstat() -> tuple[float, float]:
    """(seconds on CPU, seconds waiting for a CPU) of this process so far."""
    try:
        with open("/proc/self/schedstat") as f:
            on, wait = f.read().split()[:2]
        return int(on) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


class _Devices:
    """One process's device sockets, their templates, and the batched I/O on them."""

    def __init__(self, spec: LoadSpec, index: int) -> None:
        procs = spec.procs
        self.ids = [d for d in range(spec.devices) if d % procs == index]
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        self.socks: list[socket.socket] = []
        for _ in self.ids:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            if spec.bind:
                s.bind((spec.bind, 0))
            s.connect((spec.host, spec.port))
            s.setblocking(False)
            self.socks.append(s)
        # over DTLS the session names the sender (an authenticated device need not)
        self.links: list[dtls.Link] | None = None
        if spec.dtls:
            psk = dtls.Psk(spec.psk_identity, spec.psk_key)
            self.links = dtls.handshake_all(self.socks, psk, max(5.0, spec.timeout))
        nonce = random.getrandbits(16)
        templates = [
            wire.build_template(
                spec.fmt,
                wire.origin_name(d),
                spec.events,
                (nonce << 16) | (d & 0xFFFF),
                spec.path,
                con=not spec.non,
                sender=None if spec.dtls else wire.SENDER,
            )
            for d in self.ids
        ]
        self.templates = templates
        self.size = len(templates[0].buf)
        if any(len(t.buf) != self.size for t in templates):
            raise ValueError("device templates differ in length")
        self.stagers = [t.stager() for t in templates]
        self.fds = [s.fileno() for s in self.socks]
        self.mid_base = [random.getrandbits(16) for _ in self.ids]
        self.ep = select.epoll()
        self.fd2dev: dict[int, int] = {}
        for i, fd in enumerate(self.fds):
            self.ep.register(fd, select.EPOLLIN)
            self.fd2dev[fd] = i
        self.batched = batch.available() and mmsg.available()
        self.arena: batch.Arena | None = None
        self.readers: list[Callable[[], list[tuple[bytes, Any]]]] = []
        self.batches: list[mmsg.DatagramBatch] = []
        if self.batched:
            self.batches = [mmsg.DatagramBatch(s, 64, 512) for s in self.socks]
            self.readers = [b.recv for b in self.batches]
            if self.links is None:  # over DTLS the records are sent from their own bytes
                self.arena = batch.Arena(self.size, 64)
        else:
            self.readers = [self._reader(s) for s in self.socks]
        if self.links is not None:
            self.readers = [ln.reader(r) for ln, r in zip(self.links, self.readers, strict=True)]
        self.peer = self.socks[0].getpeername() if self.socks else None
        self.scratch = bytearray(self.size * 64)

    @staticmethod
    def _reader(sock: socket.socket) -> Callable[[], list[tuple[bytes, Any]]]:
        def read() -> list[tuple[bytes, Any]]:
            out = []
            for _ in range(64):
                try:
                    out.append((sock.recv(2048), None))
                except BlockingIOError:
                    break
            return out

        return read

    def flush(self, dev: int, count: int) -> int:
        """Send the ``count`` datagrams staged in the arena (or scratch) from ``dev``."""
        if self.arena is not None:
            return self.arena.flush(self.fds[dev], count)
        size = self.size
        staged = memoryview(self.scratch)
        if self.links is not None:
            seal = self.links[dev].seal
            records = [seal(staged[i * size : (i + 1) * size]) for i in range(count)]
            if self.batches:
                peer = self.peer
                return self.batches[dev].send([(r, peer) for r in records])
            return sum(self._send(dev, r) for r in records)
        return sum(self._send(dev, staged[i * size : (i + 1) * size]) for i in range(count))

    def _send(self, dev: int, data: bytes | memoryview) -> int:
        try:
            self.socks[dev].send(data)
        except OSError:
            return 0
        return 1

    def send_raw(self, dev: int, data: bytes | bytearray | memoryview) -> bool:
        """Send one CoAP datagram from ``dev`` now (in a record of its session over DTLS)."""
        if self.links is not None:
            data = self.links[dev].seal(data)
        return bool(self._send(dev, data))  # type: ignore[arg-type]

    def dtls_errors(self) -> int:
        return sum(ln.errors for ln in self.links) if self.links is not None else 0

    @property
    def buf(self) -> bytearray:
        return self.arena.buf if self.arena is not None else self.scratch

    def send_one(self, dev: int, mid: int, token: int, uniq: int) -> bool:
        """Send one request at once (retransmissions; never on the arena's slots)."""
        self.stagers[dev](self.scratch, 0, mid, token, uniq)
        return self.send_raw(dev, memoryview(self.scratch)[: self.size])

    def close(self) -> None:
        self.ep.close()
        for s in self.socks:
            s.close()


class _Tally:
    """Histograms and counters of one process's run, filled by the loops."""

    def __init__(self) -> None:
        self.lat = [0] * N_BUCKETS
        self.lag = [0] * N_BUCKETS
        self.lat_max = 0
        self.lat_min = 1 << 62
        self.lag_max = 0
        self.codes = [0] * 257  # index 256: RST


def _bucket(v: int) -> int:
    if v < _EXACT:
        return v if v > 0 else 0
    e = v.bit_length() - SUB_BITS
    return _EXACT + ((e - 1) << (SUB_BITS - 1)) + (v >> e) - _HALF


def _histogram(counts: list[int], vmin: int | None, vmax: int) -> dict[str, object]:
    h = LogHistogram()
    h.counts = counts
    h.total = sum(counts)
    h.max = vmax
    h.min = vmin if h.total else None
    return h.to_dict()


def run_share(
    spec: LoadSpec,
    index: int,
    start: float | None = None,
    progress: Any = None,
    ready: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Run process ``index``'s share of ``spec``; return its raw result.

    ``ready`` is called once the sockets are open and returns the common start time
    (a ``time.monotonic()`` value); else ``start`` (or now + 50 ms) is used.
    ``progress`` is a shared array of doubles updated every 50 ms.
    """
    _set_timer_slack()
    if spec.cpus:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, {spec.cpus[index % len(spec.cpus)]})
    if spec.handshakes:
        begin = ready() if ready is not None else start or time.monotonic() + 0.05

        def publish(done: int) -> None:
            _publish(progress, index, (done, done, done, 0, 0))

        return dtls.handshake_share(spec, index, begin, publish)
    loop = _closed_loop if spec.window else _open_loop
    if cengine.choose(spec) == "c":
        loop = cengine.closed_loop if spec.window else cengine.open_loop
    devs = _Devices(spec, index)
    try:
        if ready is not None:
            start = ready()
        elif start is None:
            start = time.monotonic() + 0.05
        return loop(spec, index, start, progress, devs)
    finally:
        devs.close()


def _publish(progress: Any, index: int, values: tuple[float, ...]) -> None:
    if progress is not None:
        base = index * _NFIELDS
        for i, v in enumerate(values):
            progress[base + i] = v


def _open_loop(
    spec: LoadSpec, index: int, start: float, progress: Any, devs: _Devices
) -> dict[str, Any]:
    procs = spec.procs
    ndev = len(devs.ids)
    sched = Schedule(start, spec.rate, spec.total, index, procs)
    count = sched.count
    rate = sched.rate
    # this process's k-th request is due at t0 + k * per
    t0 = start + index / rate
    per = procs / rate
    k_warm = max(0, math.ceil((spec.first_measured - index) / procs))
    burst = max(1, spec.burst)
    size = devs.size
    slots = 64
    buf = devs.buf
    stagers = devs.stagers
    mid_base = devs.mid_base
    sent_by_dev = [0] * ndev
    flush = devs.flush
    readers = devs.readers
    fd2dev = devs.fd2dev
    poll = devs.ep.poll
    epfd = [devs.ep.fileno()]
    sel = select.select
    sleep = time.sleep
    mono = time.monotonic
    tick = spec.tick
    timeout = spec.timeout
    con = not spec.non
    ack_timeout = spec.ack_timeout
    spread = spec.ack_random_factor - 1.0
    max_retransmit = spec.max_retransmit
    rnd = random.random
    heappush, heappop = heapq.heappush, heapq.heappop

    state = bytearray(count)
    t = _Tally()
    lat_counts, lag_counts, codes = t.lat, t.lag, t.codes
    lat_max, lat_min, lag_max = 0, 1 << 62, 0
    span = spec.warmup + spec.duration + timeout + 2.0
    timeline = [0] * (int(span * TIMELINE_HZ) + 2)
    tl_last = len(timeline) - 1
    rtx: list[tuple[float, int, int, float]] = []  # (deadline, k, transmissions, rto)

    k = 0  # next request to send
    kr = 0  # next request whose first retransmission timer is checked
    kt = 0  # next request whose timeout is checked
    sent_measured = answered = ok = timeouts = retrans = 0
    send_errors = icmp_errors = late = separate = rsts = stale = 0
    first_send = last_send = last_answer = 0.0
    next_sweep = 0.0
    next_progress = 0.0
    hard_end = sched.time_of(count - 1) + timeout + 0.5 if count else start

    def k_of_mid(dev: int, mid: int) -> int:
        # the device's most recent request whose MID matches (empty ACK, RST)
        n = sent_by_dev[dev]
        if n == 0:
            return -1
        seq = n - 1 - ((mid_base[dev] + n - 1 - mid) & 0xFFFF)
        if seq < 0:
            return -1
        return ((seq // burst) * ndev + dev) * burst + seq % burst

    meter = _Meter()
    while True:
        now = mono()
        # 1. send everything that is due, a device burst per sendmmsg
        i_due = math.floor((now - start) * rate + 1e-6)
        due = 0 if i_due < index else min(count, (i_due - index) // procs + 1)
        if k < due:
            lag = int((now - (t0 + k * per)) * 1e6)
            if lag < 0:
                lag = 0
            k_first = k
            while k < due:
                block = k // burst
                dev = block % ndev
                end = (block + 1) * burst
                if end > due:
                    end = due
                if end - k > slots:
                    end = k + slots
                seq = (block // ndev) * burst + k % burst
                base = mid_base[dev] + seq
                stage = stagers[dev]
                at = 0
                for kk in range(k, end):
                    stage(buf, at, (base + kk - k) & 0xFFFF, kk, kk)
                    at += size
                n = end - k
                send_errors += n - flush(dev, n)
                sent_by_dev[dev] += n
                k = end
            state[k_first:k] = b"\x01" * (k - k_first)
            measured = k - (k_warm if k_first < k_warm else k_first)
            if measured > 0:
                lag_counts[_bucket(lag)] += measured
                if lag > lag_max:
                    lag_max = lag
                if sent_measured == 0:
                    first_send = now
                sent_measured += measured
                last_send = now

        if now >= next_sweep:
            next_sweep = now + _SWEEP_S
            # 2. first retransmission timers: requests still pending ACK_TIMEOUT after
            # their schedule get a randomised timer (most were answered long before)
            if con:
                lim = min(k, math.floor((now - ack_timeout - t0) / per) + 1)
                while kr < lim:
                    j = state.find(_PENDING, kr, lim)
                    if j < 0:
                        break
                    rto = ack_timeout * (1.0 + spread * rnd())
                    heappush(rtx, (t0 + j * per + rto, j, 1, rto))
                    kr = j + 1
                if kr < lim:
                    kr = lim
            # 3. give up on requests older than the timeout (from their schedule)
            lim = min(k, math.floor((now - timeout - t0) / per) + 1)
            if lim > kt:
                seg = state[kt:lim]
                lost = seg.count(_PENDING) + seg.count(_EMPTY_ACKED)
                if lost:
                    if kt < k_warm:
                        warm = state[kt : min(lim, k_warm)]
                        lost -= warm.count(_PENDING) + warm.count(_EMPTY_ACKED)
                    timeouts += lost
                    state[kt:lim] = seg.translate(_EXPIRE)
                kt = lim
            if progress is not None and now >= next_progress:
                _publish(progress, index, (sent_measured, answered, ok, timeouts, retrans))
                progress[index * _NFIELDS + _LAG] = lag_max / 1e3
                next_progress = now + 0.05
            if kt >= count or now > hard_end:
                break
            if k >= count and state.find(_PENDING, kt) < 0 and state.find(_EMPTY_ACKED, kt) < 0:
                break

        # 4. retransmit expired CONs (same MID and token: the server dedups them)
        while rtx and rtx[0][0] <= now:
            _, j, tx, rto = heappop(rtx)
            if state[j] != _PENDING or tx > max_retransmit:
                continue
            block = j // burst
            dev = block % ndev
            seq = (block // ndev) * burst + j % burst
            if not devs.send_one(dev, (mid_base[dev] + seq) & 0xFFFF, j, j):
                send_errors += 1
            retrans += 1
            heappush(rtx, (now + rto * (1 << tx), j, tx + 1, rto))

        # 5. wait for responses or the next due time
        wait = t0 + k * per - now if k < count else 0.01
        if rtx and rtx[0][0] - now < wait:
            wait = rtx[0][0] - now
        if wait > 0.01:
            wait = 0.01
        elif 0 < wait < tick:
            wait = tick
        if wait >= 0.002:
            events = poll(math.floor(wait * 1000.0) / 1000.0)
        elif wait >= _WATCH_S:
            r, _, _ = sel(epfd, [], [], wait)
            if not r:
                continue
            events = poll(0)
        else:
            # a short wait (a high rate): sleep it out without watching the sockets, then
            # read everything that came meanwhile, rather than waking for every answer
            if wait > 0:
                sleep(wait)
            events = poll(0)
        for fd, _ev in events:
            dev = fd2dev[fd]
            try:
                got = readers[dev]()
            except OSError:
                icmp_errors += 1  # ICMP port unreachable: nobody listens (yet)
                continue
            if not got:
                continue
            now = mono()
            slot = int((now - start) * TIMELINE_HZ)
            timeline[slot if 0 <= slot < tl_last else tl_last] += len(got)
            lat_base = now - t0
            for data, _peer in got:
                if len(data) < 4:
                    stale += 1
                    continue
                b0 = data[0]
                code = data[1]
                if code == 0:
                    j = k_of_mid(dev, (data[2] << 8) | data[3])
                    if b0 & 0x30 == 0x20:  # empty ACK: a separate response follows
                        if 0 <= j < count and state[j] == _PENDING:
                            state[j] = _EMPTY_ACKED
                        continue
                    if b0 & 0x30 != 0x30:
                        stale += 1
                        continue
                    rsts += 1
                    code = 256
                else:
                    if b0 & 0x30 == 0:
                        # a separate CON response: ACK it (again, if our ACK was lost)
                        separate += 1
                        devs.send_raw(dev, wire.empty_ack((data[2] << 8) | data[3]))
                    if b0 & 0x0F != wire.TOKEN_LEN or len(data) < 8:
                        stale += 1
                        continue
                    j = int.from_bytes(data[4:8], "big")
                if j < 0 or j >= count:
                    stale += 1
                    continue
                s = state[j]
                if s != _PENDING and s != _EMPTY_ACKED:
                    late += 1  # answer to a retransmission, or after the timeout
                    continue
                state[j] = _ANSWERED_STATE
                if j < k_warm:
                    continue
                answered += 1
                codes[code] += 1
                if 64 <= code < 96:
                    ok += 1
                lat = int((lat_base - j * per) * 1e6)
                if lat < _EXACT:
                    lat_counts[lat if lat > 0 else 0] += 1
                else:
                    e = lat.bit_length() - SUB_BITS
                    lat_counts[_EXACT + ((e - 1) << (SUB_BITS - 1)) + (lat >> e) - _HALF] += 1
                if lat > lat_max:
                    lat_max = lat
                if lat < lat_min:
                    lat_min = lat
            last_answer = now

    used = meter.read()
    timeouts += state.count(_PENDING, k_warm) + state.count(_EMPTY_ACKED, k_warm)
    _publish(progress, index, (sent_measured, answered, ok, timeouts, retrans))
    counts = {
        "measured_from": start + spec.first_measured / spec.rate,
        "sent": sent_measured,
        "sent_total": k,
        "answered": answered,
        "ok": ok,
        "timeouts": timeouts,
        "retransmissions": retrans,
        "send_errors": send_errors,
        "icmp_errors": icmp_errors,
        "late_responses": late,
        "separate_responses": separate,
        "rst": rsts,
        "stale": stale,
        "first_send": first_send,
        "last_send": last_send,
        "last_answer": last_answer,
    }
    latency = _histogram(lat_counts, lat_min, lat_max)
    lag = _histogram(lag_counts, 0, lag_max)
    return raw_result("open", index, devs, start, counts, codes, used, timeline, latency, lag)


class _Meter:
    """This process's CPU time, run-queue wait and wall time from its creation on."""

    def __init__(self) -> None:
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.sch0 = _schedstat()
        self.wall0 = time.monotonic()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall0
        sch1 = _schedstat()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        ru0 = self.ru0
        return {
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "runq_wait_s": sch1[1] - self.sch0[1],
            "wall_s": wall,
        }


def raw_result(
    mode: str,
    index: int,
    devs: _Devices,
    start: float,
    counts: dict[str, Any],
    codes: Sequence[int],
    used: dict[str, float],
    timeline: list[int],
    latency: dict[str, object],
    lag: dict[str, object],
    engine: str = "python",
) -> dict[str, Any]:
    """One process's raw result, the same for every loop and engine: ``counts`` (the
    counters and times of :mod:`loadgen.report`'s merge), ``codes`` per code byte
    (index 256: RST), ``used`` from :class:`_Meter`, the timeline and histograms."""
    return {
        "mode": mode,
        "index": index,
        "devices": len(devs.ids),
        "start": start,
        **counts,
        "codes": _codes(codes),
        **used,
        "batched": devs.batched,
        "dtls": devs.links is not None,
        "dtls_errors": devs.dtls_errors(),
        "engine": engine,
        "timeline_hz": TIMELINE_HZ,
        "timeline": timeline,
        "latency": latency,
        "lag": lag,
    }


def _codes(codes: Sequence[int]) -> dict[str, int]:
    return {("RST" if c == 256 else wire.code_str(c)): n for c, n in enumerate(codes) if n}


def _closed_loop(
    spec: LoadSpec, index: int, start: float, progress: Any, devs: _Devices
) -> dict[str, Any]:
    ndev = len(devs.ids)
    window = spec.window
    size = devs.size
    buf = devs.buf
    stagers = devs.stagers
    mid_base = devs.mid_base
    flush = devs.flush
    readers = devs.readers
    fd2dev = devs.fd2dev
    poll = devs.ep.poll
    mono = time.monotonic
    timeout = spec.timeout
    measure_from = start + spec.warmup
    end_at = measure_from + spec.duration
    next_seq = [0] * ndev
    outstanding: dict[int, float] = {}  # token (device << 16 | seq) -> send time
    t = _Tally()
    lat_counts, codes = t.lat, t.codes
    lat_max, lat_min = 0, 1 << 62
    timeline = [0] * (int((spec.warmup + spec.duration + 1.0) * TIMELINE_HZ) + 2)
    tl_last = len(timeline) - 1
    sent = sent_measured = answered = lost = send_errors = icmp_errors = 0
    late = stale = separate = rsts = exhausted = 0

    def refill(dev: int, n: int, now: float) -> int:
        seq = next_seq[dev]
        n = min(n, MAX_SEQ_PER_DEVICE - seq, 64)
        if n <= 0:
            return 0
        stage = stagers[dev]
        base = mid_base[dev]
        tok = dev << 16
        at = 0
        for s in range(seq, seq + n):
            stage(buf, at, (base + s) & 0xFFFF, tok | s, s)
            outstanding[tok | s] = now
            at += size
        next_seq[dev] = seq + n
        return flush(dev, n)

    while mono() < start:
        time.sleep(min(0.01, max(0.0, start - mono())))
    meter = _Meter()
    now = mono()
    for dev in range(ndev):
        sent += refill(dev, window, now)
    next_sweep = now + 0.05
    next_progress = now
    while True:
        now = mono()
        if now >= end_at:
            break
        if now >= next_sweep:
            next_sweep = now + 0.05
            old = [tok for tok, ts in outstanding.items() if now - ts > timeout]
            for tok in old:
                del outstanding[tok]
                if now >= measure_from:
                    lost += 1
                got_dev = tok >> 16
                sent += refill(got_dev, 1, now)
            if next_seq and min(next_seq) >= MAX_SEQ_PER_DEVICE and not outstanding:
                exhausted = 1
                break
            if progress is not None and now >= next_progress:
                _publish(progress, index, (sent_measured, answered, answered, lost, 0))
                next_progress = now + 0.05
        for fd, _ev in poll(min(0.01, end_at - now)):
            dev = fd2dev[fd]
            try:
                got = readers[dev]()
            except OSError:
                icmp_errors += 1
                continue
            if not got:
                continue
            now = mono()
            slot = int((now - start) * TIMELINE_HZ)
            timeline[slot if 0 <= slot < tl_last else tl_last] += len(got)
            measuring = now >= measure_from
            freed = 0
            for data, _peer in got:
                if len(data) < 8 or data[0] & 0x0F != wire.TOKEN_LEN:
                    if len(data) >= 4 and data[1] == 0 and data[0] & 0x30 == 0x30:
                        rsts += 1  # a RST names no token: its slot frees at the timeout
                    elif len(data) < 4 or data[1] != 0:
                        stale += 1
                    continue
                b0 = data[0]
                if b0 & 0x30 == 0:
                    separate += 1
                    devs.send_raw(dev, wire.empty_ack((data[2] << 8) | data[3]))
                ts = outstanding.pop(int.from_bytes(data[4:8], "big"), None)
                if ts is None:
                    late += 1
                    continue
                freed += 1
                if not measuring:
                    continue
                answered += 1
                codes[data[1]] += 1
                lat = int((now - ts) * 1e6)
                if lat < _EXACT:
                    lat_counts[lat if lat > 0 else 0] += 1
                else:
                    e = lat.bit_length() - SUB_BITS
                    lat_counts[_EXACT + ((e - 1) << (SUB_BITS - 1)) + (lat >> e) - _HALF] += 1
                if lat > lat_max:
                    lat_max = lat
                if lat < lat_min:
                    lat_min = lat
            if freed:
                n = refill(dev, freed, now)
                send_errors += freed - n if n < freed else 0
                sent += n
                if measuring:
                    sent_measured += n
    used = meter.read()
    ok = sum(codes[64:96])
    _publish(progress, index, (sent_measured, answered, ok, lost, 0))
    counts = {
        "window": window,
        "measured_from": measure_from,
        "sent": sent_measured,
        "sent_total": sent,
        "answered": answered,
        "ok": ok,
        "timeouts": lost,
        "retransmissions": 0,
        "send_errors": send_errors,
        "icmp_errors": icmp_errors,
        "late_responses": late,
        "separate_responses": separate,
        "rst": rsts,
        "stale": stale,
        "exhausted": exhausted,
        "first_send": measure_from,
        "last_send": min(end_at, mono()),
        "last_answer": end_at,
    }
    latency = _histogram(lat_counts, lat_min, lat_max)
    lag = _histogram([0] * N_BUCKETS, None, 0)
    return raw_result("closed", index, devs, start, counts, codes, used, timeline, latency, lag)


def _child(spec: LoadSpec, index: int, progress: Any, conn: Connection) -> None:
    try:

        def ready() -> float:
            conn.send(("ready", index))
            msg = conn.recv()
            return float(msg[1])

        result = run_share(spec, index, progress=progress, ready=ready)
        conn.send(("result", result))
    except BaseException as exc:  # report, never a silent hang in the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class GeneratorError(RuntimeError):
    """A generator process failed; the message says why."""


def _progress_line(label: str, phase: str, rates: list[float], tot: list[float]) -> str:
    return (
        f"{label:>16} {phase:>7} | sent {rates[_SENT]:7.0f}/s ok {rates[_OK]:7.0f}/s"
        f" | timeouts {tot[_TIMEOUTS]:.0f} retrans {tot[_RETRANS]:.0f}"
        f" | send lag max {tot[_LAG]:.1f} ms"
    )


def run_load(
    spec: LoadSpec,
    label: str = "",
    show_progress: bool = True,
    stream: Any = None,
    *,
    on_ready: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``spec`` in ``spec.procs`` processes; return their raw results.

    ``on_ready`` is called once every process has opened its sockets (and DTLS
    sessions), just before the common start time is sent: what a caller measures from
    there leaves the set-up out.
    Prints a one-line progress display every second on ``stream`` (stderr).
    Raises GeneratorError if a process fails or hangs.
    """
    stream = stream if stream is not None else sys.stderr
    if not spec.bind:
        spec = LoadSpec(**{**asdict(spec), "bind": pick_bind_address(spec.host)})
    try:  # chosen (and the C engine compiled) once, before the processes fork
        spec = LoadSpec(**{**asdict(spec), "engine": cengine.choose(spec)})
    except ValueError as exc:
        raise GeneratorError(str(exc)) from None
    ctx = mp.get_context("fork")
    progress = ctx.RawArray("d", spec.procs * _NFIELDS)
    children = []
    for i in range(spec.procs):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_child, args=(spec, i, progress, child_end), daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    tty = stream.isatty()
    try:
        for _p, conn in children:
            if not conn.poll(30):
                raise GeneratorError("a generator process did not get ready in 30 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise GeneratorError(f"generator process failed: {msg[1]}")
        if on_ready is not None:
            on_ready()
        start = time.monotonic() + 0.05
        for _, conn in children:
            conn.send(("start", start))
        results: list[dict[str, Any]] = [{} for _ in children]
        remaining = set(range(len(children)))
        deadline = start + spec.warmup + spec.duration + spec.timeout + 30
        next_tick = start + 1.0
        prev = [0.0] * _NFIELDS
        while remaining:
            for i in list(remaining):
                conn = children[i][1]
                if conn.poll(0):
                    msg = conn.recv()
                    if msg[0] == "error":
                        raise GeneratorError(f"generator process failed: {msg[1]}")
                    results[i] = msg[1]
                    remaining.discard(i)
                elif not children[i][0].is_alive():
                    raise GeneratorError("a generator process died without a result")
            now = time.monotonic()
            if now > deadline:
                raise GeneratorError("generator processes did not finish in time")
            if now >= next_tick:
                tot = [
                    sum(progress[j * _NFIELDS + f] for j in range(spec.procs))
                    for f in range(_NFIELDS)
                ]
                tot[_LAG] = max(progress[j * _NFIELDS + _LAG] for j in range(spec.procs))
                if show_progress:
                    el = now - start
                    phase = "warmup" if el < spec.warmup else f"{el - spec.warmup:5.1f}s"
                    rates = [a - b for a, b in zip(tot, prev, strict=True)]
                    line = _progress_line(label, phase, rates, tot)
                    print(("\r" + line) if tty else line, end="" if tty else "\n", file=stream)
                    stream.flush()
                prev = tot
                next_tick += 1.0
            time.sleep(0.02)
        if show_progress and tty:
            print("", file=stream, flush=True)
        return results
    finally:
        for p, conn in children:
            conn.close()
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()


__all__ = [
    "GeneratorError",
    "LoadSpec",
    "min_devices",
    "run_load",
    "run_share",
]
