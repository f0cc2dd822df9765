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
  most `max_string` characters; a string value at most `max_value_string`. The
  optional fields (namespace, unit, timestamp, id) may also be null: absent.
- `payload.value` is a finite number (stored as float), a string or a boolean.
- `timestamp` is an RFC 3339 date-time with `Z` or an offset (fractional seconds
  are truncated to milliseconds), or a number of epoch seconds; the instant must
  lie in years 1970..9999. Without it the event takes the receive time.
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

Deterministic ids. An event's id is the client's `id` when given (a global
idempotency key: make it unique across senders, e.g. a UUID). Otherwise it is
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

__all__ = [
    "DEFAULT_LIMITS",
    "Event",
    "EventError",
    "InvalidEvent",
    "Limits",
    "UnsupportedFormat",
    "decode_events",
    "decode_json_events",
    "parse_timestamp",
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


DEFAULT_LIMITS: Final = Limits()


class EventError(Exception):
    """A request body the collector will not store; `code` is the CoAP answer."""

    code: int = Code.BAD_REQUEST


class InvalidEvent(EventError):
    """The body or one of its events is malformed or breaks a limit (4.00)."""

    code = Code.BAD_REQUEST


class UnsupportedFormat(EventError):
    """The Content-Format is not one this collector reads (4.15)."""

    code = Code.UNSUPPORTED_CONTENT_FORMAT


@dataclass(slots=True)
class Event:
    """One validated reading, in canonical form.

    `timestamp_ms` is the event time (epoch milliseconds, UTC); `received_ms` the time
    the collector received it; `source` the device's "host:port"; `worker` the index of
    the worker that received it. `value` is a float, a string or a bool.
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
        return {
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
        if not math.isfinite(value):
            return None
        ms = round(value * 1000.0)
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
        if sender is _MISSING:
            _fail(index, "sender", "required")
        _text(sender, index, "sender", limit)
    origin = get("origin", _MISSING)
    if type(origin) is not str or not 0 < len(origin) <= limit:
        if origin is _MISSING:
            _fail(index, "origin", "required")
        _text(origin, index, "origin", limit)

    # Optional fields: absent or null mean "use the default".
    namespace = get("namespace", _MISSING)
    if namespace is _MISSING:
        namespace = "default"
    else:
        found += 1
        if namespace is None:
            namespace = "default"
        elif type(namespace) is not str or not 0 < len(namespace) <= limit:
            _text(namespace, index, "namespace", limit)

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
        timestamp_ms = ts

    event_id = get("id", _MISSING)
    if event_id is not _MISSING:
        found += 1
        if event_id is not None and (type(event_id) is not str or not 0 < len(event_id) <= limit):
            _text(event_id, index, "id", limit)
    if len(obj) != found:
        _unknown(obj, _EVENT_FIELDS, index, "")
    if event_id is _MISSING or event_id is None:
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
    )


def decode_json_events(
    payload: bytes,
    source: str,
    mid: int,
    received_ms: int,
    worker: int,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Event]:
    """`decode_events` for a JSON body (Content-Format 50 or none), the server's hot
    path: positional arguments, and a single event object without the array walk."""
    body = _load_json(payload)
    if type(body) is dict:
        return [_event(body, -1, limits, source, mid, received_ms, worker)]
    return _events(body, limits, source, mid, received_ms, worker)


def _events(
    body: Any, limits: Limits, source: str, mid: int, received_ms: int, worker: int
) -> list[Event]:
    if type(body) is list:
        if not body:
            raise InvalidEvent("body: empty array of events")
        if len(body) > limits.max_events:
            raise InvalidEvent(f"body: more than {limits.max_events} events")
        return [
            _event(obj, index, limits, source, mid, received_ms, worker)
            for index, obj in enumerate(body)
        ]
    # A single object: its index for id purposes is 0, but errors name no index.
    event = _event(body, -1, limits, source, mid, received_ms, worker)
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
        if unit is not None and not unit:
            raise InvalidEvent(f"record[{index}].u: must not be empty")
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
    default_sender: str = "senml",
    default_namespace: str = "default",
) -> list[Event]:
    """Decode and validate one request body into its events (at least one).

    `content_format` is the request's Content-Format (None when absent); `source`
    ("host:port"), `mid` (the request's message ID) and `received_ms` feed the
    events and their ids; `default_sender`/`default_namespace` fill SenML events,
    which carry neither. The body size (`limits.max_body`) is the caller's check.
    Raises UnsupportedFormat (4.15) or InvalidEvent (4.00).
    """
    if content_format is None or content_format == JSON:
        return decode_json_events(payload, source, mid, received_ms, worker, limits)
    if content_format == CBOR:
        body = _load_cbor(payload, text_keys_only=True)
        return _events(body, limits, source, mid, received_ms, worker)
    if content_format in (SENML_JSON, SENML_CBOR):
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
            default_sender,
            default_namespace,
        )
    raise UnsupportedFormat(f"content-format {content_format} not supported (use 50, 60, 110, 112)")
