"""`iot-collector`: the command line.

`iot-collector serve` builds the configuration, checks the store once, binds the
socket group and hands over to the supervisor. Every failure before serving is one
line on stderr and a non-zero exit code: 2 for configuration, 3 for an unreachable
store, 4 for a socket that cannot be bound.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from collector import __version__
from collector.config import (
    Config,
    ConfigError,
    add_serve_arguments,
    build_config,
    unknown_variables,
)
from collector.exits import DESCRIPTIONS, EXIT_BIND, EXIT_CONFIG, EXIT_STORE_UNAVAILABLE

#: The flags `indices` shares with `serve` (same names, same environment twins).
RETENTION_FLAGS = (
    "es-url",
    "es-index-prefix",
    "es-username",
    "es-password",
    "es-api-key",
    "es-ca-certs",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2 (`--help` still prints the full usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iot-collector",
        description="A CoAP (RFC 7252) collector for IoT device fleets.",
    )
    parser.add_argument("--version", action="version", version=f"iot-collector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = sub.add_parser(
        "serve",
        help="receive events over CoAP/UDP and store them",
        description=textwrap.fill(
            "Receive events over CoAP/UDP in worker processes and store them. "
            "Every flag has an environment twin: COLLECTOR_ + the flag in upper snake case."
        )
        + "\n\n"
        + textwrap.fill(
            "Pass secrets by file (--es-password-file, --es-api-key-file) or variable "
            "(COLLECTOR_ES_PASSWORD, COLLECTOR_ES_API_KEY), not as flags: flags show in ps."
        ),
        epilog="exit codes:\n"
        + "\n".join(f"  {code}  {meaning}" for code, meaning in DESCRIPTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve)
    indices = sub.add_parser(
        "indices",
        help="list the collector's Elasticsearch indices; delete those older than an age",
        description="List the daily indices <prefix>-YYYY.MM.DD with their document counts "
        "and sizes. With --delete-older-than, delete the indices whose whole day is older "
        "than that age (--dry-run: only say which). Exit 0, or 3 when Elasticsearch cannot "
        "be reached.",
    )
    add_serve_arguments(indices, only=RETENTION_FLAGS)
    indices.add_argument(
        "--delete-older-than",
        metavar="AGE",
        help="e.g. 30d, 12w, 48h: delete indices whose day ended longer ago than this",
    )
    indices.add_argument(
        "--dry-run", action="store_true", help="with --delete-older-than: list, delete nothing"
    )
    return parser


class _StoppedEarly(KeyboardInterrupt):
    """SIGTERM/SIGINT before the supervisor took over the signals.

    A KeyboardInterrupt, so that nothing in between swallows it: asyncio re-raises it
    from a callback, and client libraries' `except Exception` (the Elasticsearch
    check retries on those) let it through.
    """


def _stop_early(signum: int, _frame: object) -> None:
    raise _StoppedEarly(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    # Until the supervisor installs its own handlers (after the store check, which
    # can take seconds against a slow Elasticsearch), a stop request ends start-up
    # with one line and exit 0: nothing was accepted, so nothing is lost.
    previous = {sig: signal.signal(sig, _stop_early) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command not in ("serve", "indices"):
            print(
                "iot-collector: error: a command is required: serve or indices (see --help)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        for warning in unknown_variables(os.environ):
            print(f"iot-collector: warning: {warning}", file=sys.stderr)
        try:
            config = build_config(args, os.environ)
        except ConfigError as exc:
            print(f"iot-collector: error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if args.command == "indices":
            from collector.retention import run_indices

            return run_indices(config, args.delete_older_than, args.dry_run, sys.stdout)
        return serve(config)
    except _StoppedEarly as exc:
        for sig in previous:  # a second signal while this is printed changes nothing
            signal.signal(sig, signal.SIG_IGN)
        print(f"iot-collector: stopped by {exc} before serving", file=sys.stderr)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(config: Config) -> int:
    # Multiprocess metrics: the directory must be set before prometheus_client loads.
    made_dir = None
    if config.metrics_port:
        from collector.metrics import prepare_multiproc_dir

        made_dir = prepare_multiproc_dir()
    try:
        return _serve(config)
    finally:
        if made_dir is not None:
            import shutil

            shutil.rmtree(made_dir, ignore_errors=True)


def _serve(config: Config) -> int:
    from collector.logs import setup_logging
    from collector.sinks import StoreUnavailable
    from collector.supervisor import BindError, Supervisor, bind_group, preflight_store

    setup_logging(config.log_level)
    # The port first: a second instance on a served port must fail at once, not after
    # waiting for the store (and it keeps the port while it waits).
    socks: list[socket.socket] = []
    dtls_socks: list[socket.socket] = []
    try:
        if config.plain_enabled:
            socks = bind_group(
                config.host, config.port, config.workers, config.rcvbuf, share=config.share_port
            )
        if config.dtls_enabled:  # coaps (issue 15): its own SO_REUSEPORT group
            dtls_socks = bind_group(
                config.host,
                config.coaps_port,
                config.workers,
                config.rcvbuf,
                share=config.share_port,
            )
    except BindError as exc:
        for sock in socks:
            sock.close()
        print(f"iot-collector: {exc}", file=sys.stderr)
        return EXIT_BIND
    try:
        try:
            preflight_store(config)
        except StoreUnavailable as exc:
            print(f"iot-collector: store unavailable: {exc}", file=sys.stderr)
            return EXIT_STORE_UNAVAILABLE
        supervisor = Supervisor(config, socks, dtls_socks=dtls_socks)
        supervisor.install_signal_handlers()
        return supervisor.run()
    except BindError as exc:
        print(f"iot-collector: {exc}", file=sys.stderr)
        return EXIT_BIND
    finally:
        for sock in (*socks, *dtls_socks):
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
