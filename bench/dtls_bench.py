"""DTLS crypto benchmark: the two server backends' costs, in memory.

The server's share of the work with no sockets, in process CPU time, for each
backend (python-mbedtls and OpenSSL 3 through ctypes): one PSK handshake (cookie
round trip included), one HelloVerifyRequest for a spoofed ClientHello, one request
record decrypted plus its answer encrypted. Runs alternate between the backends and
the best of ``--repeat`` is printed as a Markdown table.

The load figures (coaps against plain CoAP on the same collector and generator,
handshakes per second, Californium's Scandium as the peer) come from the load
generator: ``bench/loadtest.py --dtls-compare``.

    .venv/bin/python bench/dtls_bench.py [--rounds 300] [--repeat 3]

``path`` mode is the whole server path of one request over DTLS, in process and on
loopback sockets, for counting instructions (this box is shared: wall-clock times
are noisy, instruction counts are not): ``--sessions`` PSK handshakes between the
project's client sessions and one worker's `DtlsShell` (DtlsServer, RequestCore, a
null-sink BatchDriver), then ``--requests`` CoAP POST records, ``--burst`` datagrams
per read, through the shell's reader exactly as the event loop calls it (recvmmsg,
records, core, batch, answers encrypted, sendmmsg; the answers are left unread).
Every run encrypts ``--records`` records first, whatever ``--requests`` is, so two
runs differ only in the server's work, and ``--control`` sends the same datagrams
without the server reading them (the sender's share). Instructions per request:

    .venv/bin/python bench/dtls_bench.py instructions   # valgrind's callgrind, 4 runs

which runs ``path`` under callgrind with 1000 and 3000 requests, and again with
``--control``, and prints (I(3000) - I(1000) - (Ic(3000) - Ic(1000))) / 2000.

``--check`` reads the answers back and requires a 2.01 for every request.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector.dtls import DtlsServer
from collector.dtls.client import DtlsClientSession
from collector.dtls.mbedtls_backend import MbedtlsBackend
from collector.dtls.openssl_backend import OpensslBackend
from collector.psk import PskEntry, PskStore

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


# -- the server path of one request (path mode) --------------------------------------


def path(requests: int, sessions: int, records: int, burst: int, control: bool, check: bool) -> int:
    """See the module docstring; returns the number of 2.01 answers read (--check)."""
    import asyncio
    import gc
    import json
    import socket
    import tempfile

    from loadgen import wire

    import coap
    from collector.coaps import DtlsShell
    from collector.config import Config
    from collector.metrics import WorkerStats
    from collector.sinks.null import NullSink
    from collector.worker import GC_THRESHOLD

    if requests > records:
        raise SystemExit("--requests must not exceed --records")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        doc = {"identities": [{"identity": IDENTITY, "key": KEY.decode(), "sender": "bench"}]}
        json.dump(doc, f)
    config = Config(sink="null", psk_file=f.name, metrics_port=0)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server_sock.bind(("127.0.0.1", 0))
        server_sock.setblocking(False)
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        addr = server_sock.getsockname()
        shell = DtlsShell(0, server_sock, config, NullSink(), WorkerStats(False), metrics=False)
        shell._loop = loop  # what start() sets, without its ticker and signal handler
        clients = []
        for _ in range(sessions):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5.0)
            client = DtlsClientSession(IDENTITY, KEY)
            flight = client.start()
            while not client.connected:
                sock.sendto(flight, addr)
                shell._on_readable()
                client.receive(sock.recv(1 << 16))
                flight = client.pending()
            if flight:  # the client's Finished, when the server spoke last
                sock.sendto(flight, addr)
                shell._on_readable()
            sock.setblocking(False)
            clients.append((sock, client))
        # Every run encrypts --records requests, so that runs differ in the server only.
        template = wire.build_template("json", "probe1", 1, 7, sender=None)
        stage = template.patcher()
        sealed = []
        for i in range(records):
            sock, client = clients[i % sessions]
            sealed.append((sock, client.encrypt(bytes(stage(i & 0xFFFF, i)))))
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 50, 1000)  # as serve_forever (collector.worker)
        for start in range(0, requests, burst):
            for sock, record in sealed[start : min(requests, start + burst)]:
                sock.sendto(record, addr)
            if not control:
                shell._on_readable()
        created = 0
        if check:
            for sock, client in clients:
                while True:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        break
                    for plain in client.receive(data):
                        created += coap.decode(plain).code == coap.Code.CREATED
        return created

    try:
        import uvloop  # the worker's loop (collector.worker)

        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(run())
        finally:
            loop.close()
    finally:
        Path(f.name).unlink()


def instructions(low: int = 1000, high: int = 3000) -> None:
    """Server instructions per request: `path` under callgrind (see the docstring)."""
    import os
    import re
    import subprocess

    env = {**os.environ, "PYTHONHASHSEED": "0"}  # else dict probing varies by ±0.4%

    def count(*args: str) -> int:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "path", "--records", str(high), *args],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", out.stderr)
        assert found is not None, out.stderr[-2000:]
        return int(found.group(1))

    full = count("--requests", str(high)) - count("--requests", str(low))
    sender = count("--requests", str(high), "--control")
    sender -= count("--requests", str(low), "--control")
    per = (full - sender) / (high - low)
    print(f"server path: {per:.0f} instructions/request (the sender's share, taken out:"
          f" {sender / (high - low):.0f})")  # fmt: skip


def main() -> int:
    if sys.argv[1:2] == ["instructions"]:
        instructions()
        return 0
    if sys.argv[1:2] == ["path"]:
        p = argparse.ArgumentParser(prog="dtls_bench.py path", description="see the docstring")
        p.add_argument("--requests", type=int, default=1000)
        p.add_argument("--sessions", type=int, default=64)
        p.add_argument("--records", type=int, default=3000, help="encrypted in every run")
        p.add_argument("--burst", type=int, default=64, help="datagrams per read")
        p.add_argument("--control", action="store_true", help="send, never read")
        p.add_argument("--check", action="store_true", help="every request answered 2.01")
        a = p.parse_args(sys.argv[2:])
        created = path(a.requests, a.sessions, a.records, a.burst, a.control, a.check)
        if a.check:
            print(f"{created} of {a.requests} requests answered 2.01")
            return 0 if created == a.requests else 1
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="handshakes timed per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend")
    args = parser.parse_args()
    # Alternating runs, best of --repeat: the machine is shared.
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for backend in ("mbedtls", "openssl"):
            for label, us in crypto(args.rounds, backend):
                best[(label, backend)] = min(us, best.get((label, backend), us))
    labels = list(dict.fromkeys(label for label, _ in best))
    print(
        "| server-side cost, µs CPU (best of runs) | python-mbedtls 2.10.1 (Mbed TLS 2.28) |"
        " OpenSSL 3 (ctypes) |"
    )
    print("| --- | ---: | ---: |")
    for label in labels:
        print(f"| {label} | {best[(label, 'mbedtls')]:.1f} | {best[(label, 'openssl')]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
