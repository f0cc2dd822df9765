"""The generator's measuring rules, against scripted UDP responders on loopback.

Each responder is a real socket in a thread, scripted to misbehave one way: drop
first copies (retransmission), answer separately (empty ACK then CON), stall
(coordinated omission), or not exist (timeouts). Every rule is checked on both
engines (the Python loops and loadgen/engine.c), which must count alike.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from loadgen import cengine
from loadgen.generator import LoadSpec, run_share
from loadgen.histogram import LogHistogram

Handler = Callable[[socket.socket, bytes, tuple[str, int]], None]


@contextmanager
def responder(handler: Handler) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            handler(sock, data, addr)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=2)
        sock.close()


@pytest.fixture(params=["python", "c"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "c":
        why = cengine.why_not(LoadSpec(host="127.0.0.1", port=1, rate=1.0, duration=1.0))
        if why:
            pytest.skip(why)
    return str(request.param)


def ack(data: bytes, code: int = 0x41) -> bytes:
    tkl = data[0] & 0x0F
    return bytes((0x60 | tkl, code)) + data[2 : 4 + tkl]


def spec(port: int, **kw: object) -> LoadSpec:
    base: dict[str, object] = dict(
        host="127.0.0.1",
        port=port,
        rate=200.0,
        duration=1.0,
        warmup=0.0,
        devices=8,
        timeout=2.0,
        bind="127.0.0.1",
    )
    base.update(kw)
    return LoadSpec(**base)  # type: ignore[arg-type]


def test_every_request_is_answered_and_counted(engine: str) -> None:
    with responder(lambda s, d, a: s.sendto(ack(d), a)) as port:
        r = run_share(spec(port, engine=engine), 0)
    assert r["engine"] == engine
    assert r["sent"] == 200
    assert r["answered"] == r["ok"] == 200
    assert r["codes"] == {"2.01": 200}
    assert r["timeouts"] == 0 and r["retransmissions"] == 0


def test_lost_first_copies_are_retransmitted_and_latency_includes_the_wait(engine: str) -> None:
    seen: set[tuple[tuple[str, int], bytes]] = set()

    def drop_first(s: socket.socket, d: bytes, a: tuple[str, int]) -> None:
        key = (a, d[2:4])
        if key not in seen:
            seen.add(key)
            return
        s.sendto(ack(d), a)

    with responder(drop_first) as port:
        r = run_share(
            spec(port, engine=engine, rate=100.0, ack_timeout=0.2, ack_random_factor=1.0), 0
        )
    assert r["sent"] == 100
    assert r["retransmissions"] == 100
    assert r["ok"] == 100 and r["timeouts"] == 0
    lat = LogHistogram.from_dict(r["latency"])
    assert lat.min is not None and lat.min >= 200_000  # microseconds: one ACK_TIMEOUT


def test_separate_responses_are_acked_and_counted_at_the_response(engine: str) -> None:
    acks_back: list[bytes] = []
    mid = [0x4000]

    def separate(s: socket.socket, d: bytes, a: tuple[str, int]) -> None:
        kind = (d[0] >> 4) & 3
        if kind == 2:  # the client's empty ACK of our CON response
            acks_back.append(d)
            return
        s.sendto(bytes((0x60, 0x00)) + d[2:4], a)  # empty ACK
        time.sleep(0.001)
        mid[0] += 1
        tkl = d[0] & 0x0F
        resp = bytes((0x40 | tkl, 0x41)) + mid[0].to_bytes(2, "big") + d[4 : 4 + tkl]
        s.sendto(resp, a)

    with responder(separate) as port:
        r = run_share(
            spec(port, engine=engine, rate=100.0, ack_timeout=0.3, ack_random_factor=1.0), 0
        )
        time.sleep(0.1)
    assert r["ok"] == 100
    assert r["separate_responses"] == 100
    assert r["retransmissions"] == 0  # the empty ACK stopped the timer
    assert len(acks_back) == 100
    assert all(len(x) == 4 and x[1] == 0 for x in acks_back)


def test_a_stalled_server_cannot_hide_its_queue(engine: str) -> None:
    """Open loop: requests keep going out during a stall and count from their schedule."""
    state = {"stalled": False}

    def stall_once(s: socket.socket, d: bytes, a: tuple[str, int]) -> None:
        if not state["stalled"]:
            state["stalled"] = True
            time.sleep(0.5)
        s.sendto(ack(d), a)

    with responder(stall_once) as port:
        r = run_share(spec(port, engine=engine, rate=200.0, duration=1.5, timeout=3.0), 0)
    assert r["sent"] == 300  # the generator did not wait for the server
    assert r["ok"] == 300
    lat = LogHistogram.from_dict(r["latency"])
    # ~100 requests were scheduled during the 0.5 s stall; each waited for its end
    slow = sum(c for i, c in enumerate(lat.counts) if i >= 0 and _lo(i) >= 100_000)
    assert slow >= 50
    assert lat.max >= 450_000


def _lo(index: int) -> int:
    from loadgen.histogram import bucket_bounds

    return bucket_bounds(index)[0]


def test_nobody_listening_counts_timeouts(engine: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_share(spec(port, engine=engine, rate=100.0, duration=0.5, timeout=0.3, non=True), 0)
    assert r["sent"] == 50
    assert r["answered"] == 0
    assert r["timeouts"] == 50


@pytest.mark.parametrize("procs", [1, 2])
def test_warmup_requests_are_sent_but_not_measured(procs: int, engine: str) -> None:
    with responder(lambda s, d, a: s.sendto(ack(d), a)) as port:
        sp = spec(port, engine=engine, rate=100.0, duration=1.0, warmup=0.5, procs=procs)
        results = [run_share(sp, i, start=time.monotonic() + 0.05) for i in range(procs)]
    assert sum(r["sent_total"] for r in results) == 150
    assert sum(r["sent"] for r in results) == 100
    assert sum(r["ok"] for r in results) == 100


def test_closed_loop_keeps_its_window_per_socket_and_counts_losses(engine: str) -> None:
    """Closed loop: never more than `window` requests in flight per device; a dropped
    request frees its slot at the timeout and counts as lost."""
    in_flight: dict[tuple[str, int], int] = {}
    most = [0]
    dropped = [0]

    def answer_late(s: socket.socket, d: bytes, a: tuple[str, int]) -> None:
        in_flight[a] = in_flight.get(a, 0) + 1
        most[0] = max(most[0], in_flight[a])
        if dropped[0] < 3:  # the first three are lost
            dropped[0] += 1
            in_flight[a] -= 1
            return
        time.sleep(0.0005)
        in_flight[a] -= 1
        s.sendto(ack(d), a)

    with responder(answer_late) as port:
        r = run_share(
            spec(port, engine=engine, window=2, devices=4, duration=1.0, warmup=0.0, timeout=0.3), 0
        )
    assert r["mode"] == "closed"
    assert r["answered"] > 50 and r["ok"] == r["answered"]
    assert most[0] <= 2
    assert r["timeouts"] == 3
    assert sum(r["timeline"]) >= r["answered"]


def test_open_loop_bursts_reach_every_device_with_distinct_mids(engine: str) -> None:
    seen: dict[tuple[str, int], set[bytes]] = {}

    def record(s: socket.socket, d: bytes, a: tuple[str, int]) -> None:
        seen.setdefault(a, set()).add(d[2:4])
        s.sendto(ack(d), a)

    with responder(record) as port:
        r = run_share(spec(port, engine=engine, rate=400.0, devices=4, burst=8), 0)
    assert r["ok"] == 400
    assert len(seen) == 4
    assert sum(len(m) for m in seen.values()) == 400  # no MID reused on a device


def test_both_engines_give_the_same_shape_and_merge() -> None:
    """The C engine's raw result has the Python engine's keys and types, and results of
    both engines merge into one summary whose counts are their sums."""
    if cengine.why_not(LoadSpec(host="127.0.0.1", port=1, rate=1.0, duration=1.0)):
        pytest.skip("no C engine here")
    from loadgen import report

    results = {}
    with responder(lambda s, d, a: s.sendto(ack(d), a)) as port:
        for index, name in enumerate(("python", "c")):
            sp = spec(port, engine=name, procs=2, rate=200.0, duration=0.5)
            results[name] = run_share(sp, index)
    py, c = results["python"], results["c"]
    assert set(py) == set(c)
    for key, value in py.items():
        assert type(c[key]) is type(value), key
    assert set(py["latency"]) == set(c["latency"]) and len(c["timeline"]) == len(py["timeline"])
    sp = spec(port, procs=2, rate=200.0, duration=0.5)
    merged = report.summarize([py, c], sp, "both", "scripted", 1)
    assert merged["sent"] == py["sent"] + c["sent"] == 100
    assert merged["ok"] == 100 and merged["codes"] == {"2.01": 100}
    assert merged["generator_engine"] == "c+python"
    assert sum(c for _i, c in merged["histogram_us"]["buckets"]) == 100


def test_engine_choice() -> None:
    base = LoadSpec(host="127.0.0.1", port=1, rate=1.0, duration=1.0)
    dtls = LoadSpec(host="127.0.0.1", port=1, rate=1.0, duration=1.0, psk_identity="d")
    assert cengine.choose(LoadSpec(**{**base.__dict__, "engine": "python"})) == "python"
    assert cengine.choose(LoadSpec(**{**dtls.__dict__, "engine": "auto"})) == "python"
    with pytest.raises(ValueError, match="plain CoAP only"):
        cengine.choose(LoadSpec(**{**dtls.__dict__, "engine": "c"}))
    if cengine.why_not(base) is None:
        assert cengine.choose(base) == "c"


@pytest.mark.parametrize("window", [0, 2])
def test_run_load_merges_processes_of_either_engine(engine: str, window: int) -> None:
    """Two forked processes, the shared progress array written by each (from C too)."""
    from loadgen import report
    from loadgen.generator import run_load

    with responder(lambda s, d, a: s.sendto(ack(d), a)) as port:
        sp = spec(port, engine=engine, procs=2, rate=200.0, duration=0.5, window=window)
        raw = run_load(sp, show_progress=False)
    assert [r["index"] for r in raw] == [0, 1] and {r["engine"] for r in raw} == {engine}
    s = report.summarize(raw, sp, "two", "scripted", 1)
    assert s["ok"] == s["answered"] == sum(r["ok"] for r in raw) > 0
    if not window:
        assert s["sent"] == 100
