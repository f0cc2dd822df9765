"""``city NAME``: the current weather of a city, from OpenWeatherMap, sent as events.

As in the thesis' CronJobs (chapter 5.3), the events carry ``sender=weathercity``
and ``origin=<city>``. The API is the "current weather data" call:
``GET {base}/data/2.5/weather?q=NAME&appid=KEY&units=metric``, whose answer holds
``main.temp`` (deg C with metric units), ``main.humidity`` (%), ``main.pressure``
(hPa), ``wind.speed`` (m/s) and ``dt`` (the observation time, epoch seconds).
``OPENWEATHERMAP_URL`` overrides the base URL (tests point it at a local stand-in).
Only the standard library's urllib is used; the fetch runs in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final, TextIO

from . import payloads
from .commands import ClientConfig, send_events

__all__ = ["CityError", "city_events", "fetch_weather", "run_city"]

DEFAULT_BASE_URL: Final = "https://api.openweathermap.org"
SENDER: Final = "weathercity"
HTTP_TIMEOUT: Final = 10.0
_MAX_BODY: Final = 1 << 20

#: (event type, unit, path in the answer)
_FIELDS: Final = (
    ("temperature", "Cel", ("main", "temp")),
    ("humidity", "%RH", ("main", "humidity")),
    ("pressure", "hPa", ("main", "pressure")),
    ("wind", "m/s", ("wind", "speed")),
)


class CityError(Exception):
    """The weather could not be had; ``exit_code`` is 2 for configuration problems
    (no key, key rejected, unknown city), 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fetch_weather(name: str, api_key: str, base_url: str, timeout: float) -> dict[str, Any]:
    """The API's JSON answer for ``name``. Raises CityError."""
    query = urllib.parse.urlencode({"q": name, "appid": api_key, "units": "metric"})
    url = f"{base_url.rstrip('/')}/data/2.5/weather?{query}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise CityError("OpenWeatherMap rejected the API key (HTTP 401)", 2) from None
        if exc.code == 404:
            raise CityError(
                f"OpenWeatherMap does not know the city {name!r} (HTTP 404)", 2
            ) from None
        raise CityError(f"OpenWeatherMap answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CityError(f"cannot reach OpenWeatherMap at {base_url}: {reason}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise CityError("OpenWeatherMap's answer is not JSON") from None
    if not isinstance(document, dict):
        raise CityError("OpenWeatherMap's answer is not a JSON object")
    return document


def city_events(config: ClientConfig, city: str, weather: dict[str, Any]) -> list[payloads.Event]:
    """Events for the readings present in ``weather``. Raises CityError when none is."""
    observed = weather.get("dt")
    timestamp = float(observed) if isinstance(observed, int | float) else None
    city_config = dataclasses.replace(config, sender=SENDER, origin=city)
    events = []
    for kind, unit, (section, key) in _FIELDS:
        part = weather.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        events.append(city_config.event(kind, value, unit=unit, timestamp=timestamp))
    if not events:
        raise CityError("OpenWeatherMap's answer has no temperature, humidity, pressure or wind")
    return events


async def run_city(config: ClientConfig, name: str, out: TextIO) -> int:
    """Fetch the weather of ``name`` and send it; returns the exit code."""
    api_key = os.environ.get("OPENWEATHERMAP_APIKEY", "").strip()
    if not api_key:
        raise CityError("set OPENWEATHERMAP_APIKEY to an OpenWeatherMap API key", 2)
    base_url = os.environ.get("OPENWEATHERMAP_URL", "").strip() or DEFAULT_BASE_URL
    timeout = config.timeout or HTTP_TIMEOUT
    weather = await asyncio.to_thread(fetch_weather, name, api_key, base_url, timeout)
    return await send_events(config, city_events(config, name, weather), out)
