"""Fixtures for the integration tests of `iot-collector serve`.

Everything here is real: the collector runs as a subprocess (the installed console
script) on an ephemeral loopback port, the test client speaks CoAP over a real UDP
socket, and the database is read with the standard `sqlite3` module, read-only.

- `collector` is a factory: `collector(workers=2, sink="null", ack_delay=0.1)` starts a
  server (flags as keyword arguments, underscores for dashes), waits until a CoAP
  GET /health answers 2.05, and stops it by PID at teardown (SIGTERM, then SIGKILL).
- `CoapClient` is a tiny synchronous client: send bytes or a `coap.Message`, receive
  and decode with a timeout, and "send raw bytes, maybe get nothing".
- `rows`/`row_count` read the `events` table without taking a write lock.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import coap
from coap import Code, ContentFormat, Message, OptionNumber, Type

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_BIN = REPO / ".venv" / "bin" / "iot-collector"
START_TIMEOUT = 15.0  # seconds from exec to the first 2.05 on /health
STOP_TIMEOUT = 15.0  # seconds a SIGTERMed collector may take before SIGKILL


# --- ports ----------------------------------------------------------------------


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def udp_port() -> int:
    return free_udp_port()


@pytest.fixture
def tcp_port() -> int:
    return free_tcp_port()


# --- the CoAP test client --------------------------------------------------------


class CoapClient:
    """A synchronous CoAP endpoint on one UDP socket (one source port)."""

    def __init__(self, host: str, port: int, *, bind: str | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server: tuple[Any, ...] = (host, port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((bind or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))
        self._mid = random.randrange(0x10000)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CoapClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv_raw(self, timeout: float) -> bytes | None:
        """The next datagram from anyone, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, _peer = self.sock.recvfrom(70000)
        except TimeoutError:
            return None
        return data

    def recv(self, timeout: float) -> Message | None:
        data = self.recv_raw(timeout)
        return None if data is None else coap.decode(data)

    def exchange_raw(self, data: bytes, timeout: float = 0.5) -> bytes | None:
        """Send raw bytes; the first datagram that comes back, or None (maybe nothing)."""
        self.send(data)
        return self.recv_raw(timeout)

    def ack(self, msg: Message) -> None:
        self.send(coap.encode(Message(Type.ACK, Code.EMPTY, msg.mid)))

    def request(
        self,
        code: int,
        path: str,
        payload: bytes = b"",
        *,
        fmt: int | None = None,
        type_: Type = Type.CON,
        token: bytes | None = None,
        options: tuple[tuple[int, bytes], ...] = (),
        timeout: float = 5.0,
    ) -> Message:
        """Send a request and return its final response (empty ACKs are skipped; a
        separate CON response is ACKed). A CON is retransmitted every second."""
        msg = self.build(code, path, payload, fmt=fmt, type_=type_, token=token, options=options)
        return self.transact(msg, timeout=timeout)

    def build(
        self,
        code: int,
        path: str,
        payload: bytes = b"",
        *,
        fmt: int | None = None,
        type_: Type = Type.CON,
        token: bytes | None = None,
        options: tuple[tuple[int, bytes], ...] = (),
        mid: int | None = None,
    ) -> Message:
        opts = list(coap.path_to_options(path)) + list(options)
        if fmt is not None:
            opts.append((int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(fmt)))
        opts.sort(key=lambda o: o[0])
        return Message(
            type_,
            code,
            self.next_mid() if mid is None else mid,
            os.urandom(4) if token is None else token,
            tuple(opts),
            payload,
        )

    def transact(self, msg: Message, *, timeout: float = 5.0) -> Message:
        return self.transact_raw(msg, timeout=timeout)[1]

    def transact_raw(self, msg: Message, *, timeout: float = 5.0) -> tuple[bytes, Message]:
        """Like `transact`, with the response's datagram as it came."""
        data = coap.encode(msg)
        deadline = time.monotonic() + timeout
        self.send(data)
        next_resend = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(f"no response to {msg!r} within {timeout} s")
            raw = self.recv_raw(min(deadline, next_resend) - now)
            if raw is None:
                if msg.type == Type.CON and time.monotonic() >= next_resend:
                    self.send(data)
                    next_resend = time.monotonic() + 1.0
                continue
            reply = coap.decode(raw)
            if reply.type == Type.ACK and reply.code == Code.EMPTY and reply.mid == msg.mid:
                next_resend = deadline  # separate response coming: stop retransmitting
                continue
            if reply.token != msg.token:
                if reply.type == Type.CON:
                    self.ack(reply)
                continue
            if reply.type == Type.CON:
                self.ack(reply)
            return raw, reply

    def post_events(
        self,
        body: Any,
        *,
        fmt: int | None = ContentFormat.JSON,
        path: str = "events",
        type_: Type = Type.CON,
        timeout: float = 5.0,
    ) -> Message:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request(Code.POST, path, payload, fmt=fmt, type_=type_, timeout=timeout)


# --- events ---------------------------------------------------------------------


def event(**overrides: Any) -> dict[str, Any]:
    """A valid JSON event with a unique `id` (pass id=None to leave it out)."""
    ev: dict[str, Any] = {
        "sender": "tester",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
        "id": f"t-{uuid.uuid4().hex}",
    }
    for key, value in overrides.items():
        if value is None:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


# --- the database ---------------------------------------------------------------


def connect_ro(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def rows(db: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = connect_ro(db)
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM events WHERE {where}", params)]
    finally:
        conn.close()


def row_count(db: Path, where: str = "1", params: tuple[Any, ...] = ()) -> int:
    conn = connect_ro(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()[0])
    finally:
        conn.close()


def ids_stored(db: Path, ids: list[str]) -> set[str]:
    conn = connect_ro(db)
    try:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in conn.execute(
                    f"SELECT client_id FROM events WHERE client_id IN ({marks})", chunk
                )
            )
        return found
    finally:
        conn.close()


# --- processes ------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the workers of a supervisor)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without COLLECTOR_* / PROMETHEUS_* leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COLLECTOR_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(extra or {})
    return env


def run_cli(
    args: list[str], env: Mapping[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run `iot-collector` to completion (for exit-code tests)."""
    return subprocess.run(
        [str(COLLECTOR_BIN), *args],
        env=base_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Collector:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    db: Path
    stderr_path: Path
    flags: dict[str, Any] = field(default_factory=dict)
    expect_clean_exit: bool = True  # the factory's teardown checks exit code 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 12, width: int = 600) -> str:
        return "\n".join(line[:width] for line in self.stderr().splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def workers(self) -> list[int]:
        return children(self.pid)

    def client(self, host: str | None = None) -> CoapClient:
        return CoapClient(host or self.client_host, self.port)

    @property
    def client_host(self) -> str:
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM by PID, wait; SIGKILL if it will not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.wait())

    def kill(self) -> None:
        workers = self.workers()
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in workers:  # orphaned workers would keep the port
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def _health_ok(host: str, port: int) -> bool:
    with CoapClient(host, port) as client:
        msg = client.build(Code.GET, "health")
        client.send(coap.encode(msg))
        try:
            reply = client.recv(0.2)
        except coap.MessageFormatError:
            return False
        return reply is not None and reply.code == Code.CONTENT and reply.mid == msg.mid


def start_collector(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    start_timeout: float = START_TIMEOUT,
    **flags: Any,
) -> Collector:
    """Start `iot-collector serve` with `flags` (defaults: loopback, port 0, 1 worker,
    sqlite in `workdir`, metrics off, drain timeout 3 s) and wait for GET /health to
    answer 2.05 (the port, when 0, is read from the "serving" log line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "workers": 1,
        "sink": "sqlite",
        "sqlite_path": str(workdir / "events.db"),
        "metrics_port": 0,
        # A test that left a separate response un-ACKed must not hold teardown 10 s.
        "drain_timeout": 3,
    }
    opts.update(flags)
    argv = [str(COLLECTOR_BIN), "serve"]
    for key, value in opts.items():
        if value is not None:  # None: leave the flag out (default or environment)
            argv += [f"--{key.replace('_', '-')}", str(value)]
    stderr_path = workdir / f"collector-{time.monotonic_ns()}.stderr"
    # Metrics on: their multiprocess files go under workdir (the collector wipes and
    # fills the directory); metrics off: no variable, as an operator would run it.
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(workdir / "prom")} if opts["metrics_port"] else {}
    extra.update(env or {})
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=base_env(extra),
        )
    server = Collector(
        proc, opts["host"], int(opts["port"]), Path(opts["sqlite_path"]), stderr_path, opts
    )
    if not wait:
        return server
    deadline = time.monotonic() + start_timeout
    try:
        # The "serving" line comes once every worker serves (and names the port, which
        # port 0 needs). A SIGTERM before that is a different test (startup race).
        quiet = str(opts.get("log_level") or (env or {}).get("COLLECTOR_LOG_LEVEL", "info"))
        serving = quiet in ("warning", "error")
        while not serving:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no serving line")
            for line in server.log_lines():
                if line.get("msg") == "serving":
                    server.port = int(line["port"])
                    serving = True
            time.sleep(0.02)
        assert server.port, "port 0 needs the serving line: keep the log level at info"
        while not _health_ok(server.client_host, server.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("GET /health never answered 2.05")
    except AssertionError as exc:
        rc = proc.poll()
        server.kill()
        raise AssertionError(
            f"collector did not come up ({exc}; exit code {rc}); stderr tail:\n{server.stderr_tail()}"
        ) from None
    return server


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    started: list[Collector] = []

    def factory(**flags: Any) -> Collector:
        server = start_collector(tmp_path / f"c{len(started)}", **flags)
        started.append(server)
        return server

    yield factory
    unclean = []
    for server in started:
        running = server.proc.poll() is None
        code = server.terminate()
        if running and server.expect_clean_exit and code != 0:
            unclean.append(f"exit {code}; stderr tail:\n{server.stderr_tail()}")
    assert not unclean, "collector did not drain cleanly at teardown: " + "\n".join(unclean)


def stop_all(servers: list[Collector]) -> None:
    for server in servers:
        server.terminate()
