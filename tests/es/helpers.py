"""Helpers for the Elasticsearch tests: private instances run by scripts/es.sh."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from elasticsearch import Elasticsearch

ROOT = Path(__file__).resolve().parents[2]
ES_SH = ROOT / "scripts" / "es.sh"


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
        out = self._run("start", timeout=180)
        url = out.strip().splitlines()[-1]
        assert url == self.url
        return url

    def stop(self, keep_data: bool = False) -> None:
        self._run("stop", timeout=60, ES_KEEP_STATE="1" if keep_data else "0")

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
    }
    values.update(overrides)
    return SimpleNamespace(**values)
