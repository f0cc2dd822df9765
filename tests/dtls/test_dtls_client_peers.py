"""iot-client over coaps against libcoap's coap-server-openssl (a real DTLS peer)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "collector.client"]
KEY = "libcoap-psk-key"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("coap-server-openssl") is None, reason="libcoap3-bin not installed"
    ),
]


def _free_pair() -> int:
    """A port p with p and p+1 free on UDP (libcoap serves coaps on --port + 1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def libcoap_dtls_server() -> Iterator[int]:
    port = _free_pair()
    proc = subprocess.Popen(
        ["coap-server-openssl", "-A", "127.0.0.1", "-p", str(port), "-k", KEY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield port + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    full.update(env or {})
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=90
    )


def test_discover_over_coaps(libcoap_dtls_server: int) -> None:
    done = _cli(
        "-P", str(libcoap_dtls_server), "--psk-identity", "dev-17", "--psk-key", KEY, "discover"
    )
    assert done.returncode == 0, done.stderr
    assert "</time>" in done.stdout


def test_key_from_the_environment_and_hex(libcoap_dtls_server: int) -> None:
    env = {"IOT_PSK_IDENTITY": "dev-17", "IOT_PSK_KEY": KEY}
    done = _cli("-P", str(libcoap_dtls_server), "discover", env=env)
    assert done.returncode == 0, done.stderr
    done = _cli(
        "-P", str(libcoap_dtls_server), "--psk-identity", "x", "--psk-key-hex", KEY.encode().hex(),
        "discover",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_wrong_key_fails_with_one_line(libcoap_dtls_server: int) -> None:
    done = _cli(
        "-P", str(libcoap_dtls_server), "--psk-identity", "dev-17", "--psk-key", "not-the-key",
        "discover", "--timeout", "3",
    )  # fmt: skip
    assert done.returncode != 0
    assert "DTLS" in done.stderr and "Traceback" not in done.stderr
    assert KEY not in done.stderr and "not-the-key" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--psk-key", "k"], "needs --psk-identity"),
        (["--psk-identity", "a"], "needs --psk-key"),
        (["--psk-identity", "a", "--psk-key", "k", "--psk-key-hex", "00"], "one of"),
        (["--psk-identity", "a", "--psk-key-hex", "zz"], "not hexadecimal"),
    ],
)
def test_psk_usage_errors(args: list[str], message: str) -> None:
    done = _cli(*args, "discover")
    assert done.returncode == 2 and message in done.stderr
