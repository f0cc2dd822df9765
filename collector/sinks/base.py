"""The one small interface every store implements.

A sink receives a batch of canonical events and answers with one `Result` per event,
in the same order. The collector judges each request by its own events' results, never
by the batch as a whole: one rejected event must not fail its neighbours.

Outcomes:
- STORED: written and durable as far as the store promises (see each sink).
- DUPLICATE: an event with this id was already stored, with the same content; for the
  device this is success (an idempotent retry).
- CONFLICT: an event with this client `id` was already stored with other content (the
  device reused an idempotency key); the request gets 4.09 with `reason` and the
  stored event stays as it was. Sinks compare `Event.reading()` and `Event.same_time`.
- REJECTED: the store refused this event for a reason that retrying cannot fix
  (a mapping error); the request gets 4.00 with `reason`.
- FAILED: the store could not take it now (down, overloaded, timed out); the
  request gets 5.03 with Max-Age and the device may retry.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collector.events import Event


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self is Outcome.STORED or self is Outcome.DUPLICATE


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reason: str = ""


STORED = Result(Outcome.STORED)
DUPLICATE = Result(Outcome.DUPLICATE)
CONFLICT = Result(Outcome.CONFLICT, "id: already used for another event")


class StoreUnavailable(Exception):
    """The store cannot be reached or used at all (start-up, health probes)."""


class Sink(Protocol):
    """What the batching driver needs from a store.

    `start` connects and prepares (schema, template) and raises StoreUnavailable when it
    cannot; `write` never raises for per-event problems: it returns one Result per
    event (FAILED for all when the store is down); `healthy` is a cheap probe used by
    GET /health and /readyz; `close` releases connections.

    `write_now(events) -> list[Result] | None` (optional) is the synchronous fast
    path: a sink that can finish a write without waiting returns the results at once,
    and None when it cannot (the driver then awaits `write`). The batch driver calls
    it where the batch closes, which saves a task per batch and answers within the
    same read burst.
    """

    name: str

    async def start(self) -> None: ...

    async def write(self, events: Sequence[Event]) -> list[Result]: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...
