"""Shared helpers for the iot-client tests: run the CLI as a real process, start
real CoAP peers (libcoap's coap-server-notls, an aiocoap recording server, our
collector) on free loopback ports, and stop exactly the processes we started."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import coap

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "collector.client"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m collector.client ARGS`` from the repository root."""
    full_env = dict(os.environ)
    full_env.pop("IOT_HOST", None)
    full_env.pop("IOT_PORT", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop one process we started, by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def wait_for_coap(
    port: int,
    path: str = "/.well-known/core",
    deadline: float = 15.0,
    exited: Callable[[], int | None] | None = None,
) -> None:
    """Poll with a NON GET until the server at 127.0.0.1:port answers; fail early
    when ``exited()`` says the server process is gone."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if exited is not None and exited() is not None:
            raise AssertionError(f"the server for port {port} exited")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            request = coap.Message(
                coap.Type.NON, coap.Code.GET, mid=1, options=coap.path_to_options(path)
            )
            with contextlib.suppress(OSError):
                sock.sendto(coap.encode(request), ("127.0.0.1", port))
                try:
                    sock.recvfrom(2048)
                    return
                except TimeoutError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"no CoAP server answered on port {port}")


def start_collector(
    args: list[str], log_path: Path, deadline: float = 60.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``iot-collector serve ARGS --port 0`` and return it with the UDP port it
    bound, read from its "serving" log line (no free-port race)."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "serve", "--port", "0", *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("msg") == "serving":
                    port = int(record["port"])
                    wait_for_coap(port, "/health", exited=proc.poll)
                    return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise AssertionError(f"the collector did not start: {log_path.read_text()[-800:]}")


_START_ATTEMPTS = 3  # a free port can be taken by a parallel test before the peer binds it


@pytest.fixture
def libcoap_server() -> Iterator[int]:
    """libcoap's example server with dynamic resources (PUT/POST can create)."""
    binary = shutil.which("coap-server-notls")
    if binary is None:
        pytest.skip("coap-server-notls (libcoap3-bin) is not installed: run make setup")
    for attempt in range(_START_ATTEMPTS):
        port = free_udp_port()
        proc = subprocess.Popen(
            [binary, "-A", "127.0.0.1", "-p", str(port), "-d", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_coap(port, exited=proc.poll)
        except AssertionError:
            stop_process(proc)
            if attempt == _START_ATTEMPTS - 1:
                raise
            continue
        try:
            yield port
        finally:
            stop_process(proc)
        return


AIOCOAP_RECORDER = r'''
"""A tiny aiocoap server: POST /events records each body and answers 2.01."""
import asyncio, json, sys
import aiocoap
import aiocoap.resource as resource

port, record_path = int(sys.argv[1]), sys.argv[2]

class Events(resource.Resource):
    async def render_post(self, request):
        with open(record_path, "a") as f:
            f.write(json.dumps({
                "type": request.mtype.name,
                "content_format": None if request.opt.content_format is None
                    else int(request.opt.content_format),
                "payload": request.payload.hex(),
            }) + "\n")
        return aiocoap.Message(code=aiocoap.CREATED)

async def main():
    site = resource.Site()
    site.add_resource(["events"], Events())
    site.add_resource([".well-known", "core"],
                      resource.WKCResource(site.get_resources_as_linkheader))
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()

asyncio.run(main())
'''


@dataclass
class Recorder:
    port: int
    path: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


@pytest.fixture
def aiocoap_recorder(tmp_path: Path) -> Iterator[Recorder]:
    script = tmp_path / "recorder.py"
    script.write_text(AIOCOAP_RECORDER)
    record = tmp_path / "records.jsonl"
    for attempt in range(_START_ATTEMPTS):
        port = free_udp_port()
        errors = tmp_path / f"recorder-{attempt}.err"
        with errors.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(port), str(record)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == "ready"
        proc.stdout.close()
        if not ready:
            stop_process(proc)
            if attempt == _START_ATTEMPTS - 1:
                raise AssertionError(f"aiocoap recorder did not start: {errors.read_text()[-500:]}")
            continue
        try:
            yield Recorder(port, record)
        finally:
            stop_process(proc)
        return
