"""Deterministic ids: idempotent across exchanges when timed, distinct when not."""

from __future__ import annotations

import cbor2
import orjson
from hypothesis import given
from hypothesis import strategies as st

from collector.events import scoped_id

from .helpers import decode

TIMED = {
    "sender": "demo",
    "origin": "probe1",
    "payload": {"type": "temperature", "value": 15.5, "unit": "Cel"},
    "timestamp": "2026-11-25T14:08:24.771Z",
}
UNTIMED = {k: v for k, v in TIMED.items() if k != "timestamp"}


def one_id(event: object, content_format: int | None = None, **kw: object) -> str:
    payload = cbor2.dumps(event) if content_format == 60 else orjson.dumps(event)
    [decoded] = decode(payload, content_format, **kw)
    return decoded.id


def test_client_id_is_scoped_by_namespace_and_sender() -> None:
    # issue 15: a device that sends another's client id first must not occupy it.
    own = one_id({**TIMED, "id": "my-key"})
    assert own == scoped_id("default", "demo", "my-key")
    assert one_id({**TIMED, "id": "my-key", "sender": "squatter"}) != own
    assert one_id({**TIMED, "id": "my-key", "namespace": "other"}) != own
    # The id does not depend on the content: a reuse with other content meets the
    # first event in the store (and gets 4.09 there).
    assert one_id({**TIMED, "id": "my-key", "payload": {"type": "t", "value": 999}}) == own
    [event] = decode(orjson.dumps({**TIMED, "id": "my-key"}))
    assert event.client_id == "my-key" and event.document()["client_id"] == "my-key"


def test_content_id_events_have_no_client_id() -> None:
    [event] = decode(orjson.dumps(TIMED))
    assert event.client_id is None and "client_id" not in event.document()


def test_timed_event_same_id_across_sources_mids_workers_and_receive_times() -> None:
    a = one_id(TIMED, source="10.0.0.1:1", mid=1, worker=0, received_ms=1)
    b = one_id(TIMED, source="10.0.0.2:9", mid=2, worker=3, received_ms=99_999)
    assert a == b


def test_timed_event_same_id_in_json_and_cbor() -> None:
    assert one_id(TIMED) == one_id(TIMED, 60)


def test_equivalent_timestamps_give_one_id() -> None:
    offset = {**TIMED, "timestamp": "2026-11-25T15:08:24.771+01:00"}
    epoch = {**TIMED, "timestamp": 1795615704.771}
    assert one_id(TIMED) == one_id(offset) == one_id(epoch)


def test_untimed_event_id_differs_by_mid_and_source() -> None:
    base = one_id(UNTIMED, mid=1)
    assert one_id(UNTIMED, mid=1) == base
    assert one_id(UNTIMED, mid=2) != base
    assert one_id(UNTIMED, mid=1, source="192.0.2.8:40000") != base


def test_untimed_identical_events_in_one_request_are_distinct() -> None:
    events = decode(orjson.dumps([UNTIMED, UNTIMED]))
    assert events[0].id != events[1].id


def test_timed_identical_events_in_one_request_share_an_id() -> None:
    # The same reading twice is one reading: the store keeps it once.
    events = decode(orjson.dumps([TIMED, TIMED]))
    assert events[0].id == events[1].id


def test_value_type_is_part_of_the_id() -> None:
    ids = {
        one_id({**TIMED, "payload": {"type": "t", "value": value}})
        for value in (1, "1", "1.0", True)
    }
    assert len(ids) == 4
    # An integer and its float are the same reading, and so are 0.0 and -0.0.
    assert one_id({**TIMED, "payload": {"type": "t", "value": 1}}) == one_id(
        {**TIMED, "payload": {"type": "t", "value": 1.0}}
    )
    assert one_id({**TIMED, "payload": {"type": "t", "value": 0.0}}) == one_id(
        {**TIMED, "payload": {"type": "t", "value": -0.0}}
    )


def test_missing_unit_differs_from_a_unit() -> None:
    no_unit = {**TIMED, "payload": {"type": "temperature", "value": 15.5}}
    assert one_id(no_unit) != one_id(TIMED)


# Identifiers without control characters (those are refused: test_events_controls.py).
names = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=8)


@given(
    a=st.tuples(names, names, names, names, names),
    b=st.tuples(names, names, names, names, names),
)
def test_different_content_gives_different_ids(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    def event(parts: tuple[str, ...]) -> dict[str, object]:
        namespace, sender, origin, type_, value = parts
        return {
            "namespace": namespace,
            "sender": sender,
            "origin": origin,
            "payload": {"type": type_, "value": value},
            "timestamp": 0,
        }

    assert (one_id(event(a)) == one_id(event(b))) == (a == b)


sources = st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}\Z")
mids = st.integers(0, 0xFFFF)


@given(sources, sources, mids, mids, st.integers(0, 2**41), st.integers(0, 2**41))
def test_timed_ids_ignore_the_exchange(
    source_a: str, source_b: str, mid_a: int, mid_b: int, recv_a: int, recv_b: int
) -> None:
    a = one_id(TIMED, source=source_a, mid=mid_a, received_ms=recv_a)
    b = one_id(TIMED, source=source_b, mid=mid_b, received_ms=recv_b)
    assert a == b


@given(sources, sources, mids, mids)
def test_untimed_ids_follow_the_exchange(
    source_a: str, source_b: str, mid_a: int, mid_b: int
) -> None:
    # The same receive time on purpose: only source and mid may tell them apart.
    a = one_id(UNTIMED, source=source_a, mid=mid_a, received_ms=1)
    b = one_id(UNTIMED, source=source_b, mid=mid_b, received_ms=1)
    assert (a == b) == ((source_a, mid_a) == (source_b, mid_b))
