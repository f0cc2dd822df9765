"""The event-time window: devices must not choose which daily indices exist (issue 11:
one request of 40 events with 40 distinct days created 40 Elasticsearch indices)."""

from __future__ import annotations

import argparse

import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config import Config, ConfigError, add_serve_arguments, build_config, event_limits
from collector.events import DEFAULT_LIMITS, InvalidEvent, Limits, duration_text

from .helpers import RECEIVED_MS, decode

DAY_MS = 86_400_000
EVENT = {"sender": "s", "origin": "o", "payload": {"type": "t", "value": 1}}


def timed(ms: int) -> bytes:
    return orjson.dumps({**EVENT, "timestamp": ms / 1000})


def test_default_window_is_seven_days_back_and_ten_minutes_ahead() -> None:
    assert (DEFAULT_LIMITS.max_event_age_ms, DEFAULT_LIMITS.max_event_future_ms) == (
        7 * DAY_MS,
        600_000,
    )


@pytest.mark.parametrize(
    ("offset_ms", "problem"),
    [
        (-7 * DAY_MS - 1000, "older than 7d"),
        (-30 * 365 * DAY_MS, "older than 7d"),
        (600_001 + 999, "more than 10m in the future"),
        (7000 * 365 * DAY_MS, "more than 10m in the future"),
    ],
)
def test_event_time_outside_the_window_is_refused_saying_why(offset_ms: int, problem: str) -> None:
    body = [EVENT, {**EVENT, "timestamp": (RECEIVED_MS + offset_ms) / 1000}]
    with pytest.raises(InvalidEvent, match=rf"^event\[1\]\.timestamp: {problem}$"):
        decode(orjson.dumps(body), limits=DEFAULT_LIMITS)
    with pytest.raises(InvalidEvent, match=rf"^event\[1\]\.timestamp: {problem}$"):
        decode(cbor2.dumps(body), 60, limits=DEFAULT_LIMITS)


def test_window_edges_are_inside() -> None:
    for ms in (RECEIVED_MS - 7 * DAY_MS, RECEIVED_MS + 600_000, RECEIVED_MS):
        [event] = decode(timed(ms), limits=DEFAULT_LIMITS)
        assert event.timestamp_ms == ms


def test_the_diagnostic_names_the_configured_bounds() -> None:
    limits = Limits(max_event_age_ms=36 * 3_600_000, max_event_future_ms=90_000)
    with pytest.raises(InvalidEvent, match=r"^timestamp: older than 36h$"):
        decode(timed(RECEIVED_MS - 37 * 3_600_000), limits=limits)
    with pytest.raises(InvalidEvent, match=r"^timestamp: more than 90s in the future$"):
        decode(timed(RECEIVED_MS + 91_000), limits=limits)


def test_senml_base_time_plus_time_is_windowed_too() -> None:
    base = RECEIVED_MS / 1000
    ok = [{"bn": "p1/", "bt": base, "n": "t", "v": 1}, {"n": "t", "v": 2, "t": -3600}]
    assert len(decode(orjson.dumps(ok), 110, limits=DEFAULT_LIMITS)) == 2
    old = [{"bn": "p1/", "bt": base, "n": "t", "v": 1}, {"n": "t", "v": 2, "t": -8 * 86400}]
    with pytest.raises(InvalidEvent, match=r"^record\[1\]\.t: older than 7d$"):
        decode(orjson.dumps(old), 110, limits=DEFAULT_LIMITS)
    # A relative time (below 2**28) counts from the receive time, and is windowed too.
    ahead = [{"n": "p1/t", "v": 1, "t": 3600}]
    with pytest.raises(InvalidEvent, match=r"^record\[0\]\.t: more than 10m in the future$"):
        decode(orjson.dumps(ahead), 110, limits=DEFAULT_LIMITS)


def test_an_event_without_timestamp_is_always_inside() -> None:
    [event] = decode(orjson.dumps(EVENT), limits=Limits(max_event_age_ms=0, max_event_future_ms=0))
    assert event.timestamp_ms == RECEIVED_MS


@given(st.integers(-30 * DAY_MS, 30 * DAY_MS))
def test_accepted_exactly_within_the_window(offset_ms: int) -> None:
    ms = RECEIVED_MS + offset_ms
    inside = -7 * DAY_MS <= offset_ms <= 600_000
    try:
        [event] = decode(orjson.dumps({**EVENT, "timestamp": ms / 1000}), limits=DEFAULT_LIMITS)
    except InvalidEvent as exc:
        assert not inside, exc
        assert str(exc).startswith("timestamp: ")
    else:
        assert inside and event.timestamp_ms == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (7 * DAY_MS, "7d"),
        (600_000, "10m"),
        (90_000, "90s"),
        (36 * 3_600_000, "36h"),
        (1500, "1.5s"),
        (0, "0s"),
    ],
)
def test_duration_text(ms: int, text: str) -> None:
    assert duration_text(ms) == text


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return build_config(parser.parse_args(argv), env or {})


def test_window_flags_default_to_the_decoder_defaults() -> None:
    limits = event_limits(parse([]))
    assert (limits.max_event_age_ms, limits.max_event_future_ms) == (
        DEFAULT_LIMITS.max_event_age_ms,
        DEFAULT_LIMITS.max_event_future_ms,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("36h", 129600),
        ("30d", 2592000),
        ("45", 45),
        ("1.5", 1.5),
        ("0", 0),
    ],
)
def test_window_flags_take_durations_or_seconds(text: str, seconds: float) -> None:
    c = parse(["--max-event-age", text], {"COLLECTOR_MAX_EVENT_FUTURE": text})
    assert c.max_event_age == c.max_event_future == seconds
    limits = event_limits(c)
    assert limits.max_event_age_ms == limits.max_event_future_ms == round(seconds * 1000)


@pytest.mark.parametrize("text", ["", "7w", "d", "-1m", "nan", "infs", "1e400d", "ten"])
def test_bad_window_values_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--max-event-age: not a duration: "):
        parse([f"--max-event-age={text}"])
    with pytest.raises(ConfigError, match=r"^COLLECTOR_MAX_EVENT_FUTURE: not a duration: "):
        parse([], {"COLLECTOR_MAX_EVENT_FUTURE": text})
