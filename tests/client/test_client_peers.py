"""Interoperability with CoAP servers we did not write: libcoap's example server
(coap-server-notls, C) and an aiocoap server (Python) with a recording POST
/events resource."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import orjson
import pytest

from coap import Code, Type
from collector.client.commands import parse_link_format
from collector.client.endpoint import ClientEndpoint, Response

from .conftest import REPO, Recorder, free_udp_port, run_cli, stop_process

pytestmark = pytest.mark.integration


# -- libcoap --------------------------------------------------------------------


def test_libcoap_send_creates_then_changes(libcoap_server: int) -> None:
    port = str(libcoap_server)
    first = run_cli("-P", port, "send", "temperature", "15")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("POST /events -> 2.01 {")
    second = run_cli("-P", port, "send", "--format", "cbor", "temperature", "16")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("POST /events -> 2.04 {")
    non = run_cli("-P", port, "send", "--non", "--format", "senml-json", "temperature", "17")
    assert non.returncode == 0, non.stderr
    assert non.stdout.startswith("POST /events -> 2.04 {")


def test_libcoap_discover_parses_link_format(libcoap_server: int) -> None:
    port = str(libcoap_server)
    assert run_cli("-P", port, "send", "t", "1").returncode == 0  # creates /events
    result = run_cli("-P", port, "discover")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "GET /.well-known/core -> 2.05"
    links = dict(parse_link_format(",".join(lines[1:])))
    assert {"/time", "/async", "/events"} <= set(links)
    assert links["/time"]["rt"] == "ticks" and links["/time"]["obs"] is True


def test_libcoap_discover_follows_block2(libcoap_server: int) -> None:
    """30 long-named resources make /.well-known/core span three 1024-byte blocks."""
    names = [f"/resource-with-a-rather-long-name-number-{i}" for i in range(1, 31)]

    async def create() -> None:
        endpoint = await ClientEndpoint.connect("127.0.0.1", libcoap_server)
        try:
            for name in names:
                response = await endpoint.request(Code.PUT, name, payload=b"x", timeout=10)
                assert response.code == Code.CREATED
            whole = await endpoint.get("/.well-known/core", timeout=10)
            assert len(whole.message.payload) > 2048
        finally:
            endpoint.close()

    asyncio.run(create())
    result = run_cli("-P", str(libcoap_server), "discover")
    assert result.returncode == 0, result.stderr
    targets = [target for target, _ in parse_link_format(",".join(result.stdout.splitlines()[1:]))]
    assert set(names) <= set(targets)


def test_libcoap_incremental_window(libcoap_server: int) -> None:
    result = run_cli(
        "-P",
        str(libcoap_server),
        "incremental",
        "-n",
        "20",
        "-f",
        "1.1",
        "--window",
        "4",
        "t",
        "15",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 20
    assert all(
        line.startswith(("POST /events -> 2.01 ", "POST /events -> 2.04 ")) for line in lines
    )


def test_libcoap_separate_response_is_received_and_acked(libcoap_server: int) -> None:
    """libcoap's /async?N answers with an empty ACK, then a CON response N s later."""

    async def scenario() -> Response:
        endpoint = await ClientEndpoint.connect("127.0.0.1", libcoap_server)
        try:
            return await endpoint.request(Code.GET, "/async", options=((15, b"1"),), timeout=10)
        finally:
            endpoint.close()

    response = asyncio.run(scenario())
    assert response.code == Code.CONTENT
    assert response.separate and response.message.type == Type.CON
    assert response.transmissions == 1


# -- aiocoap ---------------------------------------------------------------------

_DECODERS: dict[int, Callable[[bytes], Any]] = {
    50: orjson.loads,
    60: cbor2.loads,
    110: orjson.loads,
    112: cbor2.loads,
}


@pytest.mark.parametrize(
    ("fmt", "number"), [("json", 50), ("cbor", 60), ("senml-json", 110), ("senml-cbor", 112)]
)
@pytest.mark.parametrize("non", [False, True])
def test_aiocoap_every_format(aiocoap_recorder: Recorder, fmt: str, number: int, non: bool) -> None:
    args = ["-P", str(aiocoap_recorder.port), "-s", "demo", "-o", "probe1"]
    args += ["incremental", "-n", "3", "-f", "2", "--format", fmt, "--batch", "2", "temp", "5"]
    if non:
        args.append("--non")
    result = run_cli(*args, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert [line.split(" ", 4)[:4] for line in result.stdout.splitlines()] == [
        ["POST", "/events", "->", "2.01"]
    ] * 2
    records = aiocoap_recorder.records()
    assert len(records) == 2
    assert {r["type"] for r in records} == {"NON" if non else "CON"}
    assert {r["content_format"] for r in records} == {number}
    values = []
    for record in records:
        body = _DECODERS[number](bytes.fromhex(record["payload"]))
        items = body if isinstance(body, list) else [body]
        for item in items:
            if fmt.startswith("senml"):
                assert item["n"] == "probe1/temp"
                values.append(item["v"])
            else:
                assert (item["sender"], item["origin"]) == ("demo", "probe1")
                values.append(item["payload"]["value"])
    assert sorted(values) == [5, 10, 20]


def test_aiocoap_discover(aiocoap_recorder: Recorder) -> None:
    result = run_cli("-P", str(aiocoap_recorder.port), "discover")
    assert result.returncode == 0, result.stderr
    targets = [target for target, _ in parse_link_format(",".join(result.stdout.splitlines()[1:]))]
    assert "/events" in targets


# -- node-coap (the thesis' own CoAP library) ----------------------------------------

NODE_PEER = REPO / "bench" / "peers" / "node" / "server.js"


@pytest.fixture
def node_coap_server() -> Iterator[int]:
    node = shutil.which("node")
    if node is None or not (NODE_PEER.parent / "node_modules" / "coap").is_dir():
        pytest.skip("node and bench/peers/node/node_modules (npm coap) are not installed")
    port = free_udp_port()
    proc = subprocess.Popen(
        [node, str(NODE_PEER), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


def test_node_coap_thesis_demo_and_healthcheck(node_coap_server: int) -> None:
    port = str(node_coap_server)
    result = run_cli(
        "-P", port, "-s", "demoMemoria", "-o", "probe1",
        "incremental", "-n", "10", "-f", "1.1", "temperature", "15",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 10 and all(line.startswith("POST /events -> 2.01 {") for line in lines)
    health = run_cli("-P", port, "healthcheck")
    assert (health.returncode, health.stdout.strip()) == (0, 'GET /health -> 2.05 {"status":"ok"}')
    # node-coap answers 4.00 to a body that is not JSON: exit code 1.
    bad = run_cli("-P", port, "send", "--format", "cbor", "t", "1")
    assert bad.returncode == 1
    assert bad.stdout.startswith("POST /events -> 4.00 {") and "-- bad json" in bad.stdout
    non = run_cli("-P", port, "send", "--non", "t", "1", "--timeout", "10")
    assert non.returncode == 0, non.stderr
