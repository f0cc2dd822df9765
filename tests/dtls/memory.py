"""In-memory DTLS peers for the session-layer tests: a real Mbed TLS client talking to
a real DtlsServer through lists instead of sockets."""

from __future__ import annotations

from collector.dtls import DtlsServer, openssl_backend
from collector.dtls.client import DtlsClientSession
from collector.dtls.mbedtls_backend import MbedtlsBackend
from collector.dtls.openssl_backend import OpensslBackend
from collector.psk import PskEntry, PskStore

KEY = b"a text key for dev-17"
ENTRIES = {
    "dev-17": PskEntry("dev-17", KEY, "lab", "dev-17"),
    "dev-18": PskEntry(
        "dev-18", bytes.fromhex("00112233445566778899aabbccddeeff"), "lab", "dev-18"
    ),
}


BACKENDS = ["mbedtls", "openssl"] if openssl_backend.available() else ["mbedtls"]


def make_server(backend: str = "mbedtls", **kwargs: object) -> tuple[DtlsServer, PskStore]:
    """A DtlsServer on `backend` ("mbedtls" or "openssl") over the ENTRIES keys."""
    store = PskStore(ENTRIES)
    options: dict[str, object] = {"max_sessions": 100, "idle_timeout": 60.0}
    options.update(kwargs)
    made = MbedtlsBackend(store) if backend == "mbedtls" else OpensslBackend(store)
    return DtlsServer(made, **options), store  # type: ignore[arg-type]


def take(server: DtlsServer, peer: object) -> list[bytes]:
    """The datagrams the server queued for `peer`, removed from its outbox."""
    mine = [data for data, p in server.outbox if p == peer]
    server.outbox[:] = [(d, p) for d, p in server.outbox if p != peer]
    return mine


def connect(
    server: DtlsServer,
    peer: tuple[str, int],
    identity: str = "dev-17",
    key: bytes = KEY,
    now: float = 0.0,
) -> DtlsClientSession:
    """Run a full handshake (cookie exchange included) between a client and `server`."""
    client = DtlsClientSession(identity, key)
    flight = [client.start()]
    for _ in range(10):
        answers: list[bytes] = []
        for datagram in flight:
            if datagram:
                server.datagram(datagram, peer, now)
                answers += take(server, peer)
        flight = []
        for answer in answers:
            client.receive(answer)
            flight.append(client.pending())
        if client.connected and not any(flight):
            break
    return client
