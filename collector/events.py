"""Event decoding and validation: request bodies in, canonical events out.

`decode_events` turns one CoAP request payload into a list of `Event`s, or raises an
`EventError` that carries the CoAP code to answer with and a short diagnostic naming
the first offending field (``event[3].payload.value: required``). It runs on the
server's hot path, so it parses once (orjson / cbor2) and checks the resulting
dicts by hand: no schema library, no intermediate objects.

Formats (DESIGN.md "The wire contract"): no Content-Format or 50 → JSON, 60 → CBOR,
110 → SenML JSON, 112 → SenML CBOR (see `collector.senml`); anything else →
`UnsupportedFormat` (4.15). A JSON/CBOR body is one event object or an array of
1..`max_events` of them. Any invalid event rejects the whole request (4.00):
nothing of it is stored.

Choices an operator should know:
- Unknown fields in an event or its payload are rejected, so that a misspelt
  `timestmap` is an error instead of an event silently stamped with the receive
  time. (SenML follows RFC 8428 instead: unknown labels are ignored unless they end
  in `_`.)
- Strings (namespace, sender, origin, type, unit, id) must be non-empty text of at
  most `max_string` characters, without control characters (C0, DEL, C1: 4.00
  ``event[2].sender: control character``); a string value at most
  `max_value_string`, any text. The optional fields (namespace, unit, timestamp, id)
  may also be null: absent.
- `payload.value` is a finite number (stored as float), a string or a boolean.
- `timestamp` is an RFC 3339 date-time with `Z` or an offset (fractional seconds
  are truncated to milliseconds), or a number of epoch seconds; the instant must
  lie in years 1970..9999, and within the window `Limits.max_event_age_ms` before
  and `max_event_future_ms` after the receive time (`--max-event-age`, default 7d;
  `--max-event-future`, 10m: ``timestamp: older than 7d``), so that devices cannot
  choose which daily indices exist. Without it the event takes the receive time.
  SenML times (`bt + t`, relative ones too) are held to the same window.
- Identity: with an authenticated device's `Identity` (DTLS), a missing namespace or
  sender is the identity's and any other is `Forbidden` (4.03,
  ``event[0].sender: this device may only write as dev-17``); SenML events take
  both from it. The event records the identity's name (`Event.identity`).
- CBOR: tags (including self-describe 55799) are refused, as are byte strings,
  `undefined`, simple values and trailing bytes after the first item.
- SenML: each record of the pack is one event. The resolved name (bn + n) is split
  by `senml.split_name`: a device URN (`urn:dev:ow:10e2…`) is the origin and what
  follows it the type; otherwise the cut is the last '/' or ':' (`probe1/temperature`
  → origin `probe1`, type `temperature`). A name without a separator is all type
  and the origin is the sender; a name that is all origin takes its unit as the type
  (RFC 8428 §5.1.1's `{"n": "urn:dev:ow:…", "u": "Cel", "v": 23.1}` → type `Cel`),
  and without a unit the pack is refused. SenML carries no sender or namespace: the
  caller's `default_sender`/`default_namespace` fill them. `v`/`vs`/`vb` (or a sum
  `s`) is the value, `vd` is refused, `u` or `bu` the unit, `bt + t` the time:
  epoch seconds from 2**28 on, else seconds relative to the receive time (§4.5.3).

Deterministic ids. An event's id (the store's key) is derived from the client's `id`
when given: `scoped_id`, blake2b over (namespace, sender, client id, authenticated),
so a client id is an idempotency key within its device's (namespace, sender) only,
and one device can never occupy another's (the device's own `id` is kept as
`Event.client_id`). A second event under the same key is judged by the sink: the same
reading is a duplicate (2.01), another a conflict (4.09; Elasticsearch sees a reuse
only within one daily index, see README "Ids and duplicates"). Otherwise the id is
blake2b (16 bytes, hex) over the canonical content: namespace, sender, origin,
type, value with its type, unit and `timestamp_ms`. A re-sent event with an
explicit timestamp therefore gets the same id in any exchange, on any worker or
replica, and is stored once. When the timestamp was derived from the receive time
(absent, or a relative SenML time), the hash also covers the source address, the
request's message ID and the event's index in the request: two identical readings
sent in different exchanges are different events, while the exchange layer's
duplicate detection covers retransmissions of the same exchange.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import cbor2
import orjson

from coap.codes import Code
from collector import senml
from collector.errors import RequestError
from collector.identity import Identity

__all__ = [
    "DEFAULT_LIMITS",
    "Event",
    "EventError",
    "Forbidden",
    "InvalidEvent",
    "Limits",
    "UnsupportedFormat",
    "check_identifier",
    "decode_events",
    "decode_json_events",
    "parse_timestamp",
    "reading",
    "scoped_id",
]

# Content-Format numbers this module accepts (IANA "CoAP Content-Formats").
JSON: Final = 50
CBOR: Final = 60
SENML_JSON: Final = 110
SENML_CBOR: Final = 112

#: 10000-01-01T00:00:00Z in epoch milliseconds: the first instant that is too late.
MAX_TIMESTAMP_MS: Final = 253_402_300_800_000

# Nesting a valid body needs is 3 (array, event, payload); SenML ignores unknown
# labels whose values may nest a little. Deeper CBOR is refused by the decoder.
_CBOR_MAX_DEPTH: Final = 16


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one request's body, each a defence against a hostile device."""

    max_body: int = 16384  # payload bytes; checked by the server (4.13 + Size1)
    max_events: int = 256  # events (or SenML records) per request
    max_string: int = 256  # characters of namespace/sender/origin/type/unit/id
    max_value_string: int = 1024  # characters of a string value
    # The accepted event times, relative to the receive time. Each daily Elasticsearch
    # index is named by event time, so without a window one request of 40 events could
    # create 40 indices (any day of 1970..9999); with it a device reaches at most the
    # days the window spans. Set from --max-event-age / --max-event-future.
    max_event_age_ms: int = 7 * 86_400_000
    max_event_future_ms: int = 10 * 60_000


DEFAULT_LIMITS: Final = Limits()


class EventError(RequestError):
    """A request body the collector will not store; `code` is the CoAP answer."""

    code: int = Code.BAD_REQUEST


class InvalidEvent(EventError):
    """The body or one of its events is malformed or breaks a limit (4.00)."""

    code = Code.BAD_REQUEST


class Forbidden(EventError):
    """An authenticated device named a sender or namespace other than its own (4.03)."""

    code = Code.FORBIDDEN


class UnsupportedFormat(EventError):
    """The Content-Format is not one this collector reads (4.15)."""

    code = Code.UNSUPPORTED_CONTENT_FORMAT


@dataclass(slots=True)
class Event:
    """One validated reading, in canonical form.

    `timestamp_ms` is the event time (epoch milliseconds, UTC); `received_ms` the time
    the collector received it; `source` the device's "host:port"; `worker` the index of
    the worker that received it. `value` is a float, a string or a bool. `id` is the
    store's key (see the module docstring); `client_id` the device's own `id`, if it
    sent one; `identity` the PSK identity of an authenticated (DTLS) device, None on
    plain CoAP.
    """

    id: str
    timestamp_ms: int
    received_ms: int
    namespace: str
    sender: str
    origin: str
    type: str
    value: float | str | bool
    unit: str | None
    source: str
    worker: int
    client_id: str | None = None
    identity: str | None = None

    def reading(self) -> tuple[Any, ...]:
        """What the device chose of this event bar its time (`reading`'s tuple)."""
        return reading(self.namespace, self.sender, self.origin, self.type, self.value, self.unit)

    def same_time(self, stored_ms: int) -> bool:
        """Whether a stored event's time agrees with this one's. An event sent without a
        timestamp took its receive time (`timestamp_ms == received_ms`), which says
        nothing about the reading: any stored time agrees with it."""
        return self.timestamp_ms == self.received_ms or self.timestamp_ms == stored_ms

    def document(self) -> dict[str, Any]:
        """The JSON-ready document stored for this event (Elasticsearch `_source`)."""
        value = self.value
        payload: dict[str, Any] = {"type": self.type}
        if type(value) is bool:
            payload["value_bool"] = value
        elif type(value) is str:
            payload["value_string"] = value
        else:
            payload["value"] = value
        if self.unit is not None:
            payload["unit"] = self.unit
        doc = {
            "@timestamp": self.timestamp_ms,
            "received_at": self.received_ms,
            "namespace": self.namespace,
            "sender": self.sender,
            "origin": self.origin,
            "payload": payload,
            "source": self.source,
            "worker": self.worker,
            "event_id": self.id,
        }
        if self.client_id is not None:
            doc["client_id"] = self.client_id
        if self.identity is not None:
            doc["identity"] = self.identity
        return doc


def reading(
    namespace: str,
    sender: str,
    origin: str,
    type_: str,
    value: float | str | bool,
    unit: str | None,
) -> tuple[Any, ...]:
    """What a device chose of an event, bar its time, in the form sinks compare: two
    events under one client id are the same when these tuples are equal and their
    times agree (`Event.same_time`). The value is tagged with its type, so 1.0, "1"
    and true differ, and -0.0 is 0.0."""
    if type(value) is bool:
        tagged: tuple[str, Any] = ("b", value)
    elif type(value) is str:
        tagged = ("s", value)
    else:
        tagged = ("n", float(value) + 0.0)
    return (namespace, sender, origin, type_, tagged, unit)


def _fail(index: int, field: str, problem: str) -> NoReturn:
    if index < 0:
        raise InvalidEvent(f"{field}: {problem}")
    raise InvalidEvent(f"event[{index}].{field}: {problem}")


def _text(value: Any, index: int, field: str, limit: int) -> str:
    if type(value) is not str:
        _fail(index, field, "must be a string")
    if not value:
        _fail(index, field, "must not be empty")
    if len(value) > limit:
        _fail(index, field, f"longer than {limit} characters")
    return value


# --- control characters -----------------------------------------------------------

#: C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F): never part of a name. A NUL or an
#: escape sequence in a sender or origin breaks the tools that read the store (C
#: strings, terminals, log lines), and two names that print alike would be different.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_identifier(text: str, where: str, limit: int = DEFAULT_LIMITS.max_string) -> str:
    """Validate one identifier taken from outside a body (a `?sender=` query value,
    say): non-empty, at most `limit` characters, no control character.

    `where` names it in the diagnostic (``?sender: control character``). Returns
    `text`; raises InvalidEvent (4.00).
    """
    if not 0 < len(text) <= limit:
        raise InvalidEvent(f"{where}: must be 1-{limit} characters")
    if _CONTROL.search(text) is not None:
        raise InvalidEvent(f"{where}: control character")
    return text


def _refuse_controls(events: list[Event], indexed: bool) -> None:
    """4.00 for the first identifier holding a control character (the rare path: JSON
    bodies reach it only when their bytes could spell one, see decode_json_events)."""
    search = _CONTROL.search
    for index, e in enumerate(events):
        for field, text in (
            ("namespace", e.namespace),
            ("sender", e.sender),
            ("origin", e.origin),
            ("payload.type", e.type),
            ("payload.unit", e.unit),
            ("id", e.client_id),
        ):
            if text is not None and search(text) is not None:
                _fail(index if indexed else -1, field, "control character")


# --- the event-time window --------------------------------------------------------

_DURATION_UNITS: Final = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))


def duration_text(ms: int) -> str:
    """`7d`, `10m`, `90s`: a duration in its largest whole unit (as the flags take it)."""
    for suffix, size in _DURATION_UNITS:
        if ms and ms % size == 0:
            return f"{ms // size}{suffix}"
    return f"{ms / 1000:g}s"


def _outside_window(ts: int, received_ms: int, limits: Limits) -> str | None:
    """Why `ts` lies outside the accepted window around the receive time, or None."""
    if ts < received_ms - limits.max_event_age_ms:
        return f"older than {duration_text(limits.max_event_age_ms)}"
    if ts > received_ms + limits.max_event_future_ms:
        return f"more than {duration_text(limits.max_event_future_ms)} in the future"
    return None


# --- timestamps -----------------------------------------------------------------

# RFC 3339 §5.6 date-time; §5.6's note allows a lower-case t/z and a space for T.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _rfc3339_ms(m: re.Match[str]) -> int | None:
    """Epoch ms of a matched RFC 3339 date-time; None for an impossible date."""
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour, minute, second = int(m[4]), int(m[5]), int(m[6])
    if not 1 <= month <= 12 or day < 1:
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap:
        return None
    # Seconds may be 60 (a leap second, RFC 3339 §5.7); it counts into the next minute.
    if hour > 23 or minute > 59 or second > 60:
        return None
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if m[8] is not None:
        off_h, off_m = int(m[9]), int(m[10])
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 3600 + off_m * 60
        seconds -= offset if m[8] == "+" else -offset
    frac = m[7]
    return seconds * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_MS: Final = datetime.timedelta(milliseconds=1)


def parse_timestamp(value: Any) -> int | None:
    """Epoch milliseconds of an RFC 3339 string or epoch-seconds number.

    Returns None when `value` is neither, or names an impossible date or an instant
    outside years 1970..9999 (the caller phrases the error).
    """
    tv = type(value)
    if tv is str:
        m = _RFC3339.match(value)
        if m is None:
            return None
        # The regex fixed the shape; the C parser is the fast path for the common
        # forms, our arithmetic the fallback for the rest (leap second, lower-case
        # t/z) and the judge of impossible dates.
        try:
            ms = (datetime.datetime.fromisoformat(value) - _EPOCH) // _ONE_MS
        except (ValueError, OverflowError):
            slow = _rfc3339_ms(m)
            if slow is None:
                return None
            ms = slow
    elif tv is int:
        ms = value * 1000
    elif tv is float:
        scaled = value * 1000.0  # finite values above ~1.8e305 overflow to infinity here
        if not math.isfinite(scaled):
            return None
        ms = round(scaled)
    else:
        return None
    if 0 <= ms < MAX_TIMESTAMP_MS:
        return ms
    return None


# --- ids ------------------------------------------------------------------------


def _content_id(
    namespace: str,
    sender: str,
    origin: str,
    type_: str,
    value: float | str | bool,
    unit: str | None,
    timestamp_ms: int,
    received: tuple[str, int, int] | None,
) -> str:
    # orjson's encoding is unambiguous and keeps the value's type (1.0 vs "1.0" vs
    # true); `received` is (source, mid, index) when the time came from the receive time.
    if type(value) is float:
        value += 0.0  # -0.0 and 0.0 are one reading
    key = orjson.dumps((namespace, sender, origin, type_, value, unit, timestamp_ms, received))
    return _blake2b(key, digest_size=16).hexdigest()


_blake2b: Final = hashlib.blake2b


# --- JSON / CBOR events ---------------------------------------------------------

_EVENT_FIELDS: Final = frozenset({"namespace", "sender", "origin", "payload", "timestamp", "id"})
_PAYLOAD_FIELDS: Final = frozenset({"type", "value", "unit"})
_MISSING: Final[Any] = object()


def _unknown(obj: dict[Any, Any], known: frozenset[str], index: int, prefix: str) -> NoReturn:
    key = next(k for k in obj if k not in known)
    if type(key) is str:
        _fail(index, prefix + key[:40], "unknown field")
    if prefix:
        _fail(index, prefix.rstrip("."), "field names must be strings")
    where = f"event[{index}]" if index >= 0 else "body"
    raise InvalidEvent(f"{where}: field names must be strings")


def _event(
    obj: Any,
    index: int,
    limits: Limits,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    identity: Identity | None,
) -> Event:
    if type(obj) is not dict:
        if index < 0:
            raise InvalidEvent("body: must be an event object or an array of events")
        raise InvalidEvent(f"event[{index}]: must be an object")
    get = obj.get
    found = 3  # sender, origin, payload are required; checked below
    limit = limits.max_string
    # Hot path: each check is inlined for the valid case; `_text` words the error.
    sender = get("sender", _MISSING)
    if type(sender) is not str or not 0 < len(sender) <= limit:
        if sender is not _MISSING:
            _text(sender, index, "sender", limit)
        if identity is None:
            _fail(index, "sender", "required")
        sender = identity.sender  # an authenticated device need not name itself
        found -= 1
    origin = get("origin", _MISSING)
    if type(origin) is not str or not 0 < len(origin) <= limit:
        if origin is _MISSING:
            _fail(index, "origin", "required")
        _text(origin, index, "origin", limit)

    # Optional fields: absent or null mean "use the default".
    namespace = get("namespace", _MISSING)
    if namespace is _MISSING:
        namespace = "default" if identity is None else identity.namespace
    else:
        found += 1
        if namespace is None:
            namespace = "default" if identity is None else identity.namespace
        elif type(namespace) is not str or not 0 < len(namespace) <= limit:
            _text(namespace, index, "namespace", limit)
    if identity is not None:
        _authorise(identity, sender, namespace, index)

    payload = get("payload", _MISSING)
    if type(payload) is not dict:
        if payload is _MISSING:
            _fail(index, "payload", "required")
        _fail(index, "payload", "must be an object")
    ptype = payload.get("type", _MISSING)
    if type(ptype) is not str or not 0 < len(ptype) <= limit:
        if ptype is _MISSING:
            _fail(index, "payload.type", "required")
        _text(ptype, index, "payload.type", limit)
    value = payload.get("value", _MISSING)
    tv = type(value)
    if tv is float:
        if not math.isfinite(value):
            _fail(index, "payload.value", "must be a finite number")
    elif tv is int:
        value = float(value)  # JSON and CBOR ints (≤ 2**64) always fit a double
    elif tv is str:
        if len(value) > limits.max_value_string:
            _fail(index, "payload.value", f"longer than {limits.max_value_string} characters")
    elif tv is not bool:
        if value is _MISSING:
            _fail(index, "payload.value", "required")
        _fail(index, "payload.value", "must be a number, a string or a boolean")
    unit = payload.get("unit", _MISSING)
    if unit is _MISSING:
        unit = None
        if len(payload) != 2:
            _unknown(payload, _PAYLOAD_FIELDS, index, "payload.")
    else:
        if unit is not None and (type(unit) is not str or not 0 < len(unit) <= limit):
            _text(unit, index, "payload.unit", limit)
        if len(payload) != 3:
            _unknown(payload, _PAYLOAD_FIELDS, index, "payload.")

    raw_ts = get("timestamp", _MISSING)
    received: tuple[str, int, int] | None = None
    if raw_ts is _MISSING or raw_ts is None:
        if raw_ts is None:
            found += 1
        timestamp_ms = received_ms
        received = (source, mid, index if index > 0 else 0)
    else:
        found += 1
        ts = parse_timestamp(raw_ts)
        if ts is None:
            if type(raw_ts) is str or (type(raw_ts) in (int, float)):
                _fail(
                    index, "timestamp", "not an RFC 3339 date-time or epoch seconds in 1970..9999"
                )
            _fail(index, "timestamp", "must be an RFC 3339 string or epoch seconds")
        if (
            not received_ms - limits.max_event_age_ms
            <= ts
            <= received_ms + limits.max_event_future_ms
        ):
            _fail(index, "timestamp", _outside_window(ts, received_ms, limits) or "")
        timestamp_ms = ts

    event_id = get("id", _MISSING)
    if event_id is not _MISSING:
        found += 1
        if event_id is not None and (type(event_id) is not str or not 0 < len(event_id) <= limit):
            _text(event_id, index, "id", limit)
    if len(obj) != found:
        _unknown(obj, _EVENT_FIELDS, index, "")
    if event_id is not _MISSING and event_id is not None:
        client_id = event_id
        event_id = _blake2b(
            orjson.dumps((namespace, sender, client_id, identity is not None)), digest_size=16
        ).hexdigest()
    else:
        client_id = None
        # _content_id, inlined: this runs for nearly every event the server takes.
        key = orjson.dumps(
            (
                namespace,
                sender,
                origin,
                ptype,
                value + 0.0 if type(value) is float else value,  # -0.0 is 0.0
                unit,
                timestamp_ms,
                received,
            )
        )
        event_id = _blake2b(key, digest_size=16).hexdigest()
    return Event(
        event_id,
        timestamp_ms,
        received_ms,
        namespace,
        sender,
        origin,
        ptype,
        value,
        unit,
        source,
        worker,
        client_id,
        None if identity is None else identity.name,
    )


def _authorise(identity: Identity, sender: str, namespace: str, index: int) -> None:
    """4.03 unless the event's sender and namespace are the identity's own."""
    where = f"event[{index}]." if index >= 0 else ""
    if sender != identity.sender:
        raise Forbidden(f"{where}sender: this device may only write as {identity.sender}")
    if namespace != identity.namespace:
        raise Forbidden(
            f"{where}namespace: this device may only write in namespace {identity.namespace}"
        )


def scoped_id(namespace: str, sender: str, client_id: str, authenticated: bool = False) -> str:
    """The store key of an event that carries the client `id` `client_id`.

    Client ids are scoped by (namespace, sender), and by whether the writer was
    authenticated: one device can never occupy another's ids, nor a plain-CoAP writer
    an authenticated device's. blake2b (16 bytes, hex), like content ids; the key
    hashes a 4-item array, a content id an 8-item one, so the two never meet.
    """
    key = orjson.dumps((namespace, sender, client_id, authenticated))
    return _blake2b(key, digest_size=16).hexdigest()


def decode_json_events(
    payload: bytes,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    limits: Limits = DEFAULT_LIMITS,
    identity: Identity | None = None,
) -> list[Event]:
    """`decode_events` for a JSON body (Content-Format 50 or none), the server's hot
    path: positional arguments, and a single event object without the array walk."""
    try:  # _load_json, inlined on this path
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("body: malformed JSON") from None
    if type(body) is dict:
        events = [_event(body, -1, limits, source, mid, received_ms, worker, identity)]
    else:
        events = _events(body, limits, source, mid, received_ms, worker, identity)
    # JSON strings cannot hold a raw C0 character (orjson refuses one), so a control
    # character needs an escape (a backslash, 92), a raw DEL (127), or a raw C1 (UTF-8
    # 0xC2 0x80 to 0xC2 0x9F). Most bodies hold none of those bytes and skip the check.
    # (An int needle is a memchr, ~25 ns here; a one-byte bytes needle took ~400 ns.)
    if 92 in payload or 127 in payload or 194 in payload:
        _refuse_controls(events, type(body) is list)
    return events


def _events(
    body: Any,
    limits: Limits,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    identity: Identity | None,
) -> list[Event]:
    if type(body) is list:
        if not body:
            raise InvalidEvent("body: empty array of events")
        if len(body) > limits.max_events:
            raise InvalidEvent(f"body: more than {limits.max_events} events")
        return [
            _event(obj, index, limits, source, mid, received_ms, worker, identity)
            for index, obj in enumerate(body)
        ]
    # A single object: its index for id purposes is 0, but errors name no index.
    event = _event(body, -1, limits, source, mid, received_ms, worker, identity)
    return [event]


# --- CBOR -----------------------------------------------------------------------


def _refuse_tag(*_args: Any) -> NoReturn:
    raise ValueError("CBOR tags are not accepted")


class _NoTags(Mapping[int, Any]):
    """A `semantic_decoders` mapping that claims every tag, so cbor2 decodes none."""

    def __getitem__(self, key: int) -> Any:
        return _refuse_tag

    def get(self, key: int, default: Any = None) -> Any:
        return _refuse_tag

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_TAGS: Final = _NoTags()


def _load_cbor(payload: bytes, text_keys_only: bool) -> Any:
    stream = io.BytesIO(payload)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            tag_hook=_refuse_tag,
            max_depth=_CBOR_MAX_DEPTH,
            allow_duplicate_keys=False,
            strict_hashable_types=text_keys_only,
        )
        body = decoder.decode()
    except RecursionError:
        raise InvalidEvent("body: CBOR nested too deeply") from None
    except Exception as exc:  # cbor2 signals malformed input with several types
        cause = exc.__cause__
        if isinstance(cause, ValueError) and "tags" in str(cause):
            raise InvalidEvent("body: CBOR tags are not accepted") from None
        raise InvalidEvent("body: malformed CBOR") from None
    if stream.tell() != len(payload):
        raise InvalidEvent("body: trailing bytes after the CBOR item")
    return body


def _load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("body: malformed JSON") from None


# --- SenML ----------------------------------------------------------------------


def _senml_events(
    pack: Any,
    cbor: bool,
    limits: Limits,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    sender: str,
    namespace: str,
    identity: str | None,
) -> list[Event]:
    try:
        records = senml.resolve(
            pack,
            cbor=cbor,
            max_records=limits.max_events,
            max_string=limits.max_string,
            max_value_string=limits.max_value_string,
        )
    except senml.SenMLError as exc:
        raise InvalidEvent(str(exc)) from None
    events = []
    limit = limits.max_string
    for index, (name, value, unit, time) in enumerate(records):
        origin, type_ = senml.split_name(name)
        if not origin:
            origin = sender
        if not type_:
            if unit is None:
                raise InvalidEvent(
                    f"record[{index}].n: the name {name[:40]!r} has no measurement after its "
                    "last separator and the record has no unit to name it"
                )
            type_ = unit
        if len(origin) > limit or len(type_) > limit:
            raise InvalidEvent(f"record[{index}].n: origin or type longer than {limit} characters")
        if unit is not None and (not unit or _CONTROL.search(unit) is not None):
            problem = "control character" if unit else "must not be empty"
            raise InvalidEvent(f"record[{index}].u: {problem}")
        received: tuple[str, int, int] | None
        if time >= senml.RELATIVE_TIME_LIMIT:
            ts = round(time * 1000.0)
            received = None
        else:
            # RFC 8428 §4.5.3: relative to "now", i.e. the receive time.
            ts = received_ms + round(time * 1000.0)
            received = (source, mid, index)
        if not 0 <= ts < MAX_TIMESTAMP_MS:
            raise InvalidEvent(f"record[{index}].t: resolved time outside years 1970..9999")
        outside = _outside_window(ts, received_ms, limits)
        if outside is not None:
            raise InvalidEvent(f"record[{index}].t: {outside}")
        event_id = _content_id(namespace, sender, origin, type_, value, unit, ts, received)
        events.append(
            Event(
                event_id,
                ts,
                received_ms,
                namespace,
                sender,
                origin,
                type_,
                value,
                unit,
                source,
                worker,
                None,
                identity,
            )
        )
    return events


# --- entry point ----------------------------------------------------------------


def decode_events(
    payload: bytes,
    content_format: int | None,
    *,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    limits: Limits = DEFAULT_LIMITS,
    default_sender: str | None = None,
    default_namespace: str | None = None,
    identity: Identity | None = None,
) -> list[Event]:
    """Decode and validate one request body into its events (at least one).

    `content_format` is the request's Content-Format (None when absent); `source`
    ("host:port"), `mid` (the request's message ID) and `received_ms` feed the
    events and their ids. SenML events carry no sender or namespace:
    `default_sender`/`default_namespace` (the request's `?sender=`/`?namespace=`)
    name them, else the identity's, else `senml`/`default`. `identity` is the
    authenticated device (None on plain CoAP): a missing sender or namespace is its
    own, and any other is refused. The body size (`limits.max_body`) is the caller's
    check. Raises UnsupportedFormat (4.15), InvalidEvent (4.00) or Forbidden (4.03).
    """
    if content_format is None or content_format == JSON:
        return decode_json_events(payload, source, mid, received_ms, worker, limits, identity)
    if content_format == CBOR:
        body = _load_cbor(payload, text_keys_only=True)
        events = _events(body, limits, source, mid, received_ms, worker, identity)
        _refuse_controls(events, type(body) is list)  # CBOR text is raw: always look
        return events
    if content_format in (SENML_JSON, SENML_CBOR):
        if identity is None:
            sender = "senml" if default_sender is None else default_sender
            namespace = "default" if default_namespace is None else default_namespace
        else:
            sender, namespace = identity.sender, identity.namespace
            if default_sender is not None and default_sender != sender:
                raise Forbidden(f"?sender: this device may only write as {sender}")
            if default_namespace is not None and default_namespace != namespace:
                raise Forbidden(f"?namespace: this device may only write in namespace {namespace}")
        if default_sender is not None:
            check_identifier(default_sender, "?sender", limits.max_string)
        if default_namespace is not None:
            check_identifier(default_namespace, "?namespace", limits.max_string)
        cbor = content_format == SENML_CBOR  # RFC 8428 §6: integer labels in CBOR
        pack = _load_cbor(payload, text_keys_only=False) if cbor else _load_json(payload)
        return _senml_events(
            pack,
            cbor,
            limits,
            source,
            mid,
            received_ms,
            worker,
            sender,
            namespace,
            None if identity is None else identity.name,
        )
    raise UnsupportedFormat(f"content-format {content_format} not supported (use 50, 60, 110, 112)")
