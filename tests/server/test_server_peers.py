"""Real peers as clients: libcoap's `coap-client-notls` and `aiocoap-client`.

Both are separate programs with their own CoAP stacks; each test parses what they
print. coap-client exits 0 even on an error response, so its `-v 6` message dump
(`t:ACK c:2.01 ...`) is read; `-B` bounds its wait. aiocoap-client logs the response
code with `-v` and exits non-zero on an error code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from .conftest import Collector, event, rows, start_collector

pytestmark = pytest.mark.integration

LIBCOAP = "coap-client-notls"
AIOCOAP = str(Path(sys.executable).with_name("aiocoap-client"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    srv = start_collector(tmp_path_factory.mktemp("peers"), workers=2)
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


def libcoap(server: Collector, *args: str, path: str) -> str:
    if shutil.which(LIBCOAP) is None:
        pytest.fail(f"{LIBCOAP} not on PATH: install Debian's libcoap3-bin (make setup does)")
    url = f"coap://127.0.0.1:{server.port}/{path}"
    result = subprocess.run(
        [LIBCOAP, "-B", "5", *args, url], capture_output=True, text=True, timeout=20, check=False
    )
    return result.stdout + result.stderr


def response_line(output: str, type_: str) -> str:
    """The message dump line of the response: `v:1 t:ACK c:2.01 i:... {token} [...]`."""
    found = [line for line in output.splitlines() if re.search(rf"\bt:{type_} c:[2-5]\.\d\d", line)]
    assert found, f"no {type_} response in coap-client output:\n{output}"
    return found[-1]


def test_libcoap_json_post(server: Collector) -> None:
    origin = f"lc-{uuid.uuid4().hex[:10]}"
    body = json.dumps(event(origin=origin, id=None))
    out = libcoap(server, "-v", "6", "-m", "post", "-t", "json", "-e", body, path="events")
    assert " c:2.01 " in response_line(out, "ACK")
    (row,) = rows(server.db, "origin = ?", (origin,))
    assert (row["sender"], row["type"], row["value"]) == ("tester", "temperature", 15.5)


def test_libcoap_cbor_post_from_file(server: Collector, tmp_path: Path) -> None:
    evs = [event(), event(payload={"type": "door", "value": False})]
    body = tmp_path / "events.cbor"
    body.write_bytes(cbor2.dumps(evs))
    out = libcoap(server, "-v", "6", "-m", "post", "-t", "60", "-f", str(body), path="event")
    assert " c:2.01 " in response_line(out, "ACK")
    for ev in evs:
        assert len(rows(server.db, "client_id = ?", (ev["id"],))) == 1


def test_libcoap_non_post(server: Collector) -> None:
    ev = event()
    out = libcoap(
        server, "-v", "6", "-N", "-m", "post", "-t", "json", "-e", json.dumps(ev), path="events"
    )
    assert " c:2.01 " in response_line(out, "NON")
    assert len(rows(server.db, "client_id = ?", (ev["id"],))) == 1


def test_libcoap_invalid_event_gets_400_with_diagnostic(server: Collector) -> None:
    ev = event(sender=None)
    out = libcoap(
        server, "-v", "6", "-m", "post", "-t", "json", "-e", json.dumps(ev), path="events"
    )
    line = response_line(out, "ACK")
    assert " c:4.00 " in line and "sender" in line
    assert not rows(server.db, "client_id = ?", (ev["id"],))


def test_libcoap_get_well_known_core(server: Collector) -> None:
    out = libcoap(server, "-m", "get", path=".well-known/core")
    for target in ("</events>", "</event>", "</health>"):
        assert target in out, out
    assert 'rt="iot.events"' in out


def test_libcoap_get_health(server: Collector) -> None:
    out = libcoap(server, "-v", "6", "-m", "get", path="health")
    assert " c:2.05 " in response_line(out, "ACK")


def aiocoap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIOCOAP, "-v", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("non", [False, True], ids=["con", "non"])
def test_aiocoap_post(server: Collector, non: bool) -> None:
    ev = event()
    result = aiocoap(
        *(["--non"] if non else []),
        "-m",
        "POST",
        "--content-format",
        "application/json",
        "--payload",
        json.dumps(ev),
        f"coap://127.0.0.1:{server.port}/events",
    )
    assert result.returncode == 0, result.stderr
    assert "2.01 Created" in result.stderr
    assert len(rows(server.db, "client_id = ?", (ev["id"],))) == 1


def test_aiocoap_post_invalid_is_an_error(server: Collector) -> None:
    result = aiocoap("-m", "POST", "--payload", "[]", f"coap://127.0.0.1:{server.port}/events")
    assert result.returncode != 0
    assert "4.00 Bad Request" in result.stdout + result.stderr


@pytest.mark.parametrize(("path", "ct"), [("health", None), (".well-known/core", "40")])
def test_aiocoap_get(server: Collector, path: str, ct: str | None) -> None:
    result = aiocoap(f"coap://127.0.0.1:{server.port}/{path}")
    assert result.returncode == 0, result.stderr
    assert "2.05 Content" in result.stderr
    if ct:
        assert f"ContentFormat {ct}" in result.stderr
        assert "</events>" in result.stdout


@pytest.mark.parametrize("peer", ["libcoap", "aiocoap"])
def test_peer_posts_a_two_kilobyte_array(server: Collector, tmp_path: Path, peer: str) -> None:
    evs = [event() for _ in range(16)]
    body = json.dumps(evs)
    assert 1024 < len(body) < 16384  # under --max-body, over one 1024-byte block
    if peer == "libcoap":
        path = tmp_path / "body.json"
        path.write_text(body)
        out = libcoap(server, "-v", "6", "-m", "post", "-t", "json", "-f", str(path), path="events")
        assert " c:2.01 " in response_line(out, "ACK")
    else:
        result = aiocoap(
            "-m", "POST", "--content-format", "application/json", "--payload", body,
            f"coap://127.0.0.1:{server.port}/events",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-500:]
    assert (
        len(
            rows(
                server.db, f"client_id IN ({','.join('?' * len(evs))})", tuple(e["id"] for e in evs)
            )
        )
        == 16
    )
