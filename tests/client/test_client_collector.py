"""The client against our own collector (real process, sqlite sink): what the
client says was acknowledged is exactly what the store holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from coap import Code, Type
from collector.client.endpoint import ClientEndpoint, Response
from collector.client.payloads import encode_body, make_event

from .conftest import free_udp_port, run_cli, start_collector, stop_process

pytestmark = pytest.mark.integration


@dataclass
class Collector:
    port: int
    db: Path

    def rows(self, where: str = "1", *args: object) -> list[sqlite3.Row]:
        connection = sqlite3.connect(self.db)
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(
                f"SELECT * FROM events WHERE {where} ORDER BY ts_ms, type", args
            ).fetchall()
        finally:
            connection.close()


def _start_collector(tmp_path: Path, *extra: str) -> Iterator[Collector]:
    db = tmp_path / "events.db"
    args = ["--host", "127.0.0.1", "--workers", "1", "--metrics-port", "0"]
    args += ["--sink", "sqlite", "--sqlite-path", str(db), *extra]
    proc, port = start_collector(args, tmp_path / "collector.log")
    try:
        yield Collector(port, db)
    finally:
        stop_process(proc)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    yield from _start_collector(tmp_path)


def test_send_is_stored(collector: Collector) -> None:
    result = run_cli(
        "-P", str(collector.port), "-s", "demo", "-o", "probe1", "-N", "lab",
        "send", "temperature", "15.5", "-u", "Cel",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sent = orjson.loads(result.stdout.split(" -> 2.01 ", 1)[1])
    (row,) = collector.rows()
    assert (row["namespace"], row["sender"], row["origin"], row["type"]) == (
        "lab",
        "demo",
        "probe1",
        "temperature",
    )
    assert (row["value"], row["unit"]) == (15.5, "Cel")
    assert row["ts_ms"] % 1000 == int(sent["timestamp"][-4:-1])
    host, port = row["source"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


def test_thesis_demo_incremental_is_stored(collector: Collector) -> None:
    result = run_cli(
        "-P", str(collector.port), "-s", "demoMemoria", "-o", "probe1",
        "incremental", "-n", "10", "-f", "1.1", "temperature", "15",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 10 and all(line.startswith("POST /events -> 2.01 {") for line in lines)
    values = sorted(row["value"] for row in collector.rows("origin = ?", "probe1"))
    assert values == pytest.approx([15 * 1.1**i for i in range(10)])
    assert values[:3] == pytest.approx([15, 16.5, 18.15])
    assert {row["sender"] for row in collector.rows()} == {"demoMemoria"}


@pytest.mark.parametrize("fmt", ["json", "cbor", "senml-json", "senml-cbor"])
def test_every_format_and_batch_is_stored(collector: Collector, fmt: str) -> None:
    result = run_cli(
        "-P", str(collector.port), "-o", "probe7", "-s", "lab-7", "-N", "lab",
        "incremental", "-n", "7", "-f", "2",
        "--batch", "3", "--format", fmt, "v", "1", "--non", "--timeout", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    rows = collector.rows("origin = ?", "probe7")
    assert sorted(row["value"] for row in rows) == [1, 2, 4, 8, 16, 32, 64]
    # SenML carries sender and namespace in ?sender= / ?namespace=: same rows as JSON.
    assert {(row["sender"], row["namespace"]) for row in rows} == {("lab-7", "lab")}


def test_send_string_and_bool_values(collector: Collector) -> None:
    port = str(collector.port)
    assert run_cli("-P", port, "send", "door", "open").returncode == 0
    assert run_cli("-P", port, "send", "alarm", "true").returncode == 0
    by_type = {row["type"]: row for row in collector.rows()}
    assert by_type["door"]["value_text"] == "open"
    assert by_type["alarm"]["value_bool"] == 1


def test_healthcheck_against_the_collector(collector: Collector) -> None:
    result = run_cli("-P", str(collector.port), "healthcheck")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "GET /health -> 2.05 0 (ok)"


def test_bad_event_exits_1_with_the_collectors_diagnostic(collector: Collector) -> None:
    result = run_cli("-P", str(collector.port), "-s", "x" * 300, "send", "t", "1")
    assert result.returncode == 1
    assert result.stdout.startswith("POST /events -> 4.00 {")
    assert " -- " in result.stdout
    assert collector.rows() == []


def test_simulate_stores_every_acked_reading_once(collector: Collector) -> None:
    result = run_cli(
        "-P", str(collector.port), "simulate", "--devices", "6", "--rate", "60",
        "--duration", "3", "--seed", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    acked = int(re.search(r"events acked (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    sent = int(re.search(r"\((\d+) events\)", result.stdout).group(1))  # type: ignore[union-attr]
    assert acked == sent == 180
    # The live progress line (\r-separated; text mode reads \r as a line end).
    assert result.stderr.count("simulate ") >= 3
    rows = collector.rows()
    assert len(rows) == acked
    assert len({row["id"] for row in rows}) == acked
    # Six devices, six origins, six source ports.
    assert {row["origin"] for row in rows} == {f"station-{i}" for i in range(1, 7)}
    assert len({row["source"] for row in rows}) == 6
    assert {row["type"] for row in rows} == {"temperature", "humidity", "pressure"}
    pressures = [row["value"] for row in rows if row["type"] == "pressure"]
    assert all(900 < p < 1100 for p in pressures)


@contextlib.contextmanager
def _store_locked(db: Path, seconds: float) -> Iterator[None]:
    """Hold sqlite's write lock for `seconds` in a thread: a real slow store."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(seconds, conn.rollback)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        conn.close()


def test_separate_responses_from_a_slow_store(tmp_path: Path) -> None:
    """With the store locked longer than a 10 ms ack delay the collector answers with an
    empty ACK and a separate CON response; the client must ACK it and finish."""
    for collector in _start_collector(tmp_path, "--ack-delay", "0.01"):

        async def one(port: int) -> Response:
            endpoint = await ClientEndpoint.connect("127.0.0.1", port)
            try:
                body, fmt = encode_body(
                    [make_event(type="t", value=0, origin="sep", sender="s")], "json"
                )
                return await endpoint.request(
                    Code.POST, "/events", payload=body, content_format=fmt, timeout=20
                )
            finally:
                endpoint.close()

        with _store_locked(collector.db, 0.5):
            response = asyncio.run(one(collector.port))
        assert response.code == Code.CREATED
        assert response.separate and response.message.type == Type.CON
        assert response.transmissions == 1
        with _store_locked(collector.db, 0.5):
            result = run_cli(
                "-P", str(collector.port), "incremental", "-n", "4", "--window", "4", "-f", "2",
                "t", "1", "--timeout", "20",
            )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 4
        assert len(collector.rows()) == 5


# -- city, against a stand-in for the OpenWeatherMap API ---------------------------

# The reading's time (`dt`): ten minutes ago, inside the collector's accepted window.
OWM_DT = int(time.time()) - 600
# The documented shape of "current weather data" (units=metric).
OWM_MADRID: dict[str, Any] = {
    "coord": {"lon": -3.7026, "lat": 40.4165},
    "weather": [{"id": 800, "main": "Clear", "description": "clear sky", "icon": "01d"}],
    "base": "stations",
    "main": {
        "temp": 21.5,
        "feels_like": 20.9,
        "temp_min": 19.8,
        "temp_max": 23.1,
        "pressure": 1018,
        "humidity": 40,
    },
    "visibility": 10000,
    "wind": {"speed": 3.6, "deg": 250},
    "clouds": {"all": 0},
    "dt": OWM_DT,
    "sys": {"type": 2, "id": 2007545, "country": "ES", "sunrise": 1764055000, "sunset": 1764090000},
    "timezone": 3600,
    "id": 3117735,
    "name": "Madrid",
    "cod": 200,
}


class _Weather(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path != "/data/2.5/weather" or query.get("units") != "metric":
            self._answer(400, {"cod": "400", "message": "bad request"})
        elif query.get("appid") != "test-key":
            self._answer(401, {"cod": 401, "message": "Invalid API key."})
        elif query.get("q") != "Madrid":
            self._answer(404, {"cod": "404", "message": "city not found"})
        else:
            self._answer(200, OWM_MADRID)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def weather_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Weather)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("options", "requests"), [((), 4), (("--batch", "4", "--format", "cbor"), 1)]
)
def test_city_sends_the_weather(
    collector: Collector, weather_api: str, options: tuple[str, ...], requests: int
) -> None:
    env = {"OPENWEATHERMAP_APIKEY": "test-key", "OPENWEATHERMAP_URL": weather_api}
    result = run_cli("-P", str(collector.port), "city", "Madrid", *options, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == requests
    rows = collector.rows()
    assert {(r["sender"], r["origin"]) for r in rows} == {("weathercity", "Madrid")}
    assert {r["type"]: (r["value"], r["unit"]) for r in rows} == {
        "temperature": (21.5, "Cel"),
        "humidity": (40, "%RH"),
        "pressure": (1018, "hPa"),
        "wind": (3.6, "m/s"),
    }
    assert {r["ts_ms"] for r in rows} == {OWM_DT * 1000}


@pytest.mark.parametrize(
    ("key", "city", "code", "message"),
    [
        ("wrong", "Madrid", 2, "iot-client: city: OpenWeatherMap rejected the API key (HTTP 401)"),
        ("test-key", "Atlantis", 2, "iot-client: city: OpenWeatherMap does not know the city"),
    ],
)
def test_city_errors_are_one_line(
    weather_api: str, key: str, city: str, code: int, message: str
) -> None:
    env = {"OPENWEATHERMAP_APIKEY": key, "OPENWEATHERMAP_URL": weather_api}
    result = run_cli("-P", str(free_udp_port()), "city", city, env=env)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1


def test_city_unreachable_api_exits_1() -> None:
    env = {
        "OPENWEATHERMAP_APIKEY": "k",
        "OPENWEATHERMAP_URL": f"http://127.0.0.1:{free_udp_port()}",
    }
    result = run_cli("city", "Madrid", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("iot-client: city: cannot reach OpenWeatherMap")
    assert len(result.stderr.splitlines()) == 1
