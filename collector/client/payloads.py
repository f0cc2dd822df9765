"""Events as the client builds them, and the four request body formats.

An event is a plain dict in the wire contract's JSON shape (DESIGN.md, "The wire
contract"): ``namespace``, ``sender``, ``origin``, ``payload`` (``type``,
``value``, optional ``unit``), ``timestamp`` (RFC 3339, UTC, milliseconds) and an
optional ``id``. The same dict is what the CLI prints next to each answer.

Bodies: ``json`` and ``cbor`` carry the map itself (one event) or an array of maps
(a batch); ``senml-json`` and ``senml-cbor`` carry one SenML record per event
(RFC 8428) named ``<origin>/<type>`` with ``v``/``vs``/``vb``, ``u`` and an
absolute ``t`` (seconds since the epoch). SenML has no field for the sender and
the namespace, so the collector fills those in itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import cbor2
import orjson

from coap import ContentFormat, OptionNumber

__all__ = [
    "FORMATS",
    "Event",
    "Value",
    "encode_body",
    "encode_request",
    "make_event",
    "parse_value",
    "query_options",
    "rfc3339_ms",
    "senml_records",
    "tidy_number",
]

Value = float | int | str | bool
Event = dict[str, Any]

#: ``--format`` name -> Content-Format number sent with the body.
FORMATS: Final[dict[str, int]] = {
    "json": ContentFormat.JSON,
    "cbor": ContentFormat.CBOR,
    "senml-json": ContentFormat.SENML_JSON,
    "senml-cbor": ContentFormat.SENML_CBOR,
}


def parse_value(text: str) -> Value:
    """A command-line reading: an int or a finite float when the text is a number,
    ``True``/``False`` for ``true``/``false`` (any case), otherwise the text itself.

    Raises ValueError for ``nan``, ``inf`` and numbers that overflow to infinity
    (``1e400``): JSON cannot carry them, and the collector stores a reading's value
    as a finite double, so sending them as text would store a different reading.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "_" not in stripped:
        try:
            return int(stripped)
        except ValueError:
            pass
        try:
            number = float(stripped)
        except ValueError:
            return text
        if not math.isfinite(number):
            raise ValueError(
                f"value {text!r} is not a finite number: events carry finite numbers "
                "only (no NaN or infinity, at most about 1.8e308)"
            )
        return number
    return text


def tidy_number(value: float) -> float | int:
    """An integral float as an int (``15.0`` -> ``15``), as the thesis printed it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def rfc3339_ms(epoch_seconds: float) -> str:
    """``2026-11-25T14:08:24.771Z`` for an epoch time (UTC, millisecond precision)."""
    moment = datetime.fromtimestamp(round(epoch_seconds, 3), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_event(
    *,
    type: str,
    value: Value,
    origin: str,
    sender: str,
    namespace: str = "default",
    unit: str | None = None,
    timestamp: float | None = None,
    id: str | None = None,
) -> Event:
    """One event dict in the wire contract's shape; ``timestamp`` defaults to now."""
    payload: dict[str, Any] = {"type": type, "value": value}
    if unit:
        payload["unit"] = unit
    event: Event = {
        "namespace": namespace,
        "sender": sender,
        "origin": origin,
        "payload": payload,
        "timestamp": rfc3339_ms(time.time() if timestamp is None else timestamp),
    }
    if id is not None:
        event["id"] = id
    return event


def _epoch_seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


Options = tuple[tuple[int, bytes], ...]


def encode_request(events: Sequence[Event], fmt: str) -> tuple[bytes, int, Options]:
    """Body, Content-Format and Uri-Query options of one POST /events carrying `events`."""
    body, content_format = encode_body(events, fmt)
    return body, content_format, query_options(events, fmt)


def query_options(events: Sequence[Event], fmt: str) -> Options:
    """Uri-Query options a request needs: SenML records carry no sender or namespace,
    so the collector reads them from ``?sender=`` and ``?namespace=``."""
    if not fmt.startswith("senml") or not events:
        return ()
    first = events[0]
    query = [(int(OptionNumber.URI_QUERY), f"sender={first['sender']}".encode())]
    namespace = first.get("namespace")
    if namespace and namespace != "default":
        query.append((int(OptionNumber.URI_QUERY), f"namespace={namespace}".encode()))
    return tuple(query)


def senml_records(events: Sequence[Event]) -> list[dict[str, Any]]:
    """One RFC 8428 record per event: ``n`` = ``<origin>/<type>``, the value under
    ``v`` (number), ``vb`` (bool) or ``vs`` (string), ``u`` when there is a unit and
    ``t`` the absolute time in seconds (millisecond precision)."""
    records = []
    for event in events:
        payload = event["payload"]
        record: dict[str, Any] = {"n": f"{event['origin']}/{payload['type']}"}
        value = payload["value"]
        # bool before number: bool is an int subclass.
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, int | float):
            record["v"] = value
        else:
            record["vs"] = str(value)
        if payload.get("unit"):
            record["u"] = payload["unit"]
        record["t"] = round(_epoch_seconds(event["timestamp"]), 3)
        records.append(record)
    return records


def encode_body(events: Sequence[Event], fmt: str) -> tuple[bytes, int]:
    """The request body and its Content-Format for ``events`` in format ``fmt``.

    One event travels as a map (json, cbor), several as an array; SenML is always
    an array of records. Raises ValueError for an unknown format or no events.
    """
    if not events:
        raise ValueError("no events to encode")
    try:
        content_format = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None
    body: Any
    if fmt in ("json", "cbor"):
        body = events[0] if len(events) == 1 else list(events)
    else:
        body = senml_records(events)
    if fmt.endswith("cbor"):
        return cbor2.dumps(body), content_format
    return orjson.dumps(body), content_format
