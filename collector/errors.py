"""The one family of request errors: each knows the answer it becomes.

Everything the collector refuses a request for is a :class:`RequestError` (or one of
the codec's request errors, `coap.BadOption`, `coap.BadRequest`, which share the
base `coap.CoapError` and carry a ``code``): its response code, a short diagnostic
(``str(exc)``, sent as text/plain and cut to the request's size, RFC 7252 §11.3)
and any options the answer needs (Size1 on 4.13, Max-Age on 4.29 and 5.03). The
request core turns them into responses in exactly one place (`RequestCore._refuse`).
"""

from __future__ import annotations

import coap

Options = tuple[tuple[int, bytes], ...]

__all__ = [
    "NotAcceptable",
    "Options",
    "PreconditionFailed",
    "RequestError",
    "TooManyRequests",
    "Unavailable",
]


class RequestError(coap.CoapError):
    """A request the collector answers with an error code (4.xx/5.xx)."""

    code: int = coap.Code.BAD_REQUEST

    def __init__(self, message: str, *, code: int | None = None, options: Options = ()) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.options = options


class NotAcceptable(RequestError):
    """4.06: the Accept option names a format the resource cannot produce (§5.10.4)."""

    code = coap.Code.NOT_ACCEPTABLE


class PreconditionFailed(RequestError):
    """4.12: an If-Match or If-None-Match that does not hold (§5.10.8)."""

    code = coap.Code.PRECONDITION_FAILED


class TooManyRequests(RequestError):
    """4.29 (RFC 8516): over the rate limit; Max-Age says when to come back."""

    code = coap.Code.TOO_MANY_REQUESTS


class Unavailable(RequestError):
    """5.03: the store is down, the worker overloaded or draining (with Max-Age)."""

    code = coap.Code.SERVICE_UNAVAILABLE
