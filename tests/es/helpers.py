"""Helpers for the Elasticsearch tests: private instances run by scripts/es.sh."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from elasticsearch import Elasticsearch

import coap
from coap import Code, ContentFormat, Message, OptionNumber, Type
from tests.server.conftest import Collector
from tests.server.conftest import start_collector as _start_collector

ROOT = Path(__file__).resolve().parents[2]
ES_SH = ROOT / "scripts" / "es.sh"
#: The `elastic` user's bootstrap password on the private (x-pack security) instance.
PRIVATE_PASSWORD = "collector-test-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EsInstance:
    """One Elasticsearch run by scripts/es.sh in its own state directory."""

    port: int
    state_dir: str
    security: bool = False
    password: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(ES_PORT=str(self.port), ES_STATE_DIR=self.state_dir)
        if self.security:
            env.update(ES_SECURITY="1", ES_PASSWORD=self.password)
        env.update(self.env)
        env.update(extra)
        return env

    def _run(self, command: str, timeout: float, **extra: str) -> str:
        done = subprocess.run(
            ["bash", str(ES_SH), command],
            env=self._env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"es.sh {command} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> str:
        """Start (or find running) and wait until healthy; returns the URL."""
        out = self._run("start", timeout=240)
        url = out.strip().splitlines()[-1]
        assert url == self.url
        return url

    def stop(self, keep_data: bool = False) -> None:
        self._run("stop", timeout=60, ES_KEEP_STATE="1" if keep_data else "0")

    def sink_config(self, prefix: str, **overrides: Any) -> SimpleNamespace:
        if self.security:
            overrides.setdefault("es_username", "elastic")
            overrides.setdefault("es_password", self.password)
        return sink_config(self.url, prefix, **overrides)

    def client(self, **kwargs: Any) -> Elasticsearch:
        if self.security:
            kwargs.setdefault("basic_auth", ("elastic", self.password))
        return Elasticsearch(self.url, request_timeout=30, **kwargs)


def new_instance(**kwargs: Any) -> EsInstance:
    # Not under pytest's tmp_path: its parents are private to root, and the server runs
    # as a dedicated user that must reach its state directory.
    state = f"/tmp/iot-collector-es-test-{uuid.uuid4().hex[:10]}"
    return EsInstance(port=free_port(), state_dir=state, **kwargs)


def sink_config(url: str, prefix: str, **overrides: Any) -> SimpleNamespace:
    """The attributes ElasticsearchSink reads from the collector's Config."""
    values: dict[str, Any] = {
        "es_url": url,
        "es_index_prefix": prefix,
        "es_username": None,
        "es_password": None,
        "es_api_key": None,
        "es_ca_certs": None,
        "store_wait": 5.0,
        "es_retry_deadline": 4.0,
        "es_compress": False,
        "es_ilm_policy": None,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


# --- the collector, as a process -------------------------------------------------

COLLECTOR_START_TIMEOUT = 60.0  # seconds to the "serving" line and a 2.05 on /health


def start_collector(workdir: Path, es_url: str, prefix: str, **flags: Any) -> Collector:
    """The server suite's `start_collector` with the elasticsearch sink: a free loopback
    port, waits until GET /health answers 2.05. `flags` are extra options (underscores
    for dashes); the drain timeout stays the collector's default unless given."""
    options: dict[str, Any] = {
        "sink": "elasticsearch",
        "es_url": es_url,
        "es_index_prefix": prefix,
        "store_wait": 30,
        "sqlite_path": str(workdir / "unused.db"),
        "drain_timeout": None,
    }
    options.update(flags)
    return _start_collector(workdir, start_timeout=COLLECTOR_START_TIMEOUT, **options)


# --- CoAP over a real UDP socket ---------------------------------------------------


class CoapClient:
    """A small synchronous CoAP client on one UDP socket (one source port)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.server = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._mid = random.randrange(0x10000)

    def __enter__(self) -> CoapClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def build(
        self,
        code: int,
        path: str,
        payload: bytes = b"",
        fmt: int | None = None,
        mid: int | None = None,
    ) -> Message:
        options: list[tuple[int, bytes]] = [(int(OptionNumber.URI_PATH), path.encode())]
        if fmt is not None:
            options.append((int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(fmt)))
        return Message(
            Type.CON,
            code,
            self.next_mid() if mid is None else mid,
            os.urandom(4),
            tuple(options),
            payload,
        )

    def send(self, msg: Message) -> None:
        self.sock.sendto(coap.encode(msg), self.server)

    def recv_for_mid(self, mid: int, timeout: float) -> Message | None:
        """The next datagram answering Message ID `mid`, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                reply = coap.decode(self.sock.recv(65536))
            except TimeoutError:
                return None
            if reply.mid == mid:
                return reply
        return None

    def transact(
        self, msg: Message, timeout: float = 10.0, retransmit: bool = True
    ) -> Message | None:
        """Send `msg` (retransmitted every second) and return its final response, skipping
        an empty ACK and ACKing a separate response; None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        self.send(msg)
        resend = time.monotonic() + 1.0 if retransmit else deadline
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None
            self.sock.settimeout(max(0.001, min(deadline, resend) - now))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if time.monotonic() >= resend:
                    self.send(msg)
                    resend = time.monotonic() + 1.0
                continue
            reply = coap.decode(data)
            if reply.type == Type.ACK and reply.code == Code.EMPTY and reply.mid == msg.mid:
                resend = deadline  # a separate response will follow
                continue
            if reply.type == Type.CON:
                self.sock.sendto(coap.encode(Message(Type.ACK, Code.EMPTY, reply.mid)), self.server)
            if reply.token == msg.token:
                return reply

    def request(
        self,
        code: int,
        path: str,
        payload: bytes = b"",
        fmt: int | None = None,
        timeout: float = 10.0,
        retransmit: bool = True,
    ) -> Message | None:
        return self.transact(self.build(code, path, payload, fmt), timeout, retransmit)

    def post_json(self, body: Any, timeout: float = 10.0) -> Message | None:
        return self.request(Code.POST, "events", orjson.dumps(body), ContentFormat.JSON, timeout)


def es_ids_present(client: Elasticsearch, index: str, ids: list[str]) -> set[str]:
    """Which of `ids` are stored (by `_id`) in `index` (a pattern), after a refresh."""
    client.indices.refresh(index=index, allow_no_indices=True, ignore_unavailable=True)
    found: set[str] = set()
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        res = client.search(
            index=index,
            query={"ids": {"values": chunk}},
            size=len(chunk),
            source=False,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        found.update(h["_id"] for h in res["hits"]["hits"])
    return found
