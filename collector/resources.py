"""Resources: what each Uri-Path answers (DESIGN.md, "The wire contract").

Routing is a dict lookup on the path segments; a known path with another method is
4.05, an unknown path 4.04. The events resource itself lives in the worker, next to
the batching it feeds; this module holds the routing table and the small resources.
"""

from __future__ import annotations

import orjson

import coap

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


def health_body(
    healthy: bool, accept: int | None, budget: int, degraded: str | None = None
) -> tuple[int, bytes]:
    """The /health representation and its content format, within `budget` bytes.

    The response code already says healthy (2.05) or not (5.03); the body adds a
    status word ("degraded: <why>" when the store works around a fault, such as a
    spool taking the batches Elasticsearch cannot). It is CBOR when the client Accepts CBOR, else JSON, and left out when
    it would make the response larger than the request (RFC 7252 §11.3).
    """
    word = ("ok" if degraded is None else f"degraded: {degraded}") if healthy else "unavailable"
    status = {"status": word}
    if accept == coap.ContentFormat.CBOR:
        import cbor2

        fmt, body = int(coap.ContentFormat.CBOR), cbor2.dumps(status)
    else:
        fmt, body = int(coap.ContentFormat.JSON), orjson.dumps(status)
    return (fmt, body) if len(body) <= budget else (fmt, b"")
