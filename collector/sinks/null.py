"""The `null` sink: accepts every event and stores nothing.

It exists to measure the collector alone (decoding, exchanges, batching) without a
store's cost. Every event is reported STORED, so devices get 2.01 and their data is
gone: never use it for data you want to keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from collector.sinks.base import STORED, Result

if TYPE_CHECKING:
    from collector.events import Event


class NullSink:
    """A sink that reports every event stored and keeps nothing."""

    name = "null"

    async def start(self) -> None:
        return None

    def write_now(self, events: Sequence[Event]) -> list[Result]:
        """See Sink: the null sink never waits."""
        return [STORED] * len(events)

    async def write(self, events: Sequence[Event]) -> list[Result]:
        return [STORED] * len(events)

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None
