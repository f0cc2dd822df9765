"""iot-client, issue 14: block-wise bodies (RFC 7959 Block1 with Size1, Request-Tag
when several are in flight) against our collector, libcoap's and Californium's
servers; a dead port fails at once; odd values and misplaced options get one clear
line; a 4.13 answer is one short line.

A recording UDP relay between the client and each server shows what went on the
wire: no datagram over RFC 7252 §4.6's ~1152 bytes.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import coap
from coap import OptionNumber

from .conftest import (
    REPO,
    free_udp_port,
    run_cli,
    start_collector,
    stop_process,
    wait_for_coap,
)

pytestmark = pytest.mark.integration

REQUEST_TAG = 292
DATAGRAM_LIMIT = 1152  # RFC 7252 §4.6


@dataclass
class Relay:
    """Forwards one client's datagrams to a server and back, recording requests."""

    server_port: int
    front: socket.socket = field(init=False)
    back: socket.socket = field(init=False)
    requests: list[coap.Message] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(("127.0.0.1", self.server_port))
        self.client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._up, daemon=True),
            threading.Thread(target=self._down, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def port(self) -> int:
        return int(self.front.getsockname()[1])

    def _up(self) -> None:
        self.front.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, self.client = self.front.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            self.sizes.append(len(data))
            try:
                msg = coap.decode(data)
            except coap.CoapError:
                pass
            else:
                if 1 <= msg.code < 32:  # a request (class 0, not empty)
                    self.requests.append(msg)
            try:
                self.back.send(data)
            except OSError:
                pass

    def _down(self) -> None:
        self.back.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.back.recv(65536)
            except (TimeoutError, OSError):
                continue
            if self.client is not None:
                self.front.sendto(data, self.client)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self.front.close()
        self.back.close()

    def uploads(self) -> list[coap.Message]:
        return [m for m in self.requests if m.option(OptionNumber.BLOCK1) is not None]


@pytest.fixture
def relay_to() -> Iterator[type[Relay]]:
    made: list[Relay] = []

    class Made(Relay):
        def __post_init__(self) -> None:
            super().__post_init__()
            made.append(self)

    yield Made
    for relay in made:
        relay.close()


def values(n: int) -> list[str]:
    return [str(20 + i / 10) for i in range(n)]


def assert_blockwise(relay: Relay, body_events: int) -> None:
    assert max(relay.sizes) <= DATAGRAM_LIMIT, max(relay.sizes)
    uploads = relay.uploads()
    assert uploads, "nothing went block-wise"
    first = [m for m in uploads if coap.Block.decode(m.option(OptionNumber.BLOCK1) or b"").num == 0]
    for msg in first:
        size1 = msg.uint_option(OptionNumber.SIZE1)
        assert size1 is not None and size1 > 1024


# -- our collector ------------------------------------------------------------------


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    db = tmp_path / "events.db"
    args = ["--host", "127.0.0.1", "--workers", "1", "--metrics-port", "0"]
    args += ["--sink", "sqlite", "--sqlite-path", str(db)]
    proc, port = start_collector(args, tmp_path / "collector.log")
    try:
        yield port, db
    finally:
        stop_process(proc)


def test_a_large_batch_goes_block1_to_the_collector(
    collector: tuple[int, Path], relay_to: type[Relay]
) -> None:
    port, db = collector
    relay = relay_to(port)
    done = run_cli("-P", str(relay.port), "send", "--batch", "40", "temperature", *values(40))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("POST /events -> 2.01")
    assert_blockwise(relay, 40)
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 40
    finally:
        connection.close()


def test_several_uploads_in_flight_reach_the_collector_whole(
    collector: tuple[int, Path], relay_to: type[Relay]
) -> None:
    """8 block-wise requests in flight at once (--window 8): every event stored once,
    whether the collector keeps them apart by Request-Tag or the client has to fall
    back to one upload at a time."""
    port, db = collector
    relay = relay_to(port)
    done = run_cli("-P", str(relay.port), "send", "--batch", "20", "t", *values(160))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" -> 2.01") == 8
    assert max(relay.sizes) <= DATAGRAM_LIMIT
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("SELECT count(DISTINCT id) FROM events").fetchone()[0] == 160
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 160
    finally:
        connection.close()


def test_a_4_13_answer_is_one_short_line(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    args = ["--host", "127.0.0.1", "--workers", "1", "--metrics-port", "0", "--max-body", "2000"]
    proc, port = start_collector([*args, "--sqlite-path", str(db)], tmp_path / "c.log")
    try:
        done = run_cli("-P", str(port), "send", "--batch", "200", "t", *values(200))
    finally:
        stop_process(proc)
    assert done.returncode == 1
    line = done.stdout.strip()
    assert line.startswith("POST /events -> 4.13 request too large"), line
    assert len(line) < 200, line


# -- libcoap ------------------------------------------------------------------------


@pytest.fixture
def libcoap() -> Iterator[int]:
    binary = shutil.which("coap-server-notls")
    if binary is None:
        pytest.skip("coap-server-notls (libcoap3-bin) is not installed: run make setup")
    port = free_udp_port()
    proc = subprocess.Popen(
        [binary, "-A", "127.0.0.1", "-p", str(port), "-d", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_coap(port, exited=proc.poll)
        yield port
    finally:
        stop_process(proc)


def test_libcoap_takes_block1_bodies_several_in_flight(libcoap: int, relay_to: type[Relay]) -> None:
    relay = relay_to(libcoap)
    done = run_cli(
        "-P", str(relay.port), "send", "--batch", "20", "--window", "4", "t", *values(80)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answers = done.stdout.splitlines()
    assert len(answers) == 4 and all(" -> 2.0" in a for a in answers), answers
    assert_blockwise(relay, 20)
    # Uploads in flight together are told apart by Request-Tag (RFC 9175).
    tags = {m.option(REQUEST_TAG) for m in relay.uploads()}
    assert len(tags) >= 2, tags


# -- Californium ----------------------------------------------------------------------


@pytest.fixture
def californium() -> Iterator[int]:
    sys.path.insert(0, str(REPO / "bench"))
    from loadgen import servers

    if not servers.californium_jar(build=False).exists() or shutil.which("java") is None:
        pytest.skip("the Californium peer is not built (make setup builds it)")
    fleet, _host, port = servers.start_server("californium", ready_timeout=60)
    try:
        yield port
    finally:
        servers.stop_fleet(fleet)


def test_californium_takes_block1_bodies(californium: int, relay_to: type[Relay]) -> None:
    """Californium's server dropped the 5779-byte datagram silently."""
    relay = relay_to(californium)
    done = run_cli("-P", str(relay.port), "send", "--batch", "40", "t", *values(40))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("POST /events -> 2.01")
    assert_blockwise(relay, 40)


# -- a dead port, odd values, misplaced options -------------------------------------------


@pytest.mark.parametrize("command", [["send", "t", "1"], ["healthcheck"]])
def test_a_dead_port_fails_at_once(command: list[str]) -> None:
    port = free_udp_port()  # nothing listens: the kernel answers port unreachable
    started = time.monotonic()
    done = run_cli("-P", str(port), *command)
    took = time.monotonic() - started
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"no CoAP server at 127.0.0.1:{port}/udp (connection refused)" in done.stdout
    assert took < 20, took  # it took 66-93 s (MAX_TRANSMIT_WAIT); generous for a busy box


@pytest.mark.parametrize("value", ["nan", "inf", "Infinity", "1e400"])
def test_values_no_event_can_carry_are_refused(value: str) -> None:
    done = run_cli("-P", "1", "send", "t", value)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"iot-client: value '{value}' is not a finite number: events carry finite numbers "
        "only (no NaN or infinity, at most about 1.8e308)"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--bogus"], "iot-client: unknown option --bogus (try 'iot-client --help')"),
        (
            ["--timeout", "1", "send", "t", "1"],
            "iot-client: --timeout is an option of the command: put it after the command, "
            "as in 'iot-client send --timeout ...' (try 'iot-client --help')",
        ),
    ],
)
def test_usage_errors_say_what_is_wrong(args: list[str], line: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stderr.strip() == line
