"""The command line: parsing, one-line errors, exit codes, output lines.

Exit-code tests run the real CLI process against a scripted UDP responder thread
(answers a chosen code, stays silent, or resets) so every code path is driven by
what arrives on the wire."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import cbor2
import orjson
import pytest

import coap
from coap import Code, Message, Type
from collector.client.cli import build_parser, main

from .conftest import CLI, REPO, run_cli

Reply = Callable[[Message], list[Message]]


class Responder:
    """A UDP server thread that answers each request with ``reply(request)``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received: list[Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            msg = coap.decode(data)
            self.received.append(msg)
            if msg.code != Code.EMPTY:
                for answer in self.reply(msg):
                    self.sock.sendto(coap.encode(answer), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[Callable[[Reply], Responder]]:
    started: list[Responder] = []

    def start(reply: Reply) -> Responder:
        server = Responder(reply)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _piggyback(code: int, payload: bytes = b"", content_format: int | None = None) -> Reply:
    options = () if content_format is None else ((12, coap.encode_uint(content_format)),)

    def reply(request: Message) -> list[Message]:
        kind = Type.ACK if request.type == Type.CON else Type.NON
        mid = request.mid if kind == Type.ACK else (request.mid + 1) & 0xFFFF
        return [Message(kind, code, mid, request.token, options, payload)]

    return reply


# -- parsing (in process) -----------------------------------------------------


def test_global_options_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-H", "h1", "-P", "7000", "-o", "o1", "send", "t", "1"])
    after = parser.parse_args(["send", "t", "1", "-H", "h1", "-P", "7000", "-o", "o1"])
    for args in (before, after):
        assert (args.host, args.port, args.origin, args.type, args.value) == (
            "h1",
            7000,
            "o1",
            "t",
            ["1"],
        )


def test_incremental_options() -> None:
    args = build_parser().parse_args(
        [
            "incremental",
            "-n",
            "10",
            "-p",
            "0.5",
            "-f",
            "1.1",
            "--min",
            "0",
            "--max",
            "30",
            "--window",
            "3",
            "--batch",
            "2",
            "--format",
            "senml-cbor",
            "--non",
            "temperature",
            "15",
        ]
    )
    assert (args.count, args.pace, args.factor, args.min, args.max) == (10, 0.5, 1.1, 0, 30)
    assert (args.window, args.batch, args.format, args.non) == (3, 2, "senml-cbor", True)
    assert (args.type, args.initial) == ("temperature", 15.0)
    defaults = build_parser().parse_args(["incremental", "t", "1"])
    assert defaults.count is None and defaults.pace == 0 and defaults.factor == 1


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["send"],
        ["send", "t"],
        ["-P", "0", "healthcheck"],
        ["-P", "70000", "healthcheck"],
        ["-P", "x", "healthcheck"],
        ["incremental", "t", "abc"],
        ["incremental", "t", "nan"],
        ["incremental", "-f", "0", "t", "1"],
        ["incremental", "-f", "-2", "t", "1"],
        ["incremental", "-n", "0", "t", "1"],
        ["incremental", "-p", "-1", "t", "1"],
        ["send", "--format", "xml", "t", "1"],
        ["send", "--batch", "0", "t", "1"],
        ["simulate", "--devices", "0"],
        ["simulate", "--rate", "0"],
        ["simulate", "--duration", "-1"],
        ["healthcheck", "--timeout", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("iot-client: ")


def test_min_above_max_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incremental", "--min", "5", "--max", "1", "t", "1"]) == 2
    assert capsys.readouterr().err.strip() == "iot-client: --min 5.0 is greater than --max 1.0"


def test_argument_that_is_not_utf8_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # What Python makes of the bytes b"\xff" in argv (surrogateescape).
    assert main(["send", "t", "caf\udcff"]) == 2
    assert capsys.readouterr().err.startswith("iot-client: value: not valid UTF-8")


def test_bad_iot_port_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOT_PORT", "99999")
    assert main(["healthcheck"]) == 2
    assert "IOT_PORT" in capsys.readouterr().err


def test_city_without_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENWEATHERMAP_APIKEY", raising=False)
    assert main(["city", "Madrid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["iot-client: city: set OPENWEATHERMAP_APIKEY to an OpenWeatherMap API key"]


# -- the real process against a scripted responder ---------------------------


@pytest.mark.integration
def test_help_runs_as_a_module() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("healthcheck", "send", "incremental", "simulate", "city", "discover"):
        assert command in result.stdout


@pytest.mark.integration
def test_send_prints_the_answer_and_the_event(responder: Callable[[Reply], Responder]) -> None:
    server = responder(_piggyback(Code.CREATED))
    result = run_cli(
        "-P", str(server.port), "-s", "demo", "-o", "probe1", "send", "temperature", "15.5",
        "-u", "Cel",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    head, _, body = line.partition(" {")
    assert head == "POST /events -> 2.01"
    event = orjson.loads("{" + body)
    assert event["payload"] == {"type": "temperature", "value": 15.5, "unit": "Cel"}
    assert (event["sender"], event["origin"], event["namespace"]) == ("demo", "probe1", "default")
    (request,) = server.received
    assert request.type == Type.CON and request.path == "/events"
    assert request.content_format == 50 and orjson.loads(request.payload) == event


@pytest.mark.integration
def test_silent_prints_nothing(responder: Callable[[Reply], Responder]) -> None:
    server = responder(_piggyback(Code.CREATED))
    result = run_cli("-S", "-P", str(server.port), "send", "door", "open")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert orjson.loads(server.received[0].payload)["payload"]["value"] == "open"


@pytest.mark.integration
def test_error_answer_exits_1_and_shows_the_diagnostic(
    responder: Callable[[Reply], Responder],
) -> None:
    server = responder(_piggyback(Code.BAD_REQUEST, b"event.sender: required", 0))
    result = run_cli("-P", str(server.port), "send", "t", "1")
    assert result.returncode == 1
    assert result.stdout.startswith("POST /events -> 4.00 {")
    assert result.stdout.rstrip().endswith("-- event.sender: required")


@pytest.mark.integration
def test_rst_exits_1(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda request: [Message(Type.RST, Code.EMPTY, request.mid)])
    result = run_cli("-P", str(server.port), "send", "t", "1")
    assert result.returncode == 1
    assert result.stdout.startswith("POST /events -> RST ")


@pytest.mark.integration
def test_no_answer_exits_3(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda request: [])
    result = run_cli(
        "-P", str(server.port), "send", "t", "1", "--ack-timeout", "0.05", "--max-retransmit", "2"
    )
    assert result.returncode == 3
    assert result.stdout.startswith("POST /events -> timeout (no answer within")
    assert len(server.received) == 3  # one transmission and two retransmissions
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_non_sends_non(responder: Callable[[Reply], Responder]) -> None:
    server = responder(_piggyback(Code.CREATED))
    result = run_cli("-P", str(server.port), "send", "--non", "t", "1")
    assert result.returncode == 0
    assert [m.type for m in server.received] == [Type.NON]


@pytest.mark.integration
def test_healthcheck(responder: Callable[[Reply], Responder]) -> None:
    healthy = responder(_piggyback(Code.CONTENT, b'{"status":"ok"}', 50))
    result = run_cli("-P", str(healthy.port), "healthcheck")
    assert result.returncode == 0
    assert result.stdout.strip() == 'GET /health -> 2.05 {"status":"ok"}'
    assert healthy.received[0].code == Code.GET and healthy.received[0].path == "/health"
    sick = responder(_piggyback(Code.SERVICE_UNAVAILABLE, b"storage down", 0))
    result = run_cli("-P", str(sick.port), "healthcheck")
    assert result.returncode == 1
    assert result.stdout.strip() == "GET /health -> 5.03 -- storage down"


@pytest.mark.integration
def test_incremental_batches_and_window(responder: Callable[[Reply], Responder]) -> None:
    server = responder(_piggyback(Code.CREATED))
    result = run_cli(
        "-P", str(server.port), "incremental", "-n", "5", "-f", "2", "--batch", "2", "v", "1"
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3  # requests of 2, 2 and 1 events
    bodies = [orjson.loads(m.payload) for m in server.received]
    values = []
    for body in bodies:
        values += [e["payload"]["value"] for e in (body if isinstance(body, list) else [body])]
    assert sorted(values) == [1, 2, 4, 8, 16]


@pytest.mark.integration
def test_unresolvable_host_exits_2() -> None:
    result = run_cli("-H", "no-such-host.invalid", "send", "t", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("iot-client: cannot resolve host 'no-such-host.invalid'")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.integration
def test_argparse_error_from_the_process_is_one_line() -> None:
    result = run_cli("incremental", "-f", "zero", "t", "1")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.integration
def test_send_several_values_in_batches(responder: Callable[[Reply], Responder]) -> None:
    server = responder(_piggyback(Code.CREATED))
    result = run_cli(
        "-P", str(server.port), "send", "--batch", "2", "--format", "cbor", "t", "1", "x", "true"
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    bodies = [cbor2.loads(m.payload) for m in server.received]
    batches = [b for b in bodies if isinstance(b, list)]
    singles = [b for b in bodies if isinstance(b, dict)]
    assert [[e["payload"]["value"] for e in batch] for batch in batches] == [[1, "x"]]
    assert [e["payload"]["value"] for e in singles] == [True]


@pytest.mark.integration
def test_incremental_forever_stops_cleanly_on_sigint(
    responder: Callable[[Reply], Responder],
) -> None:
    server = responder(_piggyback(Code.CREATED))
    proc = subprocess.Popen(
        [*CLI, "-P", str(server.port), "incremental", "-p", "0.05", "t", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # sending has started
        assert first.startswith("POST /events -> 2.01 ")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == ""
    # Every request sent got its answer printed before the exit.
    assert len(out.splitlines()) + 1 == len(server.received)
