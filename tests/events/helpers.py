"""Shared defaults for calling decode_events in tests."""

from __future__ import annotations

from typing import Any

from collector.events import Event, decode_events

RECEIVED_MS = 1_764_079_704_771  # 2025-11-25T14:08:24.771Z
SOURCE = "192.0.2.7:40000"


def decode(payload: bytes, content_format: int | None = None, **overrides: Any) -> list[Event]:
    kwargs: dict[str, Any] = {
        "source": SOURCE,
        "mid": 4242,
        "received_ms": RECEIVED_MS,
        "worker": 1,
    }
    kwargs.update(overrides)
    return decode_events(payload, content_format, **kwargs)
