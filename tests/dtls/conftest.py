"""Fixtures for the coaps integration tests: a real collector serving DTLS, a small
synchronous DTLS client on a real UDP socket, and libcoap's clients as peers."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import coap
from coap import Code, ContentFormat, Message, OptionNumber, Type
from collector.dtls.client import DtlsClientSession
from tests.server.conftest import Collector, start_collector

KEYS = {
    "dev-17": ("a text key for dev-17", "lab", "dev-17"),
    "dev-18": ("a text key for dev-18", "lab", "dev-18"),
}


def psk_document(keys: dict[str, tuple[str, str, str]]) -> str:
    return json.dumps(
        {
            "identities": [
                {"identity": name, "key": key, "namespace": ns, "sender": sender}
                for name, (key, ns, sender) in keys.items()
            ]
        }
    )


def event_body(sender: str = "dev-17", namespace: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "sender": sender,
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 21.5},
    }
    if namespace is not None:
        body["namespace"] = namespace
    body.update(extra)
    return json.dumps(body).encode()


class DtlsUdpClient:
    """A synchronous coaps endpoint: one UDP socket, one DTLS session."""

    def __init__(self, port: int, identity: str = "dev-17", key: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.identity = identity
        self.key = (key if key is not None else KEYS[identity][0]).encode()
        self.session = DtlsClientSession(identity, self.key)
        self._mid = random.randrange(0x10000)
        self.last_record = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DtlsUdpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def recv(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(70000)
        except (TimeoutError, ConnectionRefusedError):
            return None

    def handshake(self, timeout: float = 10.0) -> bool:
        """True once connected; False when the server stays silent or refuses."""
        flight = self.session.start()
        deadline = time.monotonic() + timeout
        wait = 0.5
        while not self.session.connected and time.monotonic() < deadline:
            self.sock.send(flight)
            data = self.recv(wait)
            if data is None:
                wait = min(wait * 2, 2.0)
                continue
            try:
                self.session.receive(data)
            except Exception:
                return False
            nxt = self.session.pending()
            if nxt:
                flight = nxt
                if self.session.connected:
                    self.sock.send(flight)
        return self.session.connected

    def send_plain(self, data: bytes) -> None:
        self.last_record = self.session.encrypt(data)
        self.sock.send(self.last_record)

    def receive_message(self, timeout: float) -> Message | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.recv(max(0.01, deadline - time.monotonic()))
            if data is None:
                return None
            for plain in self.session.receive(data):
                return coap.decode(plain)
        return None

    def post(self, body: bytes, timeout: float = 5.0, mid: int | None = None) -> Message | None:
        """POST /events (CON, JSON); the response, or None. Retransmits once a second."""
        if mid is None:
            self._mid = (self._mid + 1) & 0xFFFF
            mid = self._mid
        msg = Message(
            Type.CON,
            Code.POST,
            mid,
            mid.to_bytes(2, "big"),
            (
                (int(OptionNumber.URI_PATH), b"events"),
                (int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(int(ContentFormat.JSON))),
            ),
            body,
        )
        data = coap.encode(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send_plain(data)
            reply = self.receive_message(1.0)
            if reply is not None and reply.mid == mid:
                return reply
        return None


def wait_coaps(server: Collector, timeout: float = 20.0) -> int:
    """The coaps port from the collector's "serving" line (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log_lines():
            if line.get("msg") == "serving" and line.get("coaps_port"):
                return int(line["coaps_port"])
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no coaps serving line; stderr:\n{server.stderr_tail()}")


@pytest.fixture
def coaps_collector(tmp_path: Path) -> Iterator[Callable[..., tuple[Collector, int]]]:
    """coaps_collector(keys=KEYS, **flags) -> (collector, coaps port); stopped at teardown."""
    started: list[Collector] = []

    def factory(keys: dict[str, tuple[str, str, str]] | None = None, **flags: Any):  # type: ignore[no-untyped-def]
        work = tmp_path / f"c{len(started)}"
        work.mkdir()
        psk = work / "psk.json"
        psk.write_text(psk_document(keys or KEYS))
        opts: dict[str, Any] = {"psk_file": str(psk), "coaps_port": 0}
        opts.update(flags)
        server = start_collector(work, wait=False, **opts)
        started.append(server)
        return server, wait_coaps(server)

    yield factory
    for server in started:
        server.terminate()


def libcoap(tool: str, *args: str, timeout: float = 30.0) -> str:
    """Run a libcoap client; its stdout and stderr together (it exits 0 on failure too)."""
    done = subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.stdout + done.stderr


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
