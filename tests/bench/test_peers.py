"""The comparison peers do the collector's job: POST /events JSON -> 2.01, bad JSON -> 4.00.

Each peer runs as a real process on a free port; peers whose runtime is missing here
(node_modules not installed, Californium jar not built) are skipped, not faked.
"""

from __future__ import annotations

import socket
import time

import pytest
from loadgen import servers, wire

import coap


def request(port: int, payload: bytes | None, mid: int) -> coap.Message:
    t = wire.build_template("json", "dev-1", 1, 7)
    data = bytes(t.patch(mid, mid))
    if payload is not None:
        m = coap.decode(data)
        data = coap.encode(coap.Message(m.type, m.code, m.mid, m.token, m.options, payload))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.connect(("127.0.0.1", port))
        for _ in range(10):  # CON: retransmit until answered
            s.send(data)
            try:
                reply = coap.decode(s.recv(2048))
            except TimeoutError:
                continue
            if reply.code != 0:
                return reply
    raise AssertionError("no answer")


def available(name: str) -> bool:
    if name == "node-coap":
        return (servers.PEERS_DIR / "node" / "node_modules" / "coap").exists()
    if name == "californium":
        return servers.californium_jar(build=False).exists()
    if name == "echo-c":
        return servers.peer_available(name) is None  # builds it with cc
    return True


@pytest.mark.integration
@pytest.mark.parametrize("name", ["echo", "echo-c", "aiocoap", "node-coap", "californium"])
def test_peer_answers_created_to_a_json_post(name: str) -> None:
    if not available(name):
        pytest.skip(f"{name} is not installed/built here")
    fleet, _host, port = servers.start_server(name, ready_timeout=60)
    try:
        reply = request(port, None, 0x1111)
        assert reply.type == coap.Type.ACK
        assert reply.mid == 0x1111
        assert reply.token == (0x1111).to_bytes(4, "big")
        assert reply.code == coap.Code.CREATED
        if not name.startswith("echo"):  # an echo answers 2.01 unread: its purpose
            bad = request(port, b"{not json", 0x2222)
            assert bad.code == coap.Code.BAD_REQUEST
    finally:
        servers.stop_fleet(fleet)
    # stopped by PID: nothing listens on the port any more
    time.sleep(0.1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


def test_unknown_peer_is_refused() -> None:
    with pytest.raises(servers.ServerError):
        servers.peer_argv("nginx", "127.0.0.1", 1)


def test_startup_time_is_measured_from_exec_to_health() -> None:
    res = servers.measure_startup("echo", 1)
    assert float(res["median_s"]) > 0  # type: ignore[arg-type]
    assert res["runs"] == 1
