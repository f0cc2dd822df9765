"""End to end on the sqlite sink: `iot-collector serve` over real UDP answers a reused
client id 4.09, control characters and times outside the window 4.00 (issue 11), and
keeps one device's client ids apart from another's (issue 15)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from coap import Code
from tests.server.conftest import Collector, rows, start_collector

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    srv = start_collector(
        tmp_path_factory.mktemp("integrity"), max_event_age="36h", max_event_future="90s"
    )
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


def reading(value: float, **overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "sender": "dev-17",
        "origin": "probe1",
        "payload": {"type": "temperature", "value": value, "unit": "Cel"},
    }
    ev.update(overrides)
    return ev


def post(server: Collector, body: Any) -> tuple[int, str]:
    with server.client() as client:
        reply = client.post_events(body)
    return reply.code, reply.payload.decode()


def test_reused_client_id_gets_409_and_the_identical_event_201(server: Collector) -> None:
    key = f"k-{uuid.uuid4().hex}"
    assert post(server, reading(21.5, id=key)) == (Code.CREATED, "")
    assert post(server, reading(21.5, id=key)) == (Code.CREATED, "")  # a retry: idempotent
    code, diagnostic = post(server, [reading(1.0, id=f"other-{key}"), reading(999.0, id=key)])
    assert (code, diagnostic) == (Code.CONFLICT, "event[1].id: already used for another event")
    values = sorted(r["value"] for r in rows(server.db, "client_id LIKE ?", (f"%{key}",)))
    assert values == [1.0, 21.5]  # the first reading kept, the conflicting one not stored


def test_another_sender_cannot_occupy_a_devices_client_id(server: Collector) -> None:
    key = f"k-{uuid.uuid4().hex}"
    assert post(server, reading(999.0, id=key, sender="attacker"))[0] == Code.CREATED
    assert post(server, reading(21.5, id=key))[0] == Code.CREATED
    got = {r["sender"]: r["value"] for r in rows(server.db, "client_id = ?", (key,))}
    assert got == {"attacker": 999.0, "dev-17": 21.5}


def test_control_character_in_an_identifier_is_400_naming_it(server: Collector) -> None:
    origin = f"p-{uuid.uuid4().hex}"
    code, diagnostic = post(server, [reading(1.0, origin=origin), reading(2.0, sender="a\x00b")])
    assert (code, diagnostic) == (Code.BAD_REQUEST, "event[1].sender: control character")
    assert not rows(server.db, "origin = ?", (origin,))


def test_event_time_outside_the_configured_window_is_400_saying_why(server: Collector) -> None:
    now = time.time()
    assert post(server, reading(1.0, timestamp=now - 37 * 3600)) == (
        Code.BAD_REQUEST,
        "timestamp: older than 36h",
    )
    assert post(server, reading(1.0, timestamp=now + 3600)) == (
        Code.BAD_REQUEST,
        "timestamp: more than 90s in the future",
    )
    origin = f"p-{uuid.uuid4().hex}"
    assert post(server, reading(1.0, origin=origin, timestamp=now - 35 * 3600))[0] == Code.CREATED
    assert len(rows(server.db, "origin = ?", (origin,))) == 1
