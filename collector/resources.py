"""Resources: what each Uri-Path answers (DESIGN.md, "The wire contract").

Routing is a dict lookup on the path segments; a known path with another method is
4.05, an unknown path 4.04. The events resource itself lives in the worker, next to
the batching it feeds; this module holds the routing table and the small resources.
"""

from __future__ import annotations

import coap
from collector.errors import NotAcceptable

EVENTS = "events"
HEALTH = "health"
CORE = "core"

# Uri-Path segments -> (resource, allowed method)
ROUTES: dict[tuple[str, ...], tuple[str, int]] = {
    ("events",): (EVENTS, coap.Code.POST),
    ("event",): (EVENTS, coap.Code.POST),  # the thesis' path
    ("health",): (HEALTH, coap.Code.GET),
    (".well-known", "core"): (CORE, coap.Code.GET),
}

# Paths as metric labels: a closed set, whatever devices send. A label names the
# resource, so the thesis' alias /event counts as /events.
PATH_LABELS = {
    segments: "/events" if name is EVENTS else "/" + "/".join(segments)
    for segments, (name, _method) in ROUTES.items()
}
METHOD_LABELS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "iPATCH"}

EVENT_FORMATS = (
    coap.ContentFormat.JSON,
    coap.ContentFormat.CBOR,
    coap.ContentFormat.SENML_JSON,
    coap.ContentFormat.SENML_CBOR,
)

WELL_KNOWN_CORE = coap.link_format(
    [
        coap.Link(
            "/events",
            (
                ("rt", "iot.events"),
                ("if", "core.p"),
                ("ct", " ".join(map(str, map(int, EVENT_FORMATS)))),
            ),
        ),
        coap.Link("/event", (("rt", "iot.events"), ("if", "core.p"))),
        coap.Link("/health", (("rt", "iot.health"), ("ct", "50 60"))),
    ]
).encode()


# What each readable resource can produce, preferred first (RFC 7252 §5.10.4: an
# Accept naming anything else gets 4.06).
PRODUCES: dict[str, tuple[int, ...]] = {
    HEALTH: (int(coap.ContentFormat.JSON), int(coap.ContentFormat.CBOR)),
    CORE: (int(coap.ContentFormat.LINK_FORMAT),),
}

# /health status: one small integer, one byte in JSON and in CBOR alike, so the
# answer fits inside the smallest GET /health (11 bytes: header, Uri-Path "health")
# within the amplification rule (RFC 7252 §11.3) even with Max-Age on a 5.03. The
# response code says healthy (2.05) or not (5.03); the number says why.
HEALTH_OK = 0  # the store takes events
HEALTH_DEGRADED = 1  # the store is down, and events go to the local spool
HEALTH_STORE_DOWN = 2  # the store is down: events get 5.03
HEALTH_DRAINING = 3  # shutting down: new requests get 5.03

HEALTH_WORDS = {
    HEALTH_OK: "ok",
    HEALTH_DEGRADED: "degraded: spooling",
    HEALTH_STORE_DOWN: "store unavailable",
    HEALTH_DRAINING: "draining",
}


def negotiate(resource: str, accept: int | None) -> int:
    """The Content-Format to answer `resource` in. Raises NotAcceptable (4.06)."""
    produced = PRODUCES[resource]
    if accept is None:
        return produced[0]
    if accept not in produced:
        names = " or ".join(map(str, produced))
        raise NotAcceptable(f"Accept {accept} not available; this resource is {names}")
    return accept


def health_body(status: int, fmt: int) -> bytes:
    """The /health representation in `fmt` (JSON or CBOR): the status number, one
    byte either way (the digit in JSON; CBOR encodes 0-23 in its initial byte,
    RFC 8949 §3.1)."""
    return bytes((status,)) if fmt == coap.ContentFormat.CBOR else b"%d" % status
