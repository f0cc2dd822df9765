"""The null sink: everything STORED, nothing kept, always healthy."""

from __future__ import annotations

import asyncio

from collector.events import Event
from collector.sinks.base import Outcome
from collector.sinks.null import NullSink


def test_null_sink_reports_every_event_stored() -> None:
    events = [
        Event(f"id-{i}", 0, 0, "default", "s", "o", "t", 1.0, None, "h:1", 0) for i in range(3)
    ]

    async def main() -> None:
        sink = NullSink()
        assert sink.name == "null"
        await sink.start()
        assert [r.outcome for r in await sink.write(events)] == [Outcome.STORED] * 3
        assert [r.outcome for r in await sink.write(events)] == [Outcome.STORED] * 3
        assert await sink.write([]) == []
        assert await sink.healthy()
        await sink.close()

    asyncio.run(main())
