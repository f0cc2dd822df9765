"""hypothesis against a live worker: any datagram gets an RFC answer or none, never a
crash, and never a response larger than itself (RFC 7252 §11.3), except the
/.well-known/core document (ct 40).

Each example comes from a fresh source port (so one example's Message ID cannot hit
another's dedup entry) and is followed by a ping from the same port: the worker handles
a port's datagrams in order, so once the ping's RST is back every immediate answer to
the example is too; a short quiet period then catches the answers that wait for the
store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

import coap
from coap import Code, ContentFormat, Message, Type

from .conftest import CoapClient, Collector, event, row_count, start_collector

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    srv = start_collector(tmp_path_factory.mktemp("fuzz"), sqlite_synchronous="normal")
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


# --- strategies -------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def event_bodies(draw: st.DrawFn) -> Any:
    """Events that are valid, nearly valid, or anything JSON can say."""
    ev: dict[str, Any] = event()
    for _ in range(draw(st.integers(0, 2))):
        field = draw(
            st.sampled_from(
                ["sender", "origin", "namespace", "timestamp", "id", "payload", "extra"]
            )
        )
        ev[field] = draw(json_values)
    if draw(st.booleans()):
        ev["payload"] = {
            "type": draw(st.text(min_size=1, max_size=8)),
            "value": draw(json_values),
        }
    if draw(st.integers(0, 3)) == 0:
        return [ev, *draw(st.lists(st.builds(event), max_size=3))]
    return ev


@st.composite
def payloads(draw: st.DrawFn, fmt: int | None) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=64))
    body = draw(event_bodies())
    if fmt in (ContentFormat.CBOR, ContentFormat.SENML_CBOR):
        try:
            return cbor2.dumps(body)
        except (ValueError, cbor2.CBOREncodeError):
            return b"\xa0"
    return json.dumps(body).encode()


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A well-formed request, mostly aimed at our resources."""
    fmt = draw(st.none() | st.sampled_from([50, 50, 60, 60, 110, 112, 0, 40, 65000]))
    aimed = draw(st.integers(0, 9)) < 6  # mostly a POST to /events; else anything
    path = (
        "events"
        if aimed
        else draw(st.sampled_from(["event", "health", ".well-known/core", "", "x", "events/1"]))
    )
    code = Code.POST if aimed else draw(st.sampled_from([1, 2, 3, 4, 5]) | st.integers(1, 31))
    options = list(coap.path_to_options(path))
    if fmt is not None:
        options.append((12, coap.encode_uint(fmt)))
    if draw(st.integers(0, 3)) == 0:  # sometimes: options we may or may not know
        options += draw(
            st.lists(
                st.tuples(
                    st.sampled_from(
                        [1, 4, 5, 6, 8, 9, 14, 15, 17, 23, 27, 28, 60, 258, 2048, 2049]
                    ),
                    st.binary(max_size=10),
                ),
                max_size=3,
            )
        )
    options.sort(key=lambda o: o[0])
    msg = Message(
        draw(st.sampled_from([Type.CON, Type.NON])),
        code,
        draw(st.integers(0, 0xFFFF)),
        draw(st.binary(max_size=8)),
        tuple(options),
        draw(payloads(fmt)),
    )
    return coap.encode(msg)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x0D, 0x0E, 0x0F, 0xD0, 0xE0, 0xF0, 0xFF, 0x49]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[i]
    return bytes(data)


# Weighted towards requests that reach the resources (repeats weight one_of).
datagrams = st.one_of(
    st.binary(max_size=96),
    st.binary(min_size=4, max_size=64).map(lambda b: bytes([0x40 | (b[0] & 0x3F)]) + b[1:]),
    requests(),
    requests(),
    requests(),
    mutated(),
    mutated(),
)


# --- the property ------------------------------------------------------------------


def answers(server: Collector, data: bytes) -> list[bytes]:
    """Send `data` from a fresh port; every datagram that comes back for it."""
    with CoapClient(server.client_host, server.port) as client:
        client.send(data)
        probe_mid = ((data[2] << 8 | data[3]) ^ 0x8000) if len(data) >= 4 else 0x1234
        probe = bytes((0x40, 0, probe_mid >> 8, probe_mid & 0xFF))
        client.send(probe)
        got: list[bytes] = []
        probe_back = False
        while True:
            reply = client.recv_raw(0.05 if probe_back else 3.0)
            if reply is None:
                assert probe_back, "the worker did not answer the ping after this datagram"
                return got
            if reply == bytes((0x70, 0)) + probe[2:]:
                probe_back = True
                continue
            got.append(reply)
            msg = coap.decode(reply)
            if msg.type == Type.CON:
                client.ack(msg)


def allowed_to_exceed(data: bytes, reply: Message) -> bool:
    try:
        request = coap.decode(data)
    except coap.MessageFormatError:
        return False
    return (
        request.code == Code.GET
        and request.uri_path == (".well-known", "core")
        and reply.code == Code.CONTENT
        and reply.content_format == ContentFormat.LINK_FORMAT
    )


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.data_too_large],
)
@given(data=datagrams)
def test_any_datagram_gets_a_bounded_answer_or_none(server: Collector, data: bytes) -> None:
    got = answers(server, data)
    if not got:
        label("no answer")
    for raw in got:
        reply = coap.decode(raw)  # whatever we send is valid CoAP
        label(f"{reply.type.name} {coap.code_str(reply.code)}")
        if len(raw) > len(data):
            assert allowed_to_exceed(data, reply), (
                f"{len(raw)}-byte answer {reply!r} to a {len(data)}-byte datagram {data!r}"
            )
        try:
            request = coap.decode(data)
        except coap.MessageFormatError:
            assert (reply.type, reply.code) == (Type.RST, Code.EMPTY), reply
            assert raw[2:4] == data[2:4]
            continue
        if reply.type in (Type.ACK, Type.RST):
            assert reply.mid == request.mid
        if reply.code != Code.EMPTY:
            assert reply.token == request.token


def test_worker_survived_the_fuzzing(server: Collector) -> None:
    # Runs after the property (file order): same collector, same workers.
    workers = server.workers()
    ev = event()
    with server.client() as client:
        assert client.post_events(ev).code == Code.CREATED
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1
    assert server.workers() == workers
    log = server.stderr()
    assert "worker died" not in log
    assert "worker crashed" not in log
    assert "datagram handling failed" not in log, log[-2000:]
    assert server.proc.poll() is None and os.path.exists(f"/proc/{server.pid}")
