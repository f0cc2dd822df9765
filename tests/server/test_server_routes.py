"""Every route and response code of `iot-collector serve`, for CON and NON requests.

One collector (sqlite sink, --max-body 512) serves the whole module; each test uses
its own ids/origins, so tests do not see each other's rows. Every error response is
checked against RFC 7252 §11.3: never larger than the request that caused it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest

import coap
from coap import Code, ContentFormat, Message, OptionNumber, Type

from .conftest import CoapClient, Collector, event, row_count, rows, start_collector

pytestmark = pytest.mark.integration

MAX_BODY = 1024
TYPES = [Type.CON, Type.NON]
# An event time an hour ago: inside the accepted window (--max-event-age, default 7d).
HOUR_AGO_S = int(time.time()) - 3600
HOUR_AGO_ISO = datetime.fromtimestamp(HOUR_AGO_S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.771Z")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    srv = start_collector(tmp_path_factory.mktemp("routes"), max_body=MAX_BODY)
    yield srv
    assert srv.terminate() == 0, srv.stderr_tail()


@pytest.fixture
def client(server: Collector) -> Iterator[CoapClient]:
    with server.client() as c:
        yield c


def ask(client: CoapClient, msg: Message, timeout: float = 5.0) -> tuple[bytes, Message]:
    """Send `msg`, return the response datagram and its decoding; check the
    type/token/MID rules that hold for every response to a request."""
    raw, reply = client.transact_raw(msg, timeout=timeout)
    assert reply.token == msg.token
    if msg.type == Type.CON:
        # piggybacked (ACK, same MID) or separate (CON, the test client ACKed it)
        assert (reply.type, reply.mid) == (Type.ACK, msg.mid) or reply.type == Type.CON
    else:
        assert reply.type == Type.NON, f"a NON request got a {reply.type.name} response"
    return raw, reply


def ask_error(
    client: CoapClient, msg: Message, code: int, *, diagnostic: str | None = None
) -> Message:
    """Send a request that must fail with `code`; check §11.3 and the diagnostic."""
    request = coap.encode(msg)
    raw, reply = ask(client, msg)
    assert reply.code == code, (
        f"expected {coap.code_str(code)}, got {reply.code!r}: {reply.payload!r}"
    )
    assert len(raw) <= len(request), f"{len(raw)}-byte response to a {len(request)}-byte request"
    if reply.payload:
        assert reply.content_format == ContentFormat.TEXT_PLAIN
        reply.payload.decode("utf-8")
    if diagnostic is not None:
        assert diagnostic in reply.payload.decode(), reply.payload
    return reply


def payload_of(body: Any, fmt: int | None) -> bytes:
    if fmt in (None, ContentFormat.JSON, ContentFormat.SENML_JSON):
        return json.dumps(body, separators=(",", ":")).encode()
    return cbor2.dumps(body)


# --- POST /events and /event ----------------------------------------------------


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("path", ["events", "event"])
@pytest.mark.parametrize(
    "fmt", [None, ContentFormat.JSON, ContentFormat.CBOR], ids=["none", "json", "cbor"]
)
@pytest.mark.parametrize("many", [False, True], ids=["single", "array"])
def test_post_events_is_created_and_stored(
    server: Collector, client: CoapClient, type_: Type, path: str, fmt: int | None, many: bool
) -> None:
    origin = f"probe-{uuid.uuid4().hex[:12]}"
    evs = [
        event(origin=origin, id=None, timestamp=HOUR_AGO_ISO),
        event(origin=origin, namespace="plant7", payload={"type": "door", "value": True}),
        event(origin=origin, sender="s2", payload={"type": "state", "value": "open"}),
    ]
    body: Any = evs if many else evs[0]
    msg = client.build(Code.POST, path, payload_of(body, fmt), fmt=fmt, type_=type_)
    _raw, reply = ask(client, msg)
    assert reply.code == Code.CREATED, reply.payload

    got = {r["type"]: r for r in rows(server.db, "origin = ?", (origin,))}
    assert len(got) == (3 if many else 1)
    first = got["temperature"]
    assert first["namespace"] == "default"
    assert first["sender"] == "tester"
    assert first["value"] == 15.5 and first["unit"] == "Cel"
    assert first["value_text"] is None and first["value_bool"] is None
    assert first["ts_ms"] == HOUR_AGO_S * 1000 + 771
    assert first["source"] == f"127.0.0.1:{client.port}"
    assert len(first["id"]) == 32  # no id given: the content hash
    if many:
        assert got["door"]["value_bool"] == 1 and got["door"]["value"] is None
        assert got["door"]["namespace"] == "plant7"
        assert got["door"]["client_id"] == evs[1]["id"]
        assert got["door"]["unit"] is None
        assert got["state"]["value_text"] == "open" and got["state"]["sender"] == "s2"


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(
    "fmt", [ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR], ids=["senml-json", "senml-cbor"]
)
@pytest.mark.parametrize("many", [False, True], ids=["single", "array"])
def test_post_senml_is_created_and_stored(
    server: Collector, client: CoapClient, type_: Type, fmt: int, many: bool
) -> None:
    device = f"urn:dev:mac:{uuid.uuid4().hex[:16]}"
    pack: list[dict[Any, Any]] = [
        {"bn": f"{device}:", "bt": HOUR_AGO_S, "n": "temperature", "u": "Cel", "v": 21.5}
    ]
    if many:
        pack += [{"n": "humidity", "u": "%RH", "v": 40, "t": 1}, {"n": "label", "vs": "ok"}]
    if fmt == ContentFormat.SENML_CBOR:  # RFC 8428 §6: integer labels in CBOR
        labels = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "t": 6}
        pack = [{labels[k]: v for k, v in rec.items()} for rec in pack]
    msg = client.build(Code.POST, "events", payload_of(pack, fmt), fmt=fmt, type_=type_)
    _raw, reply = ask(client, msg)
    assert reply.code == Code.CREATED, reply.payload

    got = {r["type"]: r for r in rows(server.db, "origin = ?", (device,))}
    assert set(got) == ({"temperature", "humidity", "label"} if many else {"temperature"})
    temp = got["temperature"]
    assert (temp["value"], temp["unit"], temp["ts_ms"]) == (21.5, "Cel", HOUR_AGO_S * 1000)
    assert temp["namespace"] == "default"
    assert temp["sender"] == "senml"
    if many:
        assert got["humidity"]["ts_ms"] == HOUR_AGO_S * 1000 + 1000
        assert got["label"]["value_text"] == "ok"


def test_senml_sender_and_namespace_come_from_the_query(
    server: Collector, client: CoapClient
) -> None:
    """SenML records carry no sender: a device names itself with ?sender= (and may set
    ?namespace=); other query parameters are ignored."""
    device = f"urn:dev:mac:{uuid.uuid4().hex[:16]}"
    pack = [{"bn": f"{device}:", "n": "temperature", "v": 20.0}]
    query = ((int(OptionNumber.URI_QUERY), b"sender=dev-17"),)
    query += ((int(OptionNumber.URI_QUERY), b"namespace=lab"),)
    query += ((int(OptionNumber.URI_QUERY), b"other=x"),)
    fmt = ContentFormat.SENML_JSON
    msg = client.build(Code.POST, "events", payload_of(pack, fmt), fmt=fmt, options=query)
    _raw, reply = ask(client, msg)
    assert reply.code == Code.CREATED, reply.payload
    (row,) = rows(server.db, "origin = ?", (device,))
    assert (row["sender"], row["namespace"]) == ("dev-17", "lab")

    empty = ((int(OptionNumber.URI_QUERY), b"sender="),)
    msg = client.build(Code.POST, "events", payload_of(pack, fmt), fmt=fmt, options=empty)
    _raw, reply = ask(client, msg)
    assert reply.code == Code.BAD_REQUEST
    assert b"sender" in reply.payload


# --- GET /health and /.well-known/core -----------------------------------------


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
def test_health_is_content(client: CoapClient, type_: Type) -> None:
    msg = client.build(Code.GET, "health", type_=type_, token=b"12345678")
    _raw, reply = ask(client, msg)
    assert reply.code == Code.CONTENT
    assert reply.content_format == ContentFormat.JSON
    assert json.loads(reply.payload) == 0  # HEALTH_OK


def test_health_reads_its_status_even_in_the_smallest_request(client: CoapClient) -> None:
    """Regression: the status body was dropped whenever it was larger than the
    request, so every real GET /health read empty. The status is one byte now, and
    fits the smallest GET /health (no token, no other option) within RFC 7252 §11.3."""
    msg = client.build(Code.GET, "health", token=b"")
    raw, reply = ask(client, msg)
    assert reply.code == Code.CONTENT
    assert reply.payload == b"0"
    assert len(raw) <= len(coap.encode(msg))


def test_health_body_is_cbor_when_accepted(client: CoapClient) -> None:
    msg = client.build(
        Code.GET,
        "health",
        token=b"",
        options=((int(OptionNumber.ACCEPT), coap.encode_uint(ContentFormat.CBOR)),),
    )
    raw, reply = ask(client, msg)
    assert reply.code == Code.CONTENT
    assert reply.content_format == ContentFormat.CBOR
    assert cbor2.loads(reply.payload) == 0
    assert len(raw) <= len(coap.encode(msg))


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
def test_well_known_core_is_link_format(client: CoapClient, type_: Type) -> None:
    msg = client.build(Code.GET, ".well-known/core", type_=type_)
    _raw, reply = ask(client, msg)
    assert reply.code == Code.CONTENT
    assert reply.content_format == ContentFormat.LINK_FORMAT
    links = parse_link_format(reply.payload.decode())
    assert {"/events", "/event", "/health"} <= set(links)
    assert links["/events"]["rt"] == "iot.events"
    assert set(links["/events"]["ct"].split()) == {"50", "60", "110", "112"}
    assert len(reply.payload) < 400  # "stays small"


def parse_link_format(text: str) -> dict[str, dict[str, str]]:
    """RFC 6690 §2, enough for our document: `<uri>;attr=value;attr="v v",...`."""
    links: dict[str, dict[str, str]] = {}
    for link in split_outside_quotes(text, ","):
        target, *params = split_outside_quotes(link, ";")
        assert target.startswith("<") and target.endswith(">"), target
        attrs = {}
        for param in params:
            name, _, value = param.partition("=")
            attrs[name] = value.strip('"')
        links[target[1:-1]] = attrs
    return links


def split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


# --- 4.04, 4.05, 4.02, 4.15, 4.13, 4.00 ----------------------------------------


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        (Code.GET, "nope"),
        (Code.POST, "events/x"),
        (Code.GET, ""),
        (Code.DELETE, "a/b/c"),
        (Code.POST, "Events"),
    ],
)
def test_unknown_path_is_not_found(client: CoapClient, type_: Type, method: int, path: str) -> None:
    ask_error(client, client.build(method, path, type_=type_), Code.NOT_FOUND)


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        (Code.GET, "events"),
        (Code.PUT, "events"),
        (Code.DELETE, "event"),
        (Code.POST, "health"),
        (Code.PUT, ".well-known/core"),
        (Code.FETCH, "health"),
    ],
)
def test_wrong_method_is_not_allowed(
    client: CoapClient, type_: Type, method: int, path: str
) -> None:
    ask_error(client, client.build(method, path, b"{}", type_=type_), Code.METHOD_NOT_ALLOWED)


@pytest.mark.parametrize("number", [9, 2049, 65001])
@pytest.mark.parametrize(("method", "path"), [(Code.POST, "events"), (Code.GET, "health")])
def test_unrecognised_critical_option_in_con_is_bad_option(
    server: Collector, client: CoapClient, number: int, method: int, path: str
) -> None:
    ev = event()
    msg = client.build(
        method,
        path,
        json.dumps(ev).encode() if method == Code.POST else b"",
        options=((number, b"\x01"),),
    )
    ask_error(client, msg, Code.BAD_OPTION)
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0


def test_elective_unknown_option_is_ignored(client: CoapClient) -> None:
    msg = client.build(Code.POST, "events", json.dumps(event()).encode(), options=((2048, b"zz"),))
    assert ask(client, msg)[1].code == Code.CREATED


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("fmt", [0, 40, 41, 42, 10000])
def test_unsupported_content_format(
    server: Collector, client: CoapClient, type_: Type, fmt: int
) -> None:
    ev = event()
    msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=fmt, type_=type_)
    ask_error(client, msg, Code.UNSUPPORTED_CONTENT_FORMAT)
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("size", [MAX_BODY + 1, 4000, 60000])
def test_body_over_max_body_is_too_large_with_size1(
    server: Collector, client: CoapClient, type_: Type, size: int
) -> None:
    ev = event(payload={"type": "blob", "value": "x"})
    text = json.dumps(ev)
    ev["payload"]["value"] = "x" * (size - len(text) + 1)
    body = json.dumps(ev).encode()
    assert len(body) == size
    reply = ask_error(
        client,
        client.build(Code.POST, "events", body, fmt=50, type_=type_),
        Code.REQUEST_ENTITY_TOO_LARGE,
    )
    assert reply.uint_option(OptionNumber.SIZE1) == MAX_BODY
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0


def test_body_of_exactly_max_body_is_accepted(server: Collector, client: CoapClient) -> None:
    ev = event(payload={"type": "blob", "value": "x"})
    ev["payload"]["value"] = "x" * (MAX_BODY - len(json.dumps(ev)) + 1)
    body = json.dumps(ev).encode()
    assert len(body) == MAX_BODY
    assert ask(client, client.build(Code.POST, "events", body, fmt=50))[1].code == Code.CREATED
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


INVALID = [
    pytest.param(event(sender=None), "sender", id="missing-sender"),
    pytest.param(event(origin=""), "origin", id="empty-origin"),
    pytest.param(event(payload={"value": 1}), "payload.type", id="missing-type"),
    pytest.param(event(payload={"type": "t"}), "payload.value", id="missing-value"),
    pytest.param(event(payload={"type": "t", "value": [1]}), "payload.value", id="list-value"),
    pytest.param(event(timestamp="yesterday"), "timestamp", id="bad-timestamp"),
    pytest.param(event(timestmap="2026-01-01T00:00:00Z"), "timestmap", id="misspelt-field"),
    pytest.param(event(namespace=7), "namespace", id="namespace-not-text"),
]


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("bad", "field"), INVALID)
def test_invalid_event_is_bad_request_naming_the_field(
    server: Collector, client: CoapClient, type_: Type, bad: dict[str, Any], field: str
) -> None:
    # Padding in an elective option makes room for the whole diagnostic.
    msg = client.build(
        Code.POST,
        "events",
        json.dumps(bad).encode(),
        fmt=50,
        type_=type_,
        options=((int(OptionNumber.URI_QUERY), b"p" * 60),),
    )
    ask_error(client, msg, Code.BAD_REQUEST, diagnostic=field)


@pytest.mark.parametrize("fmt", [ContentFormat.JSON, ContentFormat.CBOR], ids=["json", "cbor"])
def test_array_with_one_bad_event_stores_nothing(
    server: Collector, client: CoapClient, fmt: int
) -> None:
    good = [event() for _ in range(4)]
    body = [*good[:2], event(payload={"type": "t", "value": None}), *good[2:]]
    ask_error(
        client,
        client.build(Code.POST, "events", payload_of(body, fmt), fmt=fmt),
        Code.BAD_REQUEST,
        diagnostic="event[2].payload.value",
    )
    ids = [e["id"] for e in good]
    assert row_count(server.db, f"client_id IN ({','.join('?' * len(ids))})", tuple(ids)) == 0


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"{not json", 50),
        (b"", 50),
        (b"[]", 50),
        (b"42", 50),
        (b"\xff\xfe", 60),
        (cbor2.dumps([1, 2]), 60),
        (b'[{"n": "x"}]', 110),
        (cbor2.dumps({"a": 1}), 112),
    ],
)
def test_malformed_body_is_bad_request(client: CoapClient, body: bytes, fmt: int) -> None:
    ask_error(client, client.build(Code.POST, "events", body, fmt=fmt), Code.BAD_REQUEST)


def test_tiny_request_gets_a_diagnostic_cut_to_fit(client: CoapClient) -> None:
    # 4-byte header, no token, a 1-byte Uri-Path "x": the smallest request there is.
    msg = Message(Type.CON, Code.GET, client.next_mid(), b"", ((11, b"x"),))
    request = coap.encode(msg)
    assert len(request) == 6
    raw, reply = ask(client, msg)
    assert reply.code == Code.NOT_FOUND
    assert len(raw) <= len(request)


def test_bad_request_with_a_long_token_fits(client: CoapClient) -> None:
    msg = Message(Type.NON, Code.POST, client.next_mid(), b"12345678", ((11, b"events"),), b"{")
    raw, reply = ask(client, msg)
    assert reply.code == Code.BAD_REQUEST
    assert len(raw) <= len(coap.encode(msg))


@pytest.mark.parametrize("number", [9, 2049])
def test_unrecognised_critical_option_in_non_is_rejected(
    server: Collector, client: CoapClient, number: int
) -> None:
    # RFC 7252 §5.4.1: such a NON "MUST cause the message to be rejected (§4.3)": ignored
    # or RST. A NON 4.02 (what most servers send, and what a device can act on) is
    # tolerated; storing the event is not.
    ev = event()
    msg = client.build(
        Code.POST, "events", json.dumps(ev).encode(), type_=Type.NON, options=((number, b"\x01"),)
    )
    request = coap.encode(msg)
    raw = client.exchange_raw(request, timeout=0.5)
    if raw is not None:
        reply = coap.decode(raw)
        assert (reply.type, reply.code, reply.mid) == (Type.RST, Code.EMPTY, msg.mid) or (
            reply.type == Type.NON and reply.code == Code.BAD_OPTION and reply.token == msg.token
        ), reply
        assert len(raw) <= len(request)
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0


def send_blocks(
    client: CoapClient,
    body: bytes,
    szx: int,
    *,
    type_: Type = Type.CON,
    order: list[int] | None = None,
) -> list[tuple[bytes, bytes, Message]]:
    """POST `body` to /events in Block1 blocks of 2**(szx+4) bytes (RFC 7959 §2.5), one
    exchange per block; returns (request datagram, response datagram, response) each."""
    size = 1 << (szx + 4)
    count = (len(body) + size - 1) // size
    out = []
    for num in order if order is not None else range(count):
        block = coap.Block(num, num < count - 1, szx).encode()
        chunk = body[num * size : (num + 1) * size]
        msg = client.build(Code.POST, "events", chunk, fmt=50, type_=type_, options=((27, block),))
        raw, reply = ask(client, msg)
        out.append((coap.encode(msg), raw, reply))
        if reply.code != Code.CONTINUE:
            break
    return out


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
def test_block1_transfer_is_assembled_and_stored(
    server: Collector, client: CoapClient, type_: Type
) -> None:
    evs = [event() for _ in range(6)]
    body = json.dumps(evs, separators=(",", ":")).encode()
    assert 512 < len(body) <= MAX_BODY
    answers = send_blocks(client, body, szx=3, type_=type_)  # 128-byte blocks
    *middle, (last_req, last_raw, last) = answers
    for request, raw, reply in middle:
        assert reply.code == Code.CONTINUE  # 2.31, Block1 echoed (§2.3)
        assert reply.option(27) == coap.decode(request).option(27)
        assert len(raw) <= len(request)
    assert last.code == Code.CREATED, last.payload
    assert len(last_raw) <= len(last_req)
    ids = tuple(e["id"] for e in evs)
    assert row_count(server.db, f"client_id IN ({','.join('?' * len(ids))})", ids) == len(ids)


def test_block1_out_of_order_is_incomplete(server: Collector, client: CoapClient) -> None:
    evs = [event() for _ in range(6)]
    body = json.dumps(evs, separators=(",", ":")).encode()
    answers = send_blocks(client, body, szx=3, order=[0, 2])
    assert [r.code for _, _, r in answers] == [Code.CONTINUE, Code.REQUEST_ENTITY_INCOMPLETE]
    ids = tuple(e["id"] for e in evs)
    assert row_count(server.db, f"client_id IN ({','.join('?' * len(ids))})", ids) == 0


def test_block1_body_over_max_body_is_too_large(server: Collector, client: CoapClient) -> None:
    evs = [event() for _ in range(12)]
    body = json.dumps(evs, separators=(",", ":")).encode()
    assert len(body) > MAX_BODY
    answers = send_blocks(client, body, szx=4)  # 256-byte blocks
    request, raw, last = answers[-1]
    assert last.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert last.uint_option(OptionNumber.SIZE1) == MAX_BODY
    assert len(raw) <= len(request)
    assert all(r.code == Code.CONTINUE for _, _, r in answers[:-1])
    ids = tuple(e["id"] for e in evs)
    assert row_count(server.db, f"client_id IN ({','.join('?' * len(ids))})", ids) == 0


def test_block1_with_the_whole_body_in_block_zero_is_accepted(
    server: Collector, client: CoapClient
) -> None:
    ev = event()
    whole = coap.Block(0, False, 6).encode()  # block 0, no more: the whole body
    msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50, options=((27, whole),))
    assert ask(client, msg)[1].code == Code.CREATED
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
def test_duplicate_non_is_stored_once(server: Collector, client: CoapClient, type_: Type) -> None:
    origin = f"dupnon-{uuid.uuid4().hex[:10]}"
    msg = client.build(
        Code.POST, "events", json.dumps(event(origin=origin, id=None)).encode(), fmt=50, type_=type_
    )
    data = coap.encode(msg)
    first = client.exchange_raw(data, 5.0)
    assert first is not None and coap.decode(first).code == Code.CREATED
    for _ in range(3):
        again = client.exchange_raw(data, 0.3)
        # §4.5: a duplicate NON SHOULD be ignored; answering it again is harmless only
        # with the very same bytes.
        assert again is None or again == first
    assert row_count(server.db, "origin = ?", (origin,)) == 1


@pytest.mark.parametrize(
    ("number", "value"),
    [(35, b"coap://example.com/events"), (39, b"coap")],
    ids=["proxy-uri", "proxy-scheme"],
)
def test_proxy_request_is_proxying_not_supported(
    server: Collector, client: CoapClient, number: int, value: bytes
) -> None:
    ev = event()
    msg = client.build(
        Code.POST, "events", json.dumps(ev).encode(), fmt=50, options=((number, value),)
    )
    ask_error(client, msg, Code.PROXYING_NOT_SUPPORTED)
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0


@pytest.mark.parametrize("type_", TYPES, ids=lambda t: t.name)
def test_long_options_with_a_body_within_max_body_are_accepted(
    server: Collector, client: CoapClient, type_: Type
) -> None:
    ev = event(payload={"type": "blob", "value": "x"})
    ev["payload"]["value"] = "x" * (MAX_BODY - 100 - len(json.dumps(ev)))
    body = json.dumps(ev).encode()
    queries = tuple((int(OptionNumber.URI_QUERY), b"q" * 250) for _ in range(5))  # elective
    msg = client.build(Code.POST, "events", body, fmt=50, type_=type_, options=queries)
    assert len(body) <= MAX_BODY < len(coap.encode(msg)) - MAX_BODY
    assert ask(client, msg)[1].code == Code.CREATED
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1
