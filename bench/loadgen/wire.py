"""Request datagrams built once and patched per request; responses read from the header.

A device's request is encoded once with :func:`coap.encode`; each send patches only
the Message ID (bytes 2-3), the 4-byte token (bytes 4-7) and one fixed-width
uniqueness field per event (an ``id`` string for JSON/CBOR, the SenML time for
SenML), so that every event is distinct (a store that dedups by content hash would
otherwise store one) at the cost of a few slice assignments. Responses are matched
from the 4-byte header and the token without decoding options.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import cbor2

import coap

FORMATS = ("json", "cbor", "senml-json", "senml-cbor")
TOKEN_LEN = 4
_CONTENT_FORMAT = {
    "json": coap.ContentFormat.JSON,
    "cbor": coap.ContentFormat.CBOR,
    "senml-json": coap.ContentFormat.SENML_JSON,
    "senml-cbor": coap.ContentFormat.SENML_CBOR,
}
_ID_MARK = "@" * 16  # placeholder of the per-event id (16 hex digits)
_T_BASE = 1_700_000_000  # SenML absolute times start here (>= 2**28: absolute, RFC 8428 4.5.3)
_T_MARK_JSON = 1_999_999_999  # 10-digit placeholder in SenML JSON
_T_MARK_CBOR = 0x7ADF00D5  # uint32 placeholder in SenML CBOR (encoded 0x1a + 4 bytes)

_HEADER = struct.Struct(">HI")  # MID, token at offset 2
SENDER = "bench"  # the events' sender on plain CoAP (over DTLS the identity names it)


@dataclass
class Template:
    """One device's pre-encoded request and where to patch it.

    ``kind`` is ``"id"`` (16 ASCII hex digits), ``"tjson"`` (10 ASCII digits) or
    ``"tcbor"`` (a big-endian uint32); ``offsets`` holds one offset per event.
    """

    buf: bytearray
    kind: str
    offsets: list[int]
    events: int
    prefix: int  # the device's 32-bit prefix of event ids (run nonce and device)

    def patch(self, mid: int, seq: int) -> bytearray:
        """Write MID, token (= seq) and the per-event unique fields; return the buffer."""
        buf = self.buf
        _HEADER.pack_into(buf, 2, mid, seq)
        k = self.events
        if self.kind == "id":
            base = seq * k
            for j, off in enumerate(self.offsets):
                buf[off : off + 16] = b"%08x%08x" % (self.prefix, (base + j) & 0xFFFFFFFF)
        elif self.kind == "tjson":
            base = _T_BASE + seq * k
            for j, off in enumerate(self.offsets):
                buf[off : off + 10] = b"%010d" % (base + j)
        else:
            base = _T_BASE + seq * k
            for j, off in enumerate(self.offsets):
                struct.pack_into(">I", buf, off, (base + j) & 0xFFFFFFFF)
        return buf

    def patcher(self) -> Callable[[int, int], bytearray]:
        """A closure equal to :meth:`patch`, specialised for one event (the hot path)."""
        if self.events != 1:
            return self.patch
        buf, off, prefix = self.buf, self.offsets[0], self.prefix
        pack_header = _HEADER.pack_into
        if self.kind == "id":

            def patch_id(mid: int, seq: int) -> bytearray:
                pack_header(buf, 2, mid, seq)
                buf[off : off + 16] = b"%08x%08x" % (prefix, seq & 0xFFFFFFFF)
                return buf

            return patch_id
        if self.kind == "tjson":

            def patch_tjson(mid: int, seq: int) -> bytearray:
                pack_header(buf, 2, mid, seq)
                buf[off : off + 10] = b"%010d" % (_T_BASE + seq)
                return buf

            return patch_tjson
        pack_t = struct.Struct(">I").pack_into

        def patch_tcbor(mid: int, seq: int) -> bytearray:
            pack_header(buf, 2, mid, seq)
            pack_t(buf, off, (_T_BASE + seq) & 0xFFFFFFFF)
            return buf

        return patch_tcbor

    def stager(self) -> Callable[[bytearray, int, int, int, int], None]:
        """A closure ``stage(buf, at, mid, token, uniq)`` writing the whole request at
        ``buf[at:]``: the template, then MID, the 4-byte token and the per-event unique
        fields from ``uniq`` (the batched sender's hot path; see :meth:`patch`)."""
        size = len(self.buf)
        pack_header = _HEADER.pack_into
        if self.events == 1 and self.kind == "id":
            # the id's first half (the device prefix) is written once, into the source
            first = bytearray(self.buf)
            off = self.offsets[0] + 8
            first[off - 8 : off] = b"%08x" % self.prefix
            src = bytes(first)

            def stage_id(buf: bytearray, at: int, mid: int, token: int, uniq: int) -> None:
                buf[at : at + size] = src
                pack_header(buf, at + 2, mid, token)
                o = at + off
                buf[o : o + 8] = b"%08x" % (uniq & 0xFFFFFFFF)

            return stage_id
        src = bytes(self.buf)
        scratch = Template(bytearray(src), self.kind, self.offsets, self.events, self.prefix)

        def stage_any(buf: bytearray, at: int, mid: int, token: int, uniq: int) -> None:
            scratch.patch(0, uniq)
            buf[at : at + size] = scratch.buf
            pack_header(buf, at + 2, mid, token)

        return stage_any


def origin_name(device: int) -> str:
    """A device's origin, fixed width so that every request of a run has one length."""
    return f"dev-{device:05d}"


def _events(origin: str, k: int, sender: str | None) -> list[dict[str, object]]:
    event: dict[str, object] = {"sender": sender} if sender is not None else {}
    event |= {
        "origin": origin,
        "payload": {"type": "temperature", "value": 21.5, "unit": "Cel"},
        "id": _ID_MARK,
    }
    return [dict(event) for _ in range(k)]


def body(
    fmt: str, origin: str, k: int, sender: str | None = SENDER
) -> tuple[bytes, str, int, bytes]:
    """The request body for ``k`` events of ``origin`` and how to find its patch points;
    ``sender`` None leaves the field out (a DTLS identity supplies it).

    Returns (body, kind, field width, marker bytes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt in ("json", "cbor"):
        evs = _events(origin, k, sender)
        doc: object = evs[0] if k == 1 else evs
        raw = json.dumps(doc, separators=(",", ":")).encode() if fmt == "json" else cbor2.dumps(doc)
        return raw, "id", 16, _ID_MARK.encode()
    records = [{"n": f"{origin}/temperature", "u": "Cel", "v": 21.5, "t": 0} for _ in range(k)]
    if fmt == "senml-json":
        for r in records:
            r["t"] = _T_MARK_JSON
        return (
            json.dumps(records, separators=(",", ":")).encode(),
            "tjson",
            10,
            str(_T_MARK_JSON).encode(),
        )
    for r in records:
        r["t"] = _T_MARK_CBOR
    return cbor2.dumps(records), "tcbor", 4, b"\x1a" + struct.pack(">I", _T_MARK_CBOR)


def build_template(
    fmt: str,
    origin: str,
    events: int,
    prefix: int,
    path: str = "/events",
    con: bool = True,
    sender: str | None = SENDER,
) -> Template:
    """Encode the request of one device (``origin``) once; see :class:`Template`."""
    raw, kind, _width, mark = body(fmt, origin, events, sender)
    options = (
        *coap.path_to_options(path),
        (int(coap.OptionNumber.CONTENT_FORMAT), coap.encode_uint(int(_CONTENT_FORMAT[fmt]))),
    )
    msg = coap.Message(
        type=coap.Type.CON if con else coap.Type.NON,
        code=coap.Code.POST,
        mid=0,
        token=b"\0" * TOKEN_LEN,
        options=tuple(sorted(options, key=lambda o: o[0])),
        payload=raw,
    )
    buf = bytearray(coap.encode(msg))
    offsets = []
    start = 0
    while True:
        at = buf.find(mark, start)
        if at < 0:
            break
        offsets.append(at + (1 if kind == "tcbor" else 0))
        start = at + len(mark)
    if len(offsets) != events:
        raise ValueError(f"template for {fmt}: found {len(offsets)} patch points, want {events}")
    t = Template(buf=buf, kind=kind, offsets=offsets, events=events, prefix=prefix)
    t.patch(0, 0)
    return t


def health_request(mid: int, token: bytes) -> bytes:
    """A CON GET /health."""
    return bytes(
        coap.encode(
            coap.Message(
                type=coap.Type.CON,
                code=coap.Code.GET,
                mid=mid,
                token=token,
                options=coap.path_to_options("/health"),
            )
        )
    )


def empty_ack(mid: int) -> bytes:
    """The empty ACK of a server's CON (separate) response (RFC 7252 §5.2.2)."""
    return bytes((0x60, 0x00)) + mid.to_bytes(2, "big")


def code_str(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"
