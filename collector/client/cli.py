"""``iot-client``: the thesis' command-line client (chapter 4.9), on our own codec.

    iot-client [-H host] [-P port] [-o origin] [-s sender] [-N namespace] [-S] COMMAND

Commands: ``healthcheck``, ``discover``, ``send TYPE VALUE...``,
``incremental TYPE INITIAL``, ``simulate``, ``city NAME``. Global options may also
follow the command. Exit codes: 0 every request answered 2.xx; 1 some answer
4.xx/5.xx (or RST); 2 usage or configuration error; 3 some request got no answer
(timeout, or the port refused: no CoAP server there);
130 when Ctrl-C stops a one-shot command (an endless ``incremental`` ends normally).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from coap.transmission import TransmissionParameters
from collector import __version__

from . import payloads
from .city import CityError, run_city
from .commands import (
    ClientConfig,
    incremental_values,
    run_discover,
    run_healthcheck,
    run_incremental,
    run_send,
)
from .outcomes import EXIT_TIMEOUT, EXIT_USAGE
from .simulate import run_simulate

__all__ = ["build_parser", "main"]

PROG = "iot-client"
#: Simulator bounds: every load loop is bounded in count and time.
MAX_DEVICES = 5000
MAX_BATCH = 1000
MAX_WINDOW = 10_000
#: simulate's default per-request deadline: the run must end soon after --duration.
SIMULATE_TIMEOUT = 10.0


class UsageError(Exception):
    """A bad option value found after parsing: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports an error as one line and exits 2 (no usage dump), and
    remembers its own options (for :func:`_misplaced_option`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.own_options: dict[str, bool] = {}  # option string -> takes a value
        self.command_parsers: dict[str, _Parser] = {}  # the top-level parser's commands
        super().__init__(*args, **kwargs)  # adds -h through add_argument

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        for name in action.option_strings:
            self.own_options[name] = action.nargs != 0
        return action

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: {message} (try '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _misplaced_option(
    argv: Sequence[str], top: _Parser, commands: dict[str, _Parser]
) -> str | None:
    """What is wrong with the options before the command, in words, or None.

    argparse reads an unknown option before the command as "the command is missing"
    and a command's option there (``--timeout 1 send``) as "invalid choice: '1'".
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in commands or token == "--" or not token.startswith("-") or token == "-":
            return None
        long = token.startswith("--")
        name = token.split("=", 1)[0] if long else token[:2]
        attached = ("=" in token) if long else len(token) > 2
        if name in top.own_options:
            i += 2 if top.own_options[name] and not attached else 1
            continue
        owners = [cmd for cmd, sub in commands.items() if name in sub.own_options]
        if owners:
            given = next((word for word in argv if word in commands), None)
            example = given if given in owners else owners[0]
            which = "" if len(owners) == len(commands) else f" ({', '.join(owners)})"
            return (
                f"{name} is an option of the command{which}: put it after the command, "
                f"as in '{PROG} {example} {name} ...'"
            )
        return f"unknown option {name}"
    return None


def _float_where(ok: Callable[[float], bool], words: str) -> Callable[[str], float]:
    """An argparse type: a finite float for which `ok` holds, else "must be <words>"."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {words}: {text!r}")
        return value

    return parse


_positive_float = _float_where(lambda v: v > 0, "a positive number")
_non_negative_float = _float_where(lambda v: v >= 0, "zero or more")
_finite_float = _float_where(lambda v: True, "a finite number")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}: {text!r}")
        return value

    return parse


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The thesis' global options. On subcommands they default to SUPPRESS so that
    ``iot-client send -H h ...`` and ``iot-client -H h send ...`` both work."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    env = os.environ
    parser.add_argument(
        "-H",
        "--host",
        default=default(env.get("IOT_HOST", "127.0.0.1")),
        help="collector host (env IOT_HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "-P",
        "--port",
        type=_int_between(1, 65535),
        default=default(None),
        help="collector UDP port (env IOT_PORT; default 5683, 5684 with a PSK)",
    )
    parser.add_argument(
        "-o",
        "--origin",
        default=default(None),
        help="origin of the data (default probe1; simulate: station-N; city: the city)",
    )
    parser.add_argument(
        "-s",
        "--sender",
        default=default("iot-client"),
        help="sender of the data (default iot-client; city: weathercity)",
    )
    parser.add_argument(
        "-N",
        "--namespace",
        default=default("default"),
        help="namespace of the data (default: default)",
    )
    parser.add_argument(
        "--psk-identity",
        default=default(env.get("IOT_PSK_IDENTITY")),
        help="speak coaps (DTLS, PSK) as this identity (env IOT_PSK_IDENTITY)",
    )
    parser.add_argument(
        "--psk-key",
        default=default(None),
        help="the identity's key as text (env IOT_PSK_KEY)",
    )
    parser.add_argument(
        "--psk-key-hex",
        default=default(None),
        help="the identity's key in hexadecimal",
    )
    parser.add_argument(
        "-S",
        "--silent",
        action="store_true",
        default=default(False),
        help="do not print answers (the exit code still tells)",
    )


def _add_transport(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--non",
        action="store_true",
        help="send non-confirmable (NON) requests: no retransmission",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help="give up on a request after this many seconds "
        "(default: MAX_TRANSMIT_WAIT, 93 s with the default ACK timeout; simulate: 10 s)",
    )
    parser.add_argument(
        "--ack-timeout",
        type=_positive_float,
        default=2.0,
        help="RFC 7252 ACK_TIMEOUT in seconds: first retransmission after "
        "ACK_TIMEOUT x [1, 1.5], doubling (default 2)",
    )
    parser.add_argument(
        "--max-retransmit",
        type=_int_between(0, 20),
        default=4,
        help="RFC 7252 MAX_RETRANSMIT (default 4)",
    )


def _add_sending(parser: argparse.ArgumentParser, *, window: bool = True) -> None:
    _add_transport(parser)
    parser.add_argument(
        "--format",
        choices=list(payloads.FORMATS),
        default="json",
        help="request body format (default json); SenML carries neither sender nor "
        "namespace, so the collector fills those in",
    )
    parser.add_argument(
        "--batch",
        type=_int_between(1, MAX_BATCH),
        default=1,
        metavar="K",
        help="events per request (default 1)",
    )
    if window:
        parser.add_argument(
            "--window",
            type=_int_between(1, MAX_WINDOW),
            default=8,
            help="requests in flight at once (default 8)",
        )


def build_parser() -> _Parser:
    """The whole command line."""
    parser = _Parser(
        prog=PROG,
        description="Send events to an iot-collector over CoAP, check it, simulate a fleet.",
        epilog="exit codes: 0 every answer 2.xx; 1 some answer 4.xx/5.xx or RST; "
        "2 usage or configuration error; 3 some request got no answer (timeout, or "
        "connection refused: no CoAP server at the port); 130 interrupted",
    )
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    _add_globals(parser, suppress=False)
    common = _Parser(add_help=False)
    _add_globals(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    health = commands.add_parser(
        "healthcheck", parents=[common], help="GET /health; exit 0 only when healthy"
    )
    _add_transport(health)

    discover = commands.add_parser(
        "discover", parents=[common], help="GET /.well-known/core and list the resources"
    )
    _add_transport(discover)

    send = commands.add_parser("send", parents=[common], help="send an event (one per VALUE)")
    send.add_argument("type", help="event type, e.g. temperature")
    send.add_argument(
        "value",
        nargs="+",
        help="a number, true/false, or any text; several values make several events "
        "(--batch K of them per request)",
    )
    send.add_argument("-u", "--unit", help="unit (SenML name, e.g. Cel)")
    _add_sending(send)

    inc = commands.add_parser(
        "incremental",
        parents=[common],
        help="send a series of events, each value the previous times a factor",
    )
    inc.add_argument("type", help="event type, e.g. temperature")
    inc.add_argument("initial", type=_finite_float, help="initial value")
    inc.add_argument(
        "-n",
        "--number-of-events",
        dest="count",
        type=_int_between(1, 2**62),
        default=None,
        help="number of events to send (default: forever, until Ctrl-C)",
    )
    inc.add_argument(
        "-p",
        "--pace",
        type=_non_negative_float,
        default=0.0,
        help="seconds between events (default 0)",
    )
    inc.add_argument(
        "-f",
        "--factor",
        type=_positive_float,
        default=1.0,
        help="positive multiplicative factor (default 1)",
    )
    inc.add_argument("--min", type=_finite_float, default=None, help="minimum value allowed")
    inc.add_argument("--max", type=_finite_float, default=None, help="maximum value allowed")
    inc.add_argument("-u", "--unit", help="unit (SenML name, e.g. Cel)")
    _add_sending(inc)

    sim = commands.add_parser(
        "simulate",
        parents=[common],
        help="a fleet of devices sending weather readings at a fixed total rate",
    )
    sim.add_argument(
        "--devices",
        type=_int_between(1, MAX_DEVICES),
        default=10,
        help="virtual devices, each with its own UDP socket (default 10)",
    )
    sim.add_argument(
        "--rate", type=_positive_float, default=100.0, help="events per second, all devices"
    )
    sim.add_argument(
        "--duration", type=_positive_float, default=10.0, help="seconds of sending (default 10)"
    )
    sim.add_argument("--seed", type=int, default=None, help="random seed for the readings")
    sim.add_argument(
        "--max-in-flight",
        type=_int_between(1, 1_000_000),
        default=20_000,
        help="requests outstanding at most; beyond it a due request is skipped",
    )
    _add_sending(sim, window=False)

    city = commands.add_parser(
        "city",
        parents=[common],
        help="current weather of a city from OpenWeatherMap (OPENWEATHERMAP_APIKEY)",
    )
    city.add_argument("name", help="city name, e.g. Madrid or 'Madrid,ES'")
    _add_sending(city)
    # The action's public `choices`: command name -> its parser.
    parser.command_parsers = dict(commands.choices)
    return parser


def _check_text(args: argparse.Namespace) -> None:
    """Arguments that are not valid UTF-8 reach Python as lone surrogates; events
    are UTF-8 on the wire, so say so now rather than fail while encoding."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{name}: not valid UTF-8: {item!r}") from None


def _psk(args: argparse.Namespace) -> tuple[str, bytes] | None:
    """(identity, key) from --psk-identity and --psk-key/--psk-key-hex (or the env)."""
    identity = getattr(args, "psk_identity", None)
    text, hexed = getattr(args, "psk_key", None), getattr(args, "psk_key_hex", None)
    if text is None and hexed is None:
        text = os.environ.get("IOT_PSK_KEY")
    if identity is None:
        if text is not None or hexed is not None:
            raise UsageError("--psk-key needs --psk-identity")
        return None
    if text is not None and hexed is not None:
        raise UsageError("give one of --psk-key, --psk-key-hex")
    if hexed is not None:
        try:
            key = bytes.fromhex(hexed)
        except ValueError:
            raise UsageError("--psk-key-hex: not hexadecimal") from None
    elif text is not None:
        key = text.encode()
    else:
        raise UsageError("--psk-identity needs --psk-key or --psk-key-hex (or IOT_PSK_KEY)")
    if not identity or not key:
        raise UsageError("--psk-identity and the key must not be empty")
    return identity, key


def _config(args: argparse.Namespace) -> ClientConfig:
    psk = _psk(args)
    port = args.port
    if port is None:
        env_port = os.environ.get("IOT_PORT")
        if env_port:
            try:
                port = _int_between(1, 65535)(env_port)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"IOT_PORT: {exc}") from None
        else:
            port = 5684 if psk is not None else 5683
    minimum, maximum = getattr(args, "min", None), getattr(args, "max", None)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise UsageError(f"--min {minimum} is greater than --max {maximum}")
    origin = args.origin or ("station" if args.command == "simulate" else "probe1")
    timeout = args.timeout
    if timeout is None and args.command == "simulate":
        timeout = SIMULATE_TIMEOUT
    params = TransmissionParameters(
        ack_timeout=args.ack_timeout, max_retransmit=args.max_retransmit
    )
    return ClientConfig(
        host=args.host,
        port=port,
        origin=origin,
        sender=args.sender,
        namespace=args.namespace,
        silent=args.silent,
        format=getattr(args, "format", "json"),
        confirmable=not args.non,
        batch=getattr(args, "batch", 1),
        window=getattr(args, "window", 8),
        timeout=timeout,
        params=params,
        psk=psk,
    )


def _check_devices(devices: int) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and devices > soft - 64:
        raise UsageError(
            f"--devices {devices} needs one socket each but the open-file limit is {soft}"
        )


def _command(args: argparse.Namespace, config: ClientConfig) -> Coroutine[Any, Any, int]:
    out = sys.stdout
    if args.command == "healthcheck":
        return run_healthcheck(config, out)
    if args.command == "discover":
        return run_discover(config, out)
    if args.command == "send":
        try:
            readings = [payloads.parse_value(value) for value in args.value]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return run_send(config, args.type, readings, args.unit, out)
    if args.command == "incremental":
        values = incremental_values(args.initial, args.factor, args.min, args.max)
        return run_incremental(
            config, args.type, values, count=args.count, pace=args.pace, unit=args.unit, out=out
        )
    if args.command == "simulate":
        _check_devices(args.devices)
        return run_simulate(
            config,
            devices=args.devices,
            rate=args.rate,
            duration=args.duration,
            seed=args.seed,
            max_in_flight=args.max_in_flight,
            out=out,
        )
    if args.command == "city":
        return run_city(config, args.name, out)
    raise UsageError(f"unknown command {args.command!r}")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iot-client`` console script; returns the exit code."""
    parser = build_parser()
    words = sys.argv[1:] if argv is None else list(argv)
    wrong = _misplaced_option(words, parser, parser.command_parsers)
    if wrong is not None:
        parser.error(wrong)
    args = parser.parse_args(words)
    try:
        _check_text(args)
        config = _config(args)
        coro = _command(args, config)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    try:
        return _run(coro)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    except CityError as exc:
        sys.stderr.write(f"{PROG}: city: {exc}\n")
        return exc.exit_code
    except socket.gaierror as exc:
        sys.stderr.write(f"{PROG}: cannot resolve host {config.host!r}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except OSError as exc:
        sys.stderr.write(f"{PROG}: {exc.strerror or exc}\n")
        return EXIT_TIMEOUT
    except Exception as exc:  # the CLI contract: one line, never a traceback
        sys.stderr.write(f"{PROG}: unexpected error: {type(exc).__name__}: {exc}\n")
        return 1
