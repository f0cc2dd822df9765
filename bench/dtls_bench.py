"""DTLS benchmark: what coaps costs the collector, next to plain CoAP on the same generator.

Two parts, both printed as Markdown tables:

``crypto``: the server's share of the work, in memory (python-mbedtls buffers, no
sockets), in process CPU time: one PSK handshake (cookie round trip included), one
HelloVerifyRequest for a spoofed ClientHello, one request record decrypted plus its
answer encrypted.

``load``: starts ``iot-collector serve`` (1 worker, null sink, plain CoAP and coaps
on), then runs the same closed-loop generator over plain CoAP and over DTLS:
``--devices`` sockets in ``--procs`` generator processes, each keeping ``--window``
CON POSTs in flight for ``--duration`` seconds (DTLS handshakes happen before the
measured window). Reports requests/s and p50/p99 latency, and handshakes/s (new
sessions opened as fast as the generator can, ``--handshake-duration`` seconds).
The generator shares the machine with the collector: on a small box it takes CPU
from the worker, so the figures are lower bounds and the ratio is what matters.

    .venv/bin/python bench/dtls_bench.py [crypto|load|all] [--duration 5] [--devices 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coap
from coap import Code, ContentFormat, Message, OptionNumber, Type
from collector.dtls import DtlsServer
from collector.dtls.client import DtlsClientSession
from collector.dtls.mbedtls_backend import MbedtlsBackend
from collector.dtls.openssl_backend import OpensslBackend
from collector.psk import PskEntry, PskStore

REPO = Path(__file__).resolve().parents[1]
IDENTITY, KEY = "bench", b"bench-psk-key-0123456789"
BODY = b'{"sender":"bench","origin":"probe1","payload":{"type":"t","value":15.5}}'


# -- crypto (in memory) -----------------------------------------------------------------


def _server(backend: str) -> DtlsServer:
    store = PskStore({IDENTITY: PskEntry(IDENTITY, KEY, "default", "bench")})
    made = MbedtlsBackend(store) if backend == "mbedtls" else OpensslBackend(store)
    return DtlsServer(made, max_sessions=1 << 20, idle_timeout=1e9)  # type: ignore[arg-type]


def _handshake(server: DtlsServer, peer: tuple[str, int], spent: list[float]) -> DtlsClientSession:
    """A full handshake; the server's CPU time is added to spent[0]."""
    client = DtlsClientSession(IDENTITY, KEY)
    flight = [client.start()]
    while flight:
        answers: list[bytes] = []
        for datagram in flight:
            t = time.process_time()
            server.datagram(datagram, peer, 0.0)
            spent[0] += time.process_time() - t
            answers += [d for d, _ in server.outbox]
            server.outbox.clear()
        flight = []
        for answer in answers:
            client.receive(answer)
            out = client.pending()
            if out:
                flight.append(out)
    assert client.connected
    return client


def crypto(rounds: int, backend: str) -> list[tuple[str, float]]:
    server = _server(backend)
    spent = [0.0]
    for i in range(rounds):
        _handshake(server, ("10.0.0.1", 10000 + i), spent)
    handshake_us = spent[0] / rounds * 1e6
    hello = DtlsClientSession(IDENTITY, KEY).start()
    t = time.process_time()
    for i in range(rounds * 10):
        server.datagram(hello, ("10.0.1.1", i % 60000 + 1), 0.0)
        server.outbox.clear()
    hvr_us = (time.process_time() - t) / (rounds * 10) * 1e6
    peer = ("10.0.2.1", 1)
    client = _handshake(server, peer, [0.0])
    session = server.session_for(peer)
    assert session is not None
    record = None
    n = rounds * 50
    records = [client.encrypt(BODY) for _ in range(n)]
    t = time.process_time()
    for record in records:
        got = server.datagram(record, peer, 0.0)
        assert got is not None
        server.send(session, b"`E\x12\x34\x01\x02\x03\x04")  # a 2.01-sized answer
        server.outbox.clear()
    record_us = (time.process_time() - t) / n * 1e6
    return [
        ("PSK handshake, server side (cookie exchange included)", handshake_us),
        ("HelloVerifyRequest for a cookie-less ClientHello", hvr_us),
        ("request record decrypted + answer record encrypted", record_us),
    ]


# -- load (real collector) --------------------------------------------------------------


def _request(mid: int) -> bytes:
    return coap.encode(
        Message(
            Type.CON,
            Code.POST,
            mid,
            mid.to_bytes(2, "big"),
            (
                (int(OptionNumber.URI_PATH), b"events"),
                (int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(int(ContentFormat.JSON))),
            ),
            BODY,
        )
    )


def _generator(
    port: int, dtls: bool, devices: int, window: int, duration: float, out: multiprocessing.Queue
) -> None:
    """Closed loop: each device keeps `window` CONs in flight; returns latencies."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(devices):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    sessions: dict[int, DtlsClientSession] = {}
    if dtls:
        for s in socks:
            session = DtlsClientSession(IDENTITY, KEY)
            s.send(session.start())
            s.setblocking(True)
            s.settimeout(5)
            while not session.connected:
                session.receive(s.recv(4096))
                flight = session.pending()
                if flight:
                    s.send(flight)
            s.setblocking(False)
            sessions[s.fileno()] = session
    sent: dict[tuple[int, int], float] = {}
    mids = {s.fileno(): random.randrange(0x10000) for s in socks}
    latencies: list[float] = []

    def send(s: socket.socket) -> None:
        fd = s.fileno()
        mid = mids[fd] = (mids[fd] + 1) & 0xFFFF
        data = _request(mid)
        if dtls:
            data = sessions[fd].encrypt(data)
        sent[(fd, mid)] = time.perf_counter()
        try:
            s.send(data)
        except OSError:
            pass

    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        for _ in range(window):
            send(s)
    end = time.perf_counter() + duration
    while (now := time.perf_counter()) < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            fd = s.fileno()
            while True:
                try:
                    data = s.recv(4096)
                except OSError:
                    break
                plains = sessions[fd].receive(data) if dtls else [data]
                for plain in plains:
                    mid = int.from_bytes(plain[2:4], "big")
                    t0 = sent.pop((fd, mid), None)
                    if t0 is not None:
                        latencies.append(time.perf_counter() - t0)
                        send(s)
        # Lost datagrams (full buffers) would stall a window: re-arm after 1 s.
        stale = [k for k, t in sent.items() if now - t > 1.0]
        for fd, mid in stale:
            del sent[(fd, mid)]
            send(next(s for s in socks if s.fileno() == fd))
    out.put(latencies)


def _handshaker(port: int, duration: float, concurrent: int, out: multiprocessing.Queue) -> None:
    """Open sessions as fast as possible, `concurrent` at a time; returns the count."""
    sel = selectors.DefaultSelector()
    done = 0
    end = time.perf_counter() + duration

    def start() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        session = DtlsClientSession(IDENTITY, KEY)
        s.send(session.start())
        sel.register(s, selectors.EVENT_READ, (session, time.perf_counter()))

    for _ in range(concurrent):
        start()
    while time.perf_counter() < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            session, _t0 = key.data
            try:
                session.receive(s.recv(4096))
            except Exception:
                pass
            flight = session.pending()
            if flight:
                s.send(flight)
            if session.connected:
                done += 1
                s.send(session.close())
                sel.unregister(s)
                s.close()
                start()
        for key in list(sel.get_map().values()):  # a lost flight: start over
            if time.perf_counter() - key.data[1] > 2.0:
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                start()
    out.put(done)


def _run_procs(target, args_list):  # type: ignore[no-untyped-def]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=target, args=(*args, queue)) for args in args_list]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return results


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pid(parent: int) -> int:
    for _ in range(100):
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError("no worker process")


Row = tuple[str, float, float, float, float]


def load(args: argparse.Namespace) -> tuple[list[Row], float, float]:
    """Rows (name, req/s, p50 ms, p99 ms, worker CPU us/request), handshakes/s, and
    the worker's CPU us per handshake."""
    work = Path(tempfile.mkdtemp(prefix="dtls-bench-"))
    psk = work / "psk.json"
    psk.write_text(json.dumps({"identities": [
        {"identity": IDENTITY, "key": KEY.decode(), "namespace": "default", "sender": "bench"}
    ]}))  # fmt: skip
    plain_port, coaps_port = _free(), _free()
    argv = [str(REPO / ".venv/bin/iot-collector"), "serve", "--host", "127.0.0.1",
            "--port", str(plain_port), "--coaps-port", str(coaps_port), "--workers", "1",
            "--sink", "null", "--metrics-port", "0", "--psk-file", str(psk), "--plain", "on",
            "--dtls-max-sessions", "100000", "--dtls-backend", args.backend,
            "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        worker = _worker_pid(proc.pid)
        rows: list[Row] = []
        per_proc = max(1, args.devices // args.procs)
        for name, port, dtls in (("plain CoAP", plain_port, False), ("DTLS", coaps_port, True)):
            cpu0 = _cpu_seconds(worker)  # the DTLS handshakes before the window add a little
            parts = _run_procs(
                _generator,
                [(port, dtls, per_proc, args.window, args.duration)] * args.procs,
            )
            cpu = _cpu_seconds(worker) - cpu0
            lat = sorted(x for part in parts for x in part)
            if not lat:
                rows.append((name, 0.0, float("nan"), float("nan"), float("nan")))
                continue
            rows.append((
                name,
                len(lat) / args.duration,
                lat[len(lat) // 2] * 1e3,
                lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
                cpu / len(lat) * 1e6,
            ))  # fmt: skip
        if args.scandium and SCANDIUM_JAR.exists():
            rows.append(_scandium(args))
        cpu0 = _cpu_seconds(worker)
        counts = _run_procs(_handshaker, [(coaps_port, args.handshake_duration, 16)] * args.procs)
        cpu = _cpu_seconds(worker) - cpu0
        handshakes = sum(counts) / args.handshake_duration
        handshake_us = cpu / max(1, sum(counts)) * 1e6
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows, handshakes, handshake_us


SCANDIUM_JAR = REPO / "bench" / "peers" / "scandium" / "target" / "sc-peer.jar"


def _scandium(args: argparse.Namespace) -> Row:
    """The same DTLS generator against Californium's Scandium server (2.01 to POST
    /events; its threads and receive buffer as its docs advise: see ScPeer.java)."""
    port = _free()
    java = subprocess.Popen(
        ["java", "-jar", str(SCANDIUM_JAR), "server", str(port), IDENTITY, KEY.decode()],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert java.stdout is not None
        java.stdout.readline()  # "serving"
        per_proc = max(1, args.devices // args.procs)
        # A warm-up run first: the JIT compiles the hot path in its first seconds.
        _run_procs(_generator, [(port, True, per_proc, args.window, 5.0)] * args.procs)
        cpu0 = _cpu_seconds(java.pid)
        parts = _run_procs(
            _generator, [(port, True, per_proc, args.window, args.duration)] * args.procs
        )
        cpu = _cpu_seconds(java.pid) - cpu0
    finally:
        java.kill()
        java.wait()
    lat = sorted(x for part in parts for x in part)
    if not lat:
        return ("Scandium DTLS server", 0.0, float("nan"), float("nan"), float("nan"))
    return (
        f"Scandium DTLS server (all {os.cpu_count()} cores)",
        len(lat) / args.duration,
        lat[len(lat) // 2] * 1e3,
        lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
        cpu / len(lat) * 1e6,
    )


def _free() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", default="all", choices=("crypto", "load", "all"))
    parser.add_argument("--rounds", type=int, default=300, help="crypto: handshakes timed")
    parser.add_argument("--repeat", type=int, default=3, help="crypto: runs per backend")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--handshake-duration", type=float, default=3.0)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--backend", default="openssl", choices=("openssl", "mbedtls"))
    parser.add_argument(
        "--scandium", action="store_true", help="load: also run against Scandium's server"
    )
    parser.add_argument("--procs", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; generator processes: {args.procs}")
    if args.part in ("crypto", "all"):
        # Alternating runs, best of --repeat: the machine is shared.
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.repeat):
            for backend in ("mbedtls", "openssl"):
                for label, us in crypto(args.rounds, backend):
                    best[(label, backend)] = min(us, best.get((label, backend), us))
        labels = list(dict.fromkeys(label for label, _ in best))
        print(
            "\n| server-side cost, µs CPU (best of runs) | python-mbedtls 2.10.1 (Mbed TLS 2.28) | OpenSSL 3 (ctypes) |"
        )
        print("| --- | ---: | ---: |")
        for label in labels:
            print(f"| {label} | {best[(label, 'mbedtls')]:.1f} | {best[(label, 'openssl')]:.1f} |")
    if args.part in ("load", "all"):
        rows, handshakes, handshake_us = load(args)
        print(f"\nbackend {args.backend}")
        print("| 1 worker, null sink | requests/s | p50 ms | p99 ms | worker CPU µs/request |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, rps, p50, p99, cpu_us in rows:
            print(f"| {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu_us:.1f} |")
        if rows[0][1] and rows[1][1]:
            print(f"\nDTLS / plain requests/s (same generator): {rows[1][1] / rows[0][1]:.2f}")
            print(f"DTLS / plain capacity (worker CPU per request): {rows[0][4] / rows[1][4]:.2f}")
        print(
            f"PSK handshakes/s completed: {handshakes:.0f} (generator-bound); worker CPU per "
            f"handshake {handshake_us:.0f} µs: {1e6 / handshake_us:.0f} handshakes/s per worker"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
