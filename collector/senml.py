"""SenML (RFC 8428) packs resolved into plain records.

A SenML pack is an array of records; base fields (`bn`, `bt`, `bu`, `bv`, `bs`,
`bver`) apply to the record that carries them and to every later record until a
record overrides them (§4.5, §4.6). `resolve` walks a decoded pack once and returns
one `Resolved` record per input record, with the name, value, unit and time already
combined with their bases. It knows nothing of the collector's event shape: the
mapping of a resolved name onto origin/type is `split_name`, and turning times into
epoch milliseconds is left to the caller (it owns the receive time).

Rules enforced here, each from RFC 8428:
- §6: the CBOR representation uses integer labels (`LABELS_CBOR`); text labels are
  accepted too, as in JSON.
- §4.4: an unknown label ending in `_` is "must understand" and rejects the pack;
  other unknown labels are ignored.
- §4.5.1: the resolved name is non-empty, starts with a letter or digit, and holds
  only `A-Z a-z 0-9 - : . / _`.
- §4.2: exactly one of `v`, `vs`, `vb`, `vd` unless there is a sum `s` (then none
  is allowed); `vd` (binary data) is not supported by this collector.
- §4.5.2: `bver` above 10 is a version this code does not know.
- §4.5.3: times below 2**28 are relative to now (`RELATIVE_TIME_LIMIT`).

Errors raise `SenMLError` whose text names the record and label, e.g.
``record[2].vb: must be a boolean``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, NamedTuple

__all__ = [
    "LABELS_CBOR",
    "RELATIVE_TIME_LIMIT",
    "SENML_VERSION",
    "Resolved",
    "SenMLError",
    "resolve",
    "split_name",
]

#: RFC 8428 §6, Table 6: CBOR integer labels.
LABELS_CBOR: Final[dict[int, str]] = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}

#: RFC 8428 §4.5.3: "Values less than 268,435,456 (2**28) represent time relative
#: to the current time."
RELATIVE_TIME_LIMIT: Final = 2**28

#: RFC 8428 §4.5.2: the version this code implements; a larger `bver` is refused.
SENML_VERSION: Final = 10

# RFC 8428 §4.5.1: allowed characters of a resolved name, first one alphanumeric.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*\Z")

_KNOWN: Final = frozenset(LABELS_CBOR.values())
_VALUE_LABELS: Final = ("v", "vs", "vb", "vd")


class SenMLError(ValueError):
    """The pack breaks RFC 8428 (or a limit); the text names the record and label."""


class Resolved(NamedTuple):
    """One record with its base fields applied (RFC 8428 §4.6).

    `time` is the resolved SenML time in seconds (`bt + t`, 0 when both are
    absent): at or above `RELATIVE_TIME_LIMIT` it is epoch seconds, below it is an
    offset from now.
    """

    name: str
    value: float | str | bool
    unit: str | None
    time: float


def _number(record: dict[str, Any], label: str, index: int) -> float:
    x = record[label]
    tx = type(x)
    if tx is float:
        if not math.isfinite(x):
            raise SenMLError(f"record[{index}].{label}: must be a finite number")
        return float(x)
    if tx is int:
        try:
            return float(x)
        except OverflowError:
            raise SenMLError(f"record[{index}].{label}: number out of range") from None
    raise SenMLError(f"record[{index}].{label}: must be a number")


def _text(record: dict[str, Any], label: str, index: int, limit: int) -> str:
    x = record[label]
    if type(x) is not str:
        raise SenMLError(f"record[{index}].{label}: must be a string")
    if len(x) > limit:
        raise SenMLError(f"record[{index}].{label}: longer than {limit} characters")
    return x


def _labels(raw: Any, index: int, cbor: bool) -> dict[str, Any]:
    """The record as a dict keyed by text labels (CBOR integers translated)."""
    if type(raw) is not dict:
        raise SenMLError(f"record[{index}]: must be a map of labels")
    if not cbor:
        return raw  # orjson: keys are always str
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if type(key) is int:
            label = LABELS_CBOR.get(key)
            if label is None:
                continue  # an unregistered integer label: unknown, ignored (§4.4)
        elif type(key) is str:
            label = key
        else:
            raise SenMLError(f"record[{index}]: labels must be integers or text")
        if label in out:
            raise SenMLError(f"record[{index}].{label}: given twice")
        out[label] = value
    return out


def resolve(
    pack: Any,
    *,
    cbor: bool,
    max_records: int,
    max_string: int,
    max_value_string: int,
) -> list[Resolved]:
    """Resolve a decoded SenML pack (RFC 8428 §4.6) into one `Resolved` per record.

    `cbor` says the pack came from SenML CBOR (integer labels). Raises SenMLError
    for anything RFC 8428 or the limits forbid.
    """
    if type(pack) is not list:
        raise SenMLError("body: a SenML pack must be an array of records")
    if not pack:
        raise SenMLError("body: empty SenML pack")
    if len(pack) > max_records:
        raise SenMLError(f"body: more than {max_records} records")
    name_limit = 2 * max_string
    # Base values in force; each record may replace some (§4.5).
    base_name = ""
    base_time = 0.0
    base_unit: str | None = None
    base_value = 0.0
    base_sum = 0.0
    out: list[Resolved] = []
    for index, raw in enumerate(pack):
        record = _labels(raw, index, cbor)
        if not _KNOWN.issuperset(record):
            for label in record:
                if label not in _KNOWN and label.endswith("_"):
                    raise SenMLError(f"record[{index}].{label}: unsupported must-understand field")
        if "bver" in record:
            bver = record["bver"]
            if type(bver) is not int or bver < 1:
                raise SenMLError(f"record[{index}].bver: must be a positive integer")
            if bver > SENML_VERSION:
                raise SenMLError(f"record[{index}].bver: version {bver} is not supported")
        if "bn" in record:
            base_name = _text(record, "bn", index, name_limit)
        if "bt" in record:
            base_time = _number(record, "bt", index)
        if "bu" in record:
            base_unit = _text(record, "bu", index, max_string)
        if "bv" in record:
            base_value = _number(record, "bv", index)
        if "bs" in record:
            base_sum = _number(record, "bs", index)

        name = base_name + _text(record, "n", index, name_limit) if "n" in record else base_name
        if not name:
            raise SenMLError(f"record[{index}].n: no name (neither bn nor n)")
        if len(name) > name_limit or _NAME_RE.match(name) is None:
            raise SenMLError(
                f"record[{index}].n: resolved name must start with a letter or digit and hold "
                "only A-Z a-z 0-9 - : . / _"
            )

        value: float | str | bool
        has_v = "v" in record
        has_vs = "vs" in record
        has_vb = "vb" in record
        has_vd = "vd" in record
        if has_v + has_vs + has_vb + has_vd > 1:
            second = [label for label in _VALUE_LABELS if label in record][1]
            raise SenMLError(f"record[{index}].{second}: more than one value field")
        if has_v:
            value = base_value + _number(record, "v", index)
            if not math.isfinite(value):
                raise SenMLError(f"record[{index}].v: number out of range with bv")
        elif has_vs:
            value = _text(record, "vs", index, max_value_string)
        elif has_vb:
            value = record["vb"]
            if type(value) is not bool:
                raise SenMLError(f"record[{index}].vb: must be a boolean")
        elif has_vd:
            raise SenMLError(f"record[{index}].vd: data values are not supported")
        elif "s" in record:
            value = base_sum + _number(record, "s", index)
            if not math.isfinite(value):
                raise SenMLError(f"record[{index}].s: number out of range with bs")
        else:
            raise SenMLError(f"record[{index}].v: required (one of v, vs, vb, or a sum s)")
        # A sum next to a value is checked but not stored: one value per event.
        if "s" in record and (has_v or has_vs or has_vb):
            _number(record, "s", index)

        unit = _text(record, "u", index, max_string) if "u" in record else base_unit
        time = base_time
        if "t" in record:
            time = base_time + _number(record, "t", index)
            if not math.isfinite(time):
                raise SenMLError(f"record[{index}].t: number out of range with bt")
        if "ut" in record:
            _number(record, "ut", index)
        out.append(Resolved(name, value, unit, time))
    return out


def split_name(name: str) -> tuple[str, str]:
    """Split a resolved SenML name into (origin, type).

    - A device URN (RFC 9039, ``urn:dev:<kind>:<id>``) is the origin and what
      follows its next ':' is the type: ``"urn:dev:ow:10e2073a01080063:temp"`` →
      ``("urn:dev:ow:10e2073a01080063", "temp")``, and the bare URN of RFC 8428
      §5.1.1 → ``("urn:dev:ow:10e2073a01080063", "")``.
    - Otherwise the cut is the last '/' or ':': ``"probe1/temperature"`` →
      ``("probe1", "temperature")``; a name ending in a separator is all origin.
    - A name with no separator is all type: ``"temperature"`` → ``("", "temperature")``.

    An empty part means "not named": the caller supplies the origin (the sender)
    or the type (the unit).
    """
    if name.startswith("urn:dev:"):
        parts = name.split(":", 4)
        if len(parts) >= 4:
            return ":".join(parts[:4]), parts[4] if len(parts) == 5 else ""
    cut = max(name.rfind("/"), name.rfind(":"))
    if cut < 0:
        return "", name
    return name[:cut], name[cut + 1 :]
