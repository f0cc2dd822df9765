"""Everything the client parses from the network, under hypothesis: link format
(round trip with the codec's serialiser; any text parses or raises ValueError),
response payloads shown as text, and arbitrary datagrams fed to the endpoint."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coap
from coap import Code, Message, Type
from collector.client.commands import parse_link_format
from collector.client.endpoint import ClientEndpoint, RequestError, Response
from collector.client.outcomes import describe_payload, format_answer

# -- link format ---------------------------------------------------------------

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
_values = st.one_of(
    st.just(True),
    st.integers(min_value=0, max_value=10**6),
    st.text(max_size=20),
    st.lists(st.integers(min_value=0, max_value=65535), min_size=2, max_size=4),
)
_targets = st.text(max_size=30).filter(lambda t: ">" not in t)


@st.composite
def _links(draw: st.DrawFn) -> coap.Link:
    target = draw(_targets)
    names = draw(st.lists(_names, max_size=4, unique=True))
    return coap.Link(target, tuple((name, draw(_values)) for name in names))


def _expected(value: object) -> str | bool:
    if value is True:
        return True
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


@given(st.lists(_links(), max_size=5))
def test_link_format_round_trip(links: list[coap.Link]) -> None:
    parsed = parse_link_format(coap.link_format(links))
    assert [target for target, _ in parsed] == [link.target for link in links]
    for (_, attrs), link in zip(parsed, links, strict=True):
        assert attrs == {name: _expected(value) for name, value in link.attributes}


@given(st.text(max_size=80))
def test_link_format_parses_or_raises_value_error(text: str) -> None:
    try:
        links = parse_link_format(text)
    except ValueError:
        return
    assert all(isinstance(target, str) for target, _ in links)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("</a,b>;rt=x", [("/a,b", {"rt": "x"})]),
        ('</s>;title="a;b,c \\"q\\"";obs', [("/s", {"title": 'a;b,c "q"', "obs": True})]),
        (" </a> , </b>;ct=40 ", [("/a", {}), ("/b", {"ct": "40"})]),
    ],
)
def test_link_format_examples(text: str, expected: object) -> None:
    assert parse_link_format(text) == expected


@pytest.mark.parametrize("text", ["/a", "</a", '</a>;t="x', "</a>;=1", "</a> </b>"])
def test_link_format_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_link_format(text)


# -- response payloads as text ---------------------------------------------------


@given(
    payload=st.binary(max_size=300),
    content_format=st.none() | st.sampled_from([0, 40, 50, 60, 110, 112, 42, 9999]),
    code=st.sampled_from([Code.CONTENT, Code.BAD_REQUEST, Code.SERVICE_UNAVAILABLE, 0xFF]),
)
def test_any_response_payload_is_shown_on_one_line(
    payload: bytes, content_format: int | None, code: int
) -> None:
    options: tuple[tuple[int, bytes], ...] = ()
    if content_format is not None:
        options = ((12, coap.encode_uint(content_format)),)
    response = Response(Message(Type.ACK, code, 1, b"", options, payload), 0.0, 1, False)
    shown = describe_payload(response)
    assert "\n" not in shown
    line = format_answer("GET", "/health", response)
    assert "\n" not in line and line.startswith("GET /health -> ")


# -- arbitrary datagrams into the endpoint ------------------------------------------


@pytest.mark.integration
def test_endpoint_survives_any_datagram() -> None:
    """Random datagrams, including ones that match outstanding requests, never raise
    out of the endpoint; every outstanding request ends in a Response or RequestError."""
    loop = asyncio.new_event_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        endpoint = loop.run_until_complete(
            ClientEndpoint.connect("127.0.0.1", peer.getsockname()[1])
        )
        addr = ("127.0.0.1", peer.getsockname()[1])

        header = st.tuples(
            st.sampled_from(list(Type)),
            st.sampled_from([0, 1, 2, 65, 68, 69, 128, 163]),
            st.binary(max_size=10),
        )

        @settings(max_examples=300)
        @given(
            st.binary(max_size=40),
            header,
            st.integers(0, 7),
            st.booleans(),
            st.sampled_from([None, b"", b"\x00"]),
            st.integers(0, 0xFFFF),
        )
        def feed(
            raw: bytes,
            head: tuple[Type, int, bytes],
            pick: int,
            next_mid: bool,
            other_token: bytes | None,
            random_mid: int,
        ) -> None:
            endpoint.datagram_received(raw, addr)
            # A well-formed header that names an outstanding exchange's MID or token
            # (the draws do not depend on the endpoint's state; only their use does).
            mtype, code, payload = head
            known = list(endpoint._by_token.values())
            if known:
                exchange = known[pick % len(known)]
                mid = (exchange.mid + next_mid) & 0xFFFF
                token = exchange.token if other_token is None else other_token
            else:
                mid, token = random_mid, b""
            datagram = bytes([0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF])
            datagram += token + (b"\xff" + payload if payload else b"")
            endpoint.datagram_received(datagram, addr)

        async def outstanding() -> list[Response | BaseException]:
            tasks = [
                asyncio.create_task(endpoint.request(Code.GET, "/x", timeout=0.5)) for _ in range(5)
            ]
            await asyncio.sleep(0)
            feed()
            return await asyncio.gather(*tasks, return_exceptions=True)

        results = loop.run_until_complete(outstanding())
        assert all(isinstance(r, Response | RequestError) for r in results)
        endpoint.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        peer.close()
        loop.close()
