"""Shared defaults for calling decode_events in tests."""

from __future__ import annotations

from typing import Any

from collector.events import Event, Limits, decode_events

RECEIVED_MS = 1_764_079_704_771  # 2025-11-25T14:08:24.771Z
SOURCE = "192.0.2.7:40000"

#: Every instant of 1970..9999 inside the event-time window: for the tests of parsing
#: and ids, whose fixed times lie anywhere relative to RECEIVED_MS. The window itself
#: is pinned by test_events_window.py, with the default limits.
ANY_TIME = Limits(max_event_age_ms=10**15, max_event_future_ms=10**15)


def decode(payload: bytes, content_format: int | None = None, **overrides: Any) -> list[Event]:
    kwargs: dict[str, Any] = {
        "source": SOURCE,
        "mid": 4242,
        "received_ms": RECEIVED_MS,
        "worker": 1,
        "limits": ANY_TIME,
    }
    kwargs.update(overrides)
    return decode_events(payload, content_format, **kwargs)
