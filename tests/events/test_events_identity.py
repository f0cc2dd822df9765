"""An authenticated device writes only as its identity's sender and namespace (issue 15)."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coap.codes import Code
from collector.events import Forbidden, InvalidEvent, decode_json_events, scoped_id
from collector.identity import Identity

from .helpers import ANY_TIME, RECEIVED_MS, SOURCE, decode

DEV17 = Identity("dev-17", "lab", "dev-17")
EVENT: dict[str, Any] = {"origin": "probe1", "payload": {"type": "t", "value": 21.5}}


def encode(body: Any, content_format: int | None) -> bytes:
    return cbor2.dumps(body) if content_format == 60 else orjson.dumps(body)


@pytest.mark.parametrize("content_format", [None, 60])
def test_missing_sender_and_namespace_are_the_identitys(content_format: int | None) -> None:
    body = [EVENT, {**EVENT, "namespace": None}, {**EVENT, "sender": "dev-17", "namespace": "lab"}]
    events = decode(encode(body, content_format), content_format, identity=DEV17)
    assert [(e.namespace, e.sender, e.identity) for e in events] == [
        ("lab", "dev-17", "dev-17")
    ] * 3
    assert events[0].document()["identity"] == "dev-17"


@pytest.mark.parametrize("content_format", [None, 60])
def test_another_sender_in_the_body_is_forbidden(content_format: int | None) -> None:
    body = [EVENT, {**EVENT, "sender": "dev-18"}]
    with pytest.raises(
        Forbidden, match=r"^event\[1\]\.sender: this device may only write as dev-17$"
    ) as info:
        decode(encode(body, content_format), content_format, identity=DEV17)
    assert info.value.code == Code.FORBIDDEN


def test_another_namespace_in_the_body_is_forbidden() -> None:
    with pytest.raises(
        Forbidden, match=r"^namespace: this device may only write in namespace lab$"
    ):
        decode(orjson.dumps({**EVENT, "namespace": "default"}), identity=DEV17)


def test_without_identity_a_sender_is_still_required() -> None:
    with pytest.raises(InvalidEvent, match=r"^sender: required$"):
        decode(orjson.dumps(EVENT))
    [event] = decode(orjson.dumps({**EVENT, "sender": "x"}))
    assert event.identity is None and "identity" not in event.document()


def test_an_invalid_sender_is_a_400_before_authorisation() -> None:
    with pytest.raises(InvalidEvent, match=r"^sender: must be a string$"):
        decode(orjson.dumps({**EVENT, "sender": 17}), identity=DEV17)


def test_the_hot_path_entry_takes_the_identity_positionally() -> None:
    [event] = decode_json_events(orjson.dumps(EVENT), SOURCE, 1, RECEIVED_MS, 0, ANY_TIME, DEV17)
    assert (event.sender, event.namespace, event.identity) == ("dev-17", "lab", "dev-17")


def test_authenticated_client_ids_are_apart_from_plain_ones() -> None:
    # A plain-CoAP writer claiming dev-17 cannot occupy the authenticated dev-17's ids.
    body = {**EVENT, "sender": "dev-17", "namespace": "lab", "id": "k"}
    [plain] = decode(orjson.dumps(body))
    [authed] = decode(orjson.dumps(body), identity=DEV17)
    assert plain.id == scoped_id("lab", "dev-17", "k", False)
    assert authed.id == scoped_id("lab", "dev-17", "k", True)
    assert plain.id != authed.id and plain.client_id == authed.client_id == "k"


@pytest.mark.parametrize("content_format", [110, 112])
def test_senml_takes_sender_and_namespace_from_the_identity(content_format: int) -> None:
    records = [{"n": "probe1/t", "v": 1.0}]
    pack = (
        cbor2.dumps([{0: "probe1/t", 2: 1.0}]) if content_format == 112 else orjson.dumps(records)
    )
    [event] = decode(pack, content_format, identity=DEV17)
    assert (event.sender, event.namespace, event.identity) == ("dev-17", "lab", "dev-17")
    [event] = decode(pack, content_format, identity=DEV17, default_sender="dev-17")
    assert event.sender == "dev-17"
    with pytest.raises(Forbidden, match=r"^\?sender: this device may only write as dev-17$"):
        decode(pack, content_format, identity=DEV17, default_sender="dev-18")
    with pytest.raises(
        Forbidden, match=r"^\?namespace: this device may only write in namespace lab$"
    ):
        decode(pack, content_format, identity=DEV17, default_namespace="default")
    [plain] = decode(pack, content_format)
    assert (plain.sender, plain.namespace, plain.identity) == ("senml", "default", None)


names = st.sampled_from(["dev-17", "dev-18", "lab", "default"]) | st.none()


@given(names, names)
def test_an_event_is_stored_as_the_identity_or_refused(
    sender: str | None, namespace: str | None
) -> None:
    body = dict(EVENT)
    if sender is not None:
        body["sender"] = sender
    if namespace is not None:
        body["namespace"] = namespace
    try:
        [event] = decode(orjson.dumps(body), identity=DEV17)
    except Forbidden:
        assert sender not in (None, "dev-17") or namespace not in (None, "lab")
    else:
        assert (event.sender, event.namespace) == ("dev-17", "lab")
        assert sender in (None, "dev-17") and namespace in (None, "lab")
