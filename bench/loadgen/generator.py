"""The open-loop send/receive loop and the processes that run it.

Strategy. Each generator process owns a share of the devices, one connected
non-blocking UDP socket per device (its own source port, its own Message ID space),
and the requests ``i % procs == index`` of a global constant-rate schedule. One
plain loop, no asyncio: send every request that is due, retransmit CONs whose
timer expired (RFC 7252 §4.2: ACK_TIMEOUT x a random factor, doubling, at most
MAX_RETRANSMIT times), expire requests older than the timeout, then wait on the
sockets' epoll until the next due time. The wait uses ``select`` on the epoll fd
(microsecond timeout) rather than ``epoll.poll`` (millisecond), so sends are not
batched into 1 ms bursts.

Request k of a process goes to its device ``k % ndev`` as that device's
``seq = k // ndev``-th request: the token is ``seq`` (4 bytes) and the MID is the
device's random base plus ``seq``, so a response's token (or, for an empty ACK or
a RST, its MID) gives k back without a lookup table, and k gives the scheduled time.
Latency runs from the scheduled time to the response, so generator lateness and
server queueing both count (no coordinated omission); the send lag (actual minus
scheduled send time) is kept in its own histogram so generator saturation shows.

Measured and not kept: sendmmsg(2) through ctypes. On this machine a 16-message
sendmmsg on one loopback socket cost 6.0-6.9 us per datagram against 6.5-7.2 us for
plain send() (the loopback path, not the system call, is the cost), and with one
socket per device a wake-up rarely has more than one datagram for the same socket,
so batches would be of one. The per-request costs that remain are the send itself,
the receive, and the wake-up (select + epoll), which --tick can coalesce.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing as mp
import random
import resource
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from . import wire
from .histogram import _EXACT, _HALF, SUB_BITS, LogHistogram
from .schedule import Schedule

# progress counters per process, in a shared array of doubles
_SENT, _ANSWERED, _OK, _TIMEOUTS, _RETRANS, _LAG, _NFIELDS = range(7)

_RTO_LEVELS = 16  # steps of the random factor of the first retransmission timeout
MAX_SEQ_PER_DEVICE = 60_000  # stay clear of a 16-bit MID wrap within one run


@dataclass(frozen=True)
class LoadSpec:
    """One constant-rate run against one address."""

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
    tick: float = 0.0  # shortest wait: >0 trades up to this much send lag for fewer wake-ups

    @property
    def total(self) -> int:
        return math.floor((self.warmup + self.duration) * self.rate + 1e-9)

    @property
    def first_measured(self) -> int:
        """Global index of the first request after the warm-up."""
        return math.ceil(self.warmup * self.rate - 1e-9)


def min_devices(spec: LoadSpec) -> int:
    """Devices needed so that no device reuses a Message ID within the run."""
    return max(1, math.ceil(spec.total / MAX_SEQ_PER_DEVICE))


def pick_bind_address(host: str) -> str:
    """A fresh loopback source address per run, so reused ephemeral ports never meet
    the server's dedup cache of an earlier run; other targets bind the wildcard."""
    if host.startswith("127."):
        return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    if host in ("::1", "localhost"):
        return ""
    return ""


def _open_sockets(spec: LoadSpec, n: int) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    socks = []
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if spec.bind:
            s.bind((spec.bind, 0))
        s.connect((spec.host, spec.port))
        s.setblocking(False)
        socks.append(s)
    return socks


def _set_timer_slack() -> None:
    """Ask for 1 us timer slack (default 50 us) so short waits wake on time."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, nanoseconds
    except (OSError, AttributeError):
        pass


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
    procs = spec.procs
    my_devices = [d for d in range(spec.devices) if d % procs == index]
    ndev = len(my_devices)
    socks = _open_sockets(spec, ndev)
    nonce = random.getrandbits(16)
    templates = [
        wire.build_template(
            spec.fmt, f"dev-{d}", spec.events, (nonce << 16) | d, spec.path, con=not spec.non
        )
        for d in my_devices
    ]
    patches = [t.patcher() for t in templates]
    sends = [s.send for s in socks]
    mid_base = [random.getrandbits(16) for _ in range(ndev)]
    ep = select.epoll()
    fd2dev: dict[int, int] = {}
    for i, s in enumerate(socks):
        ep.register(s.fileno(), select.EPOLLIN)
        fd2dev[s.fileno()] = i
    epfd = [ep.fileno()]
    recvs = [s.recv for s in socks]

    if ready is not None:
        start = ready()
    elif start is None:
        start = time.monotonic() + 0.05
    sched = Schedule(start, spec.rate, spec.total, index, procs)
    count = sched.count
    rate = sched.rate
    # first k of this process that is measured (global index >= first_measured)
    k_warm = max(0, math.ceil((spec.first_measured - index) / procs))

    lat_counts = [0] * len(LogHistogram().counts)
    lag_counts = [0] * len(lat_counts)
    lat_max = 0
    lag_max = 0
    lat_min = 1 << 62
    codes: dict[int, int] = {}
    pending: dict[int, int] = {}  # k -> transmissions so far
    acked: set[int] = set()  # CONs answered by an empty ACK, awaiting a separate response
    # First-transmission timers: the random factor is drawn from _RTO_LEVELS equal
    # steps, and each step keeps a FIFO of (deadline, k): sends happen in time order,
    # so each FIFO is sorted by deadline and costs an append and a popleft per request
    # (a heap cost ~1 us more per request, most of it for timers already answered).
    # Later retransmissions are rare and go to a heap.
    rto_levels = [
        spec.ack_timeout * (1.0 + (spec.ack_random_factor - 1.0) * (i + 0.5) / _RTO_LEVELS)
        for i in range(_RTO_LEVELS)
    ]
    fifos: list[deque[tuple[float, int]]] = [deque() for _ in range(_RTO_LEVELS)]
    appends = [f.append for f in fifos]
    next_fifo = math.inf  # earliest head deadline over the FIFOs
    rtx: list[tuple[float, int, int, float]] = []  # (deadline, k, tx, rto)
    con = not spec.non
    max_retransmit = spec.max_retransmit
    timeout = spec.timeout
    rnd = random.random
    mono = time.monotonic
    heappush, heappop = heapq.heappush, heapq.heappop
    sel = select.select
    poll = ep.poll
    tick = spec.tick

    k = 0  # next request to send
    kt = 0  # next request whose timeout is checked
    sent_measured = 0
    answered = 0
    ok = 0
    timeouts = 0
    retrans = 0
    send_errors = 0
    icmp_errors = 0
    late = 0
    separate = 0
    rsts = 0
    stale = 0
    first_send = 0.0
    last_send = 0.0
    last_answer = 0.0
    idx = index
    step = procs
    next_progress = 0.0
    hard_end = sched.time_of(count - 1) + timeout + 0.5 if count else start

    def find_by_mid(dev: int, mid: int) -> int:
        # the device's most recent seq whose MID low 16 bits match
        if k == 0:
            return -1
        last_k = k - 1 - ((k - 1 - dev) % ndev) if k - 1 >= dev else -1
        if last_k < 0:
            return -1
        seq_cur = last_k // ndev
        seq = seq_cur - ((mid_base[dev] + seq_cur - mid) & 0xFFFF)
        return seq * ndev + dev if seq >= 0 else -1

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        now = mono()
        # 1. send everything that is due
        i_due = math.floor((now - start) * rate + 1e-6)
        due = 0 if i_due < idx else min(count, (i_due - idx) // step + 1)
        while k < due:
            dev = k % ndev
            seq = k // ndev
            try:
                sends[dev](patches[dev]((mid_base[dev] + seq) & 0xFFFF, seq))
            except OSError:
                send_errors += 1  # buffer full or refused: the retransmission timer covers it
            t_sched = start + (k * step + idx) / rate
            lag = int((now - t_sched) * 1e6)
            if lag < 0:
                lag = 0
            if k >= k_warm:
                if lag < _EXACT:
                    lag_counts[lag] += 1
                else:
                    e = lag.bit_length() - SUB_BITS
                    lag_counts[_EXACT + ((e - 1) << (SUB_BITS - 1)) + (lag >> e) - _HALF] += 1
                if lag > lag_max:
                    lag_max = lag
                if sent_measured == 0:
                    first_send = now
                sent_measured += 1
                last_send = now
            pending[k] = 1
            if con:
                lvl = int(rnd() * _RTO_LEVELS)
                deadline = now + rto_levels[lvl]
                appends[lvl]((deadline, k))
                if deadline < next_fifo:
                    next_fifo = deadline
            k += 1

        # 2. retransmit expired CONs (same MID and token: the server dedups them)
        if next_fifo <= now:
            for lvl, fifo in enumerate(fifos):
                while fifo and fifo[0][0] <= now:
                    _, kk = fifo.popleft()
                    if kk in pending and kk not in acked:
                        heappush(rtx, (now, kk, 1, rto_levels[lvl]))
            next_fifo = min((f[0][0] for f in fifos if f), default=math.inf)
        while rtx and rtx[0][0] <= now:
            _, kk, tx, rto = heappop(rtx)
            if kk not in pending or kk in acked or tx > max_retransmit:
                continue
            dev = kk % ndev
            seq = kk // ndev
            try:
                sends[dev](patches[dev]((mid_base[dev] + seq) & 0xFFFF, seq))
            except OSError:
                send_errors += 1
            retrans += 1
            pending[kk] = tx + 1
            heappush(rtx, (now + rto * (1 << tx), kk, tx + 1, rto))

        # 3. give up on requests older than the timeout (measured from their schedule)
        while kt < k and start + (kt * step + idx) / rate + timeout <= now:
            if pending.pop(kt, None) is not None:
                acked.discard(kt)
                if kt >= k_warm:
                    timeouts += 1
            kt += 1

        if progress is not None and now >= next_progress:
            base = index * _NFIELDS
            progress[base + _SENT] = sent_measured
            progress[base + _ANSWERED] = answered
            progress[base + _OK] = ok
            progress[base + _TIMEOUTS] = timeouts
            progress[base + _RETRANS] = retrans
            progress[base + _LAG] = lag_max / 1e3
            next_progress = now + 0.05

        if kt >= count or now > hard_end or (k >= count and not pending):
            break

        # 4. wait for responses or the next due time
        wait = start + (k * step + idx) / rate - now if k < count else 0.01
        if rtx and rtx[0][0] - now < wait:
            wait = rtx[0][0] - now
        if next_fifo - now < wait:
            wait = next_fifo - now
        if wait > 0.01:
            wait = 0.01
        elif 0 < wait < tick:
            wait = tick  # coalesce wake-ups: at most `tick` of added send lag
        if wait >= 0.002:
            # whole milliseconds: one epoll_wait (rounded down, never oversleeping)
            events = poll(math.floor(wait * 1000.0) / 1000.0)
        elif wait > 0:
            # sub-millisecond: select() on the epoll fd has microsecond timeouts
            r, _, _ = sel(epfd, [], [], wait)
            if not r:
                continue
            events = poll(0)
        else:
            events = poll(0)
        for fd, _ev in events:
            dev = fd2dev[fd]
            try:
                data = recvs[dev](2048)
            except BlockingIOError:
                continue
            except OSError:
                icmp_errors += 1  # ICMP port unreachable: nobody listens (yet)
                continue
            now = mono()
            if len(data) < 4:
                continue
            b0 = data[0]
            typ = (b0 >> 4) & 3
            tkl = b0 & 0x0F
            code = data[1]
            if typ == 2 and code == 0:
                # empty ACK: a separate response follows; stop retransmitting
                kk = find_by_mid(dev, (data[2] << 8) | data[3])
                if kk in pending:
                    acked.add(kk)
                continue
            if typ == 3:
                kk = find_by_mid(dev, (data[2] << 8) | data[3])
                rsts += 1
                code = 0x100  # shown as "RST"
            else:
                if typ == 0:
                    # a separate CON response: ACK it (again, if our ACK was lost)
                    separate += 1
                    try:
                        sends[dev](wire.empty_ack((data[2] << 8) | data[3]))
                    except OSError:
                        send_errors += 1
                if tkl != wire.TOKEN_LEN:
                    stale += 1
                    continue
                seq = int.from_bytes(data[4:8], "big")
                kk = seq * ndev + dev
            if pending.pop(kk, None) is None:
                late += 1  # answer to a retransmission, or after the timeout
                continue
            if acked:
                acked.discard(kk)
            if kk < k_warm:
                continue
            answered += 1
            last_answer = now
            if 64 <= code < 96:
                ok += 1
            codes[code] = codes.get(code, 0) + 1
            lat = int((now - (start + (kk * step + idx) / rate)) * 1e6)
            if lat < _EXACT:
                lat_counts[max(lat, 0)] += 1
            else:
                e = lat.bit_length() - SUB_BITS
                lat_counts[_EXACT + ((e - 1) << (SUB_BITS - 1)) + (lat >> e) - _HALF] += 1
            if lat > lat_max:
                lat_max = lat
            if lat < lat_min:
                lat_min = lat

    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    timeouts += sum(1 for kk in pending if kk >= k_warm)
    ep.close()
    for s in socks:
        s.close()
    if progress is not None:
        base = index * _NFIELDS
        progress[base + _SENT] = sent_measured
        progress[base + _ANSWERED] = answered
        progress[base + _OK] = ok
        progress[base + _TIMEOUTS] = timeouts
        progress[base + _RETRANS] = retrans
    lat_h = LogHistogram()
    lat_h.counts = lat_counts
    lat_h.total = sum(lat_counts)
    lat_h.max = lat_max
    lat_h.min = lat_min if lat_h.total else None
    lag_h = LogHistogram()
    lag_h.counts = lag_counts
    lag_h.total = sum(lag_counts)
    lag_h.max = lag_max
    lag_h.min = 0 if lag_h.total else None
    return {
        "index": index,
        "devices": ndev,
        "start": start,
        "measured_from": start + spec.first_measured / spec.rate,
        "sent": sent_measured,
        "sent_total": k,
        "answered": answered,
        "ok": ok,
        "codes": {("RST" if c == 0x100 else wire.code_str(c)): n for c, n in codes.items()},
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
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "latency": lat_h.to_dict(),
        "lag": lag_h.to_dict(),
    }


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


def run_load(
    spec: LoadSpec, label: str = "", show_progress: bool = True, stream: Any = None
) -> list[dict[str, Any]]:
    """Run ``spec`` in ``spec.procs`` processes; return their raw results.

    Prints a one-line progress display every second on ``stream`` (stderr).
    Raises GeneratorError if a process fails or hangs.
    """
    stream = stream if stream is not None else sys.stderr
    if not spec.bind:
        spec = LoadSpec(**{**asdict(spec), "bind": pick_bind_address(spec.host)})
    ctx = mp.get_context("fork")
    progress = ctx.RawArray("d", spec.procs * _NFIELDS)
    children = []
    for i in range(spec.procs):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_child, args=(spec, i, progress, child_end), daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    try:
        for _p, conn in children:
            if not conn.poll(30):
                raise GeneratorError("a generator process did not get ready in 30 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise GeneratorError(f"generator process failed: {msg[1]}")
        start = time.monotonic() + 0.05
        for _, conn in children:
            conn.send(("start", start))
        results: list[dict[str, Any]] = [{} for _ in children]
        remaining = {i for i in range(len(children))}
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
                lag_max = max(progress[j * _NFIELDS + _LAG] for j in range(spec.procs))
                if show_progress:
                    end = "" if stream.isatty() else "\n"
                    cr = "\r" if stream.isatty() else ""
                    el = now - start
                    phase = "warmup" if el < spec.warmup else f"{el - spec.warmup:5.1f}s"
                    print(
                        f"{cr}{label:>14} {phase:>7} | sent {tot[_SENT] - prev[_SENT]:8.0f}/s"
                        f" ok {tot[_OK] - prev[_OK]:8.0f}/s | timeouts {tot[_TIMEOUTS]:.0f}"
                        f" retrans {tot[_RETRANS]:.0f} | send lag max {lag_max:.1f} ms ",
                        end=end,
                        file=stream,
                        flush=True,
                    )
                prev = tot
                next_tick += 1.0
            time.sleep(0.02)
        if show_progress and stream.isatty():
            print("", file=stream, flush=True)
        return results
    finally:
        for p, conn in children:
            conn.close()
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()


__all__ = ["GeneratorError", "LoadSpec", "min_devices", "run_load", "run_share"]
