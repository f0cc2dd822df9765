"""The C engine: the generator's open and closed loops run by ``loadgen/engine.c``.

Why: one Python generator process spends 9-11 us of CPU per request against a C echo
on loopback, about 4 us of it in the kernel (sendmmsg, recvmmsg), the rest in the
interpreter (staging, the answer loop, histogram increments), which caps a core near
90-100k requests/s. The C loop does the same work per request without the
interpreter; the kernel's share is what is left.

What stays in Python: the sockets, templates and MID bases (:class:`generator._Devices`),
the schedule's arithmetic set-up, and the raw result, built by the same
:func:`generator.raw_result` as the Python loops', so merging and reporting cannot
tell the engines apart except by the ``engine`` field. The C side mirrors the Python
loops rule for rule (see engine.c); :func:`open_loop` and :func:`closed_loop` take the
Python loops' arguments.

:func:`choose` resolves ``--engine auto`` (C where it builds and the run is plain CoAP
on Linux; DTLS runs stay in Python, whose records come from python-mbedtls).
"""

from __future__ import annotations

import ctypes
import functools
import math
import random
import sys
from typing import TYPE_CHECKING, Any

from . import native
from .histogram import MAX_VALUE, N_BUCKETS, SUB_BITS
from .schedule import Schedule

if TYPE_CHECKING:
    from .generator import LoadSpec, _Devices

ENGINES = ("auto", "c", "python")
_KINDS = {"id": 0, "tjson": 1, "tcbor": 2}
_P = ctypes.POINTER
_I64 = ctypes.c_int64


_TYPES: dict[str, Any] = {
    "i": ctypes.c_int,
    "q": _I64,
    "u64": ctypes.c_uint64,
    "d": ctypes.c_double,
    "s": ctypes.c_char_p,
    "*i": _P(ctypes.c_int),
    "*u16": _P(ctypes.c_uint16),
    "*d": _P(ctypes.c_double),
}


def _fields(decl: str) -> list[tuple[str, Any]]:
    """ctypes fields from ``"name:type ..."``, the C struct's members in order."""
    return [(name, _TYPES[kind]) for name, kind in (m.split(":") for m in decl.split())]


class Params(ctypes.Structure):
    """engine.c's struct lg_params, member for member."""

    _fields_ = _fields("""
        ndev:i fds:*i templates:s size:i kind:i events:i offsets:*i mid_base:*u16
        start:d rate:d count:q index:i procs:i burst:i k_warm:q
        timeout:d ack_timeout:d spread:d max_retransmit:i con:i tick:d hard_end:d
        window:i measure_from:d end_at:d max_seq:i seed:u64
        sub_bits:i max_value:q n_buckets:i timeline_hz:i tl_len:i progress:*d
    """)


class Result(ctypes.Structure):
    """engine.c's struct lg_result."""

    _fields_ = _fields("""
        sent_measured:q sent_total:q answered:q ok:q timeouts:q retrans:q send_errors:q
        icmp_errors:q late:q separate:q rsts:q stale:q exhausted:q
        lat_min:q lat_max:q lag_max:q
        first_send:d last_send:d last_answer:d wall_s:d
    """)


@functools.cache
def library() -> Any:
    """engine.c compiled and loaded (once per process). Raises native.NativeError."""
    if not sys.platform.startswith("linux"):
        raise native.NativeError("the C engine needs Linux (recvmmsg, sendmmsg, epoll)")
    try:
        lib = ctypes.CDLL(str(native.build(native.ENGINE_SOURCE, shared=True)))
    except OSError as exc:
        raise native.NativeError(f"cannot load the C engine: {exc}") from None
    for name in ("lg_open_loop", "lg_closed_loop"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [_P(Params), _P(Result), _P(_I64), _P(_I64), _P(_I64), _P(_I64)]
    return lib


def why_not(spec: LoadSpec) -> str | None:
    """None when the C engine can run ``spec`` here, else why not (one line)."""
    if spec.dtls:
        return "the C engine speaks plain CoAP only (DTLS runs use the Python engine)"
    if spec.handshakes:
        return "handshake-rate runs use the Python engine"
    try:
        library()
    except native.NativeError as exc:
        return str(exc)
    return None


def choose(spec: LoadSpec) -> str:
    """The engine that runs ``spec``: ``"c"`` or ``"python"``. ``--engine c`` where the
    C engine cannot run raises ValueError with the reason."""
    if spec.engine == "python":
        return "python"
    why = why_not(spec)
    if why is None:
        return "c"
    if spec.engine == "c":
        raise ValueError(f"--engine c: {why}")
    return "python"


def _params(spec: LoadSpec, index: int, devs: _Devices, progress: Any) -> tuple[Params, list[Any]]:
    """The C parameters common to both loops, and the buffers they point into (to be
    kept alive for the call)."""
    ts = devs.templates
    first = ts[0]
    if any(t.offsets != first.offsets or t.kind != first.kind for t in ts):
        raise ValueError("device templates differ in layout")
    ndev = len(ts)
    fds = (ctypes.c_int * ndev)(*devs.fds)
    templates = b"".join(bytes(t.buf) for t in ts)
    offsets = (ctypes.c_int * len(first.offsets))(*first.offsets)
    mids = (ctypes.c_uint16 * ndev)(*devs.mid_base)
    where = None
    if progress is not None:
        from .generator import _NFIELDS

        where = ctypes.cast(
            ctypes.addressof(progress) + index * _NFIELDS * ctypes.sizeof(ctypes.c_double),
            _P(ctypes.c_double),
        )
    p = Params(
        ndev=ndev, fds=fds, templates=templates, size=devs.size, kind=_KINDS[first.kind],
        events=first.events, offsets=offsets, mid_base=mids, index=index, procs=spec.procs,
        burst=max(1, spec.burst), timeout=spec.timeout, ack_timeout=spec.ack_timeout,
        spread=spec.ack_random_factor - 1.0, max_retransmit=spec.max_retransmit,
        con=int(not spec.non), tick=spec.tick, window=spec.window,
        seed=random.getrandbits(64), sub_bits=SUB_BITS, max_value=MAX_VALUE,
        n_buckets=N_BUCKETS, progress=where,
    )  # fmt: skip
    return p, [fds, templates, offsets, mids]


def _run(name: str, p: Params, mode: str) -> tuple[Result, dict[str, Any]]:
    """Call loop ``name`` with ``p``; its result and the raw result's parts."""
    from .generator import TIMELINE_HZ, _histogram, _Meter

    p.timeline_hz = TIMELINE_HZ
    r = Result()
    lat, lag = (_I64 * N_BUCKETS)(), (_I64 * N_BUCKETS)()
    codes, timeline = (_I64 * 257)(), (_I64 * p.tl_len)()
    meter = _Meter()
    if getattr(library(), name)(ctypes.byref(p), ctypes.byref(r), lat, lag, codes, timeline):
        raise MemoryError("the C engine could not allocate its buffers")
    used = {**meter.read(), "wall_s": r.wall_s}
    parts = {
        "codes": list(codes),
        "used": used,
        "timeline": list(timeline),
        "latency": _histogram(list(lat), r.lat_min if r.answered else None, r.lat_max),
        "lag": _histogram(list(lag), 0, r.lag_max) if mode == "open" else None,
    }
    return r, parts


def _counts(r: Result, measured_from: float, **extra: Any) -> dict[str, Any]:
    return {
        "measured_from": measured_from,
        "sent": r.sent_measured,
        "sent_total": r.sent_total,
        "answered": r.answered,
        "ok": r.ok,
        "timeouts": r.timeouts,
        "retransmissions": r.retrans,
        "send_errors": r.send_errors,
        "icmp_errors": r.icmp_errors,
        "late_responses": r.late,
        "separate_responses": r.separate,
        "rst": r.rsts,
        "stale": r.stale,
        "first_send": r.first_send,
        "last_send": r.last_send,
        "last_answer": r.last_answer,
        **extra,
    }


def open_loop(
    spec: LoadSpec, index: int, start: float, progress: Any, devs: _Devices
) -> dict[str, Any]:
    """generator._open_loop, in C."""
    from .generator import TIMELINE_HZ, raw_result

    sched = Schedule(start, spec.rate, spec.total, index, spec.procs)
    p, keep = _params(spec, index, devs, progress)
    p.start, p.rate, p.count = start, sched.rate, sched.count
    p.k_warm = max(0, math.ceil((spec.first_measured - index) / spec.procs))
    p.hard_end = sched.time_of(sched.count - 1) + spec.timeout + 0.5 if sched.count else start
    p.tl_len = int((spec.warmup + spec.duration + spec.timeout + 2.0) * TIMELINE_HZ) + 2
    r, parts = _run("lg_open_loop", p, "open")
    del keep
    counts = _counts(r, start + spec.first_measured / spec.rate)
    return raw_result("open", index, devs, start, counts, parts["codes"], parts["used"],
                      parts["timeline"], parts["latency"], parts["lag"], "c")  # fmt: skip


def closed_loop(
    spec: LoadSpec, index: int, start: float, progress: Any, devs: _Devices
) -> dict[str, Any]:
    """generator._closed_loop, in C."""
    from .generator import MAX_SEQ_PER_DEVICE, TIMELINE_HZ, _histogram, raw_result

    p, keep = _params(spec, index, devs, progress)
    p.start = start
    p.measure_from = start + spec.warmup
    p.end_at = p.measure_from + spec.duration
    p.max_seq = MAX_SEQ_PER_DEVICE
    p.tl_len = int((spec.warmup + spec.duration + 1.0) * TIMELINE_HZ) + 2
    r, parts = _run("lg_closed_loop", p, "closed")
    del keep
    counts = _counts(r, p.measure_from, window=spec.window, exhausted=r.exhausted)
    counts["first_send"] = p.measure_from
    lag = _histogram([0] * N_BUCKETS, None, 0)
    return raw_result("closed", index, devs, start, counts, parts["codes"], parts["used"],
                      parts["timeline"], parts["latency"], lag, "c")  # fmt: skip


__all__ = ["ENGINES", "choose", "closed_loop", "library", "open_loop", "why_not"]
