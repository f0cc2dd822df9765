"""Real datagrams from a real peer: libcoap's ``coap-client-notls``.

Each test binds a UDP socket on an ephemeral loopback port, points the libcoap
client at it, captures the first datagram, kills the client (by PID; it would
retransmit) and checks that our decoder reads every field libcoap put there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import coap
from coap import Block, Code, ContentFormat, OptionNumber, Type

pytestmark = pytest.mark.integration

CLIENT = "coap-client-notls"


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def capture(sock: socket.socket, *args: str, path: str = "") -> bytes:
    """Run coap-client-notls against ``sock`` and return the first datagram it sends."""
    if shutil.which(CLIENT) is None:
        pytest.fail(f"{CLIENT} not on PATH: install Debian's libcoap3-bin (make setup does)")
    port = sock.getsockname()[1]
    # -B bounds the client's own wait, in case the kill below is never reached.
    process = subprocess.Popen(
        [CLIENT, "-B", "5", *args, f"coap://127.0.0.1:{port}{path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        datagram, _peer = sock.recvfrom(65535)
    finally:
        process.kill()
        process.wait(timeout=10)
    return datagram


def test_json_post(server: socket.socket) -> None:
    body = b'{"sender":"demo","origin":"probe1","payload":{"type":"t","value":1}}'
    message = coap.decode(
        capture(server, "-m", "post", "-t", "json", "-e", body.decode(), path="/events")
    )
    assert message.type is Type.CON
    assert message.code is Code.POST
    assert 1 <= len(message.token) <= 8
    assert message.path == "/events"
    assert message.uri_path == ("events",)
    assert message.content_format == ContentFormat.JSON
    assert message.uint_option(OptionNumber.URI_PORT) == server.getsockname()[1]
    assert message.payload == body
    assert message.unrecognized_critical() is None
    assert coap.encode(message) == coap.encode(coap.decode(coap.encode(message)))


def test_get_well_known_core(server: socket.socket) -> None:
    datagram = capture(server, "-m", "get", path="/.well-known/core")
    message = coap.decode(datagram)
    assert message.type is Type.CON
    assert message.code is Code.GET
    assert message.uri_path == (".well-known", "core")
    assert message.path == "/.well-known/core"
    assert message.payload == b""
    assert message.content_format is None
    assert coap.encode(message) == datagram


def test_block1_post(server: socket.socket, tmp_path: Path) -> None:
    body = bytes(range(48, 48 + 50))  # 50 bytes: more than one 16-byte block
    source = tmp_path / "body.json"
    source.write_bytes(body)
    datagram = capture(
        server, "-m", "post", "-b", "16", "-t", "json", "-f", str(source), path="/events"
    )
    message = coap.decode(datagram)
    assert message.code is Code.POST
    assert message.path == "/events"
    block1 = message.option(OptionNumber.BLOCK1)
    assert block1 is not None
    assert Block.decode(block1) == Block(num=0, more=True, szx=0)
    assert message.payload == body[:16]
    # RFC 7959 §4: Size1 announces the whole body in the first block.
    assert message.uint_option(OptionNumber.SIZE1) == len(body)
    assert coap.encode(message) == datagram


def test_non_post_with_token_query_and_custom_option(server: socket.socket) -> None:
    datagram = capture(
        server, "-N", "-m", "post", "-T", "cafe", "-O", "60,0x32", "-e", "x", path="/events?x=1"
    )
    message = coap.decode(datagram)
    assert message.type is Type.NON
    # libcoap starts from -T and increments it before the first request.
    assert len(message.token) == 4
    assert message.token.startswith(b"caf")
    assert message.option_values(OptionNumber.URI_QUERY) == [b"x=1"]
    assert message.uint_option(OptionNumber.SIZE1) == 50
    assert message.payload == b"x"
    assert coap.encode(message) == datagram
