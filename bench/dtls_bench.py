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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> int:
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
