#!/usr/bin/env python3
"""Open-loop CoAP load generator for iot-collector, and the 1-vs-3-replica experiment.

Requests go out at a constant rate whatever the server does, and each latency is
measured from the request's *scheduled* send time to its response, so a server
that falls behind cannot hide its queue (no coordinated omission). CON requests are
retransmitted as RFC 7252 says (ACK_TIMEOUT x random factor, doubling, at most
MAX_RETRANSMIT times) and count from their first schedule. Devices are separate
UDP sockets (own source port and Message ID space); datagrams are encoded once
and only MID, token and a per-event id are patched per request.

Modes (pick one; the default is --target):
  --target HOST:PORT          load a server that is already running
  --server NAME               start NAME locally (collector, echo, echo-c, aiocoap,
                              node-coap, californium; scandium over coaps), load it,
                              stop it
  --replicas 1,3              start the collector as N independent 1-worker replicas
                              behind one address per configuration, same load on each,
                              percentile table side by side (the thesis' Fig 34/35)
  --compare                   every available server with the same generator, two
                              numbers each: max (closed loop, --window requests in
                              flight per socket) and capacity (open loop: the highest
                              rate with p99 <= --p99-bound and no losses, found by a
                              search with no fixed ceiling), medians of --repeats
                              interleaved repetitions with their spread; the echo
                              peer's max is the generator's ceiling in the same run
  --dtls-compare              coaps against plain CoAP in one run: one collector (1
                              worker by default, --workers) serving both, loaded over
                              plain CoAP and over DTLS by the same generator, and
                              Californium's DTLS server (Scandium, bench/peers/scandium)
                              over DTLS; per configuration the closed-loop requests/s,
                              p50/p99 and server CPU per request, DTLS/plain ratios, and
                              PSK handshakes/s (achieved, and per server core from its
                              CPU per handshake); medians of --repeats interleaved
                              repetitions with their spread. A PSK is made up for the run
                              unless --psk-identity/--psk-key give one; every row uses the
                              Python engine (DTLS runs need it), so plain CoAP and DTLS
                              share one generator
  --startup-runs N            (any mode) median time from exec of `iot-collector serve`
                              to its first 2.05 on GET /health, over N starts

coaps (DTLS 1.2 PSK, RFC 7252 §9.1): --psk-identity ID with --psk-key KEY (text) or
--psk-key-hex HEX makes every simulated device open its own DTLS session, before the
run's clock starts (handshakes are outside the measured window), and send its requests
in records of that session; events then name no sender (the identity does). With
--target, HOST:PORT is the coaps port; --server collector starts the collector with a
PSK file for that identity and loads its coaps port; --server scandium starts
Californium's DTLS server with that key.

The generator batches its system calls (sendmmsg per device burst, recvmmsg per
readable socket) and reports its own CPU per request in every run; a run where it
fell behind or ran out of CPU is marked as measuring the generator. --procs defaults
to the cores not given to the server (--pin gives the server the first ones). Its
loops run in C (--engine c: bench/loadgen/engine.c, compiled with cc on first use
into ~/.cache/iot-collector-bench; about 3-4 us of CPU per request against the C echo,
nearly all of it the kernel's) or in Python (--engine python, 9-10 us); the default,
auto, takes C where it builds and the run is plain CoAP (DTLS runs stay in Python).
The peer echo-c (bench/peers/echo.c) is the cheapest server there is; --compare takes
the generator's ceiling from it when it runs.

Output: a one-line progress display every second on stderr; Markdown tables on
stdout; --json FILE with every number plus argv, versions and machine; --plot FILE
with percentile curves per configuration.

Examples:
  python bench/loadtest.py --server collector --rate 5000 --duration 10
  python bench/loadtest.py --replicas 1,3 --rate 8000 --duration 20 --cpu-limit 0.3 \\
      --plot bench/results/replicas.png --json bench/results/replicas.json
  python bench/loadtest.py --server echo --window 4 --duration 5   # closed loop: max
  python bench/loadtest.py --compare --duration 3 --json bench/results/compare.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import secrets
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import cengine, dtls, report, servers
from loadgen.generator import GeneratorError, LoadSpec, min_devices, run_load
from loadgen.search import Verdict, capacity_search
from loadgen.wire import FORMATS


class UsageError(Exception):
    """A bad flag combination; printed as one line, exit code 2."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers: {text}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from exc
    if not values or any(v <= 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"need positive numbers: {text}")
    return values


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text}") from exc
        if v <= 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return v

    return parse


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text}")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port in {text}") from exc
    if not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"bad port in {text}")
    return host, p


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag answered in one line instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        print(f"loadtest: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = _Parser(
        prog="loadtest.py",
        description=doc.split("\n\n", 1)[0],
        epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("what to load")
    m.add_argument("--target", type=_target, metavar="HOST:PORT", help="a running server")
    m.add_argument(
        "--server",
        choices=servers.SERVERS,
        help="start this server locally on a free port (127.0.0.1) and load it",
    )
    m.add_argument(
        "--replicas",
        type=_int_list,
        metavar="N,M",
        help="collector replica counts to compare, e.g. 1,3 (each replica: 1 worker)",
    )
    m.add_argument(
        "--replicas-mode",
        choices=("reuseport", "netns"),
        default="reuseport",
        help="reuseport: N processes share one port via SO_REUSEPORT (default); netns: each"
        " replica in its own network namespace and IP, a virtual IP DNATs new flows"
        " round-robin with nft numgen (kube-proxy-like; needs root, ip, nft)",
    )
    m.add_argument("--compare", action="store_true", help="run every available server; see above")
    m.add_argument(
        "--dtls-compare",
        action="store_true",
        help="collector over plain CoAP and over DTLS, and Scandium over DTLS; see above",
    )
    m.add_argument(
        "--cpu-limit",
        type=_positive(float),
        metavar="CPUS",
        help="CPU quota via a cgroup, e.g. 0.3 (needs root): per collector worker (N "
        "workers get N x CPUS), so per replica, and per peer",
    )
    m.add_argument(
        "--workers",
        type=_int_list,
        default=[1],
        metavar="N[,M]",
        help="collector --workers for --server collector (first value) and --compare (each)"
        " (default 1)",
    )
    m.add_argument(
        "--sink",
        choices=("null", "sqlite", "elasticsearch"),
        default="null",
        help="collector sink for started collectors (default null: measures the collector alone)",
    )
    m.add_argument(
        "--es-url", default=os.environ.get("ES_URL", ""), help="for --sink elasticsearch"
    )

    g = p.add_argument_group("the load")
    g.add_argument(
        "--rate", type=_positive(float), default=1000.0, help="requests/s (default 1000)"
    )
    g.add_argument(
        "--rates",
        type=_float_list,
        metavar="A,B,C",
        help="sweep these offered rates (one run each)",
    )
    g.add_argument(
        "--duration", type=_positive(float), default=10.0, help="measured seconds per run (10)"
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before measuring, not counted (default 1)",
    )
    g.add_argument(
        "--devices",
        type=_positive(int),
        default=256,
        help="simulated devices = UDP sockets/source ports, each its own MID space (256);"
        " raised automatically so no device reuses a Message ID within a run",
    )
    g.add_argument(
        "--procs",
        type=_positive(int),
        default=None,
        help="generator processes sharing the schedule and the devices (default: the cores"
        " not given to the server, at least 1)",
    )
    g.add_argument(
        "--pin",
        action="store_true",
        help="pin started servers to the first cores (one per collector worker, one for a"
        " peer) and each generator process to one of the others (needs taskset)",
    )
    g.add_argument(
        "--window",
        type=int,
        default=0,
        help="closed loop: keep this many requests in flight per device socket and send a"
        " new one per answer (the max measurement); 0: open loop at --rate (default)",
    )
    g.add_argument(
        "--burst",
        type=_positive(int),
        default=16,
        help="open loop: consecutive requests per device, sent with one sendmmsg (16)",
    )
    g.add_argument(
        "--engine",
        choices=cengine.ENGINES,
        default="auto",
        help="the generator's loops: c (loadgen/engine.c, compiled on first use with cc),"
        " python, or auto (default: c where it builds and the run is plain CoAP)",
    )
    g.add_argument("--format", choices=FORMATS, default="json", help="request body (json)")
    g.add_argument(
        "--events-per-request", type=_positive(int), default=1, help="events per body (1)"
    )
    g.add_argument("--non", action="store_true", help="NON requests (default CON)")
    g.add_argument("--path", default="/events", help="Uri-Path of the requests (/events)")
    g.add_argument(
        "--timeout",
        type=_positive(float),
        default=5.0,
        help="give up on a request this many seconds after its scheduled time; CONs are"
        " retransmitted until then (default 5)",
    )

    g.add_argument(
        "--tick",
        type=float,
        default=0.0002,
        help="shortest wait of the generator loop in seconds (default 0.0002): coalesces"
        " wake-ups, adding at most that much send lag (reported) in exchange for less"
        " generator CPU per request; 0 wakes exactly at each send time",
    )

    c = p.add_argument_group("--compare")
    c.add_argument(
        "--p99-bound",
        type=_positive(float),
        default=25.0,
        help="capacity = highest rate whose p99 (ms) stays within this, with no errors and the"
        " generator on schedule (default 25: while a store write is in flight the collector"
        " holds new answers up to its --batch-ms, 5 ms by default, and a shared 2-core box"
        " adds jitter)",
    )
    c.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-run a failing rate this many times; it fails only if all tries do"
        " (default 1: a shared machine stalls now and then)",
    )
    c.add_argument(
        "--repeats",
        type=_positive(int),
        default=3,
        help="interleaved repetitions per server; figures are their medians (default 3)",
    )
    c.add_argument(
        "--max-devices",
        type=_positive(int),
        default=64,
        help="device sockets of the closed-loop max runs (default 64)",
    )
    c.add_argument(
        "--max-window",
        type=_positive(int),
        default=4,
        help="requests in flight per socket in the max runs (default 4)",
    )
    c.add_argument(
        "--server-warmup",
        type=float,
        default=3.0,
        help="seconds of unrecorded closed-loop load before each server's max run (JIT,"
        " caches; default 3)",
    )
    c.add_argument(
        "--start-share",
        type=_positive(float),
        default=0.6,
        help="the capacity search starts at this share of the server's max (default 0.6)",
    )
    c.add_argument(
        "--grow",
        type=_positive(float),
        default=1.2,
        help="the capacity search climbs by this factor while runs pass (default 1.2)",
    )
    c.add_argument(
        "--refine", type=int, default=2, help="bisection steps after the climb (default 2)"
    )
    c.add_argument(
        "--servers",
        default=",".join(servers.PLAIN_SERVERS),
        help="servers for --compare (default all: %(default)s)",
    )
    c.add_argument(
        "--startup-runs",
        type=int,
        default=None,
        help="measure exec-to-first-2.05 of the collector over N starts (median);"
        " --compare does 3 by default",
    )

    d = p.add_argument_group("coaps (DTLS 1.2 PSK)")
    d.add_argument("--psk-identity", metavar="ID", help="PSK identity: load over DTLS")
    d.add_argument("--psk-key", metavar="KEY", help="the identity's key, as text")
    d.add_argument("--psk-key-hex", metavar="HEX", help="the identity's key, in hexadecimal")
    for flag, kind, default, what in (
        ("--handshake-duration", float, 2.0, "seconds of each handshake-rate run"),
        ("--handshake-window", int, 16, "handshakes in progress at once per generator process"),
    ):
        d.add_argument(
            flag, type=_positive(kind), default=default, help=f"--dtls-compare: {what} ({default})"
        )

    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write every number, argv, versions, machine")
    o.add_argument("--plot", metavar="FILE", help="percentile curves per configuration (PNG)")
    o.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def check_args(args: argparse.Namespace) -> None:
    modes = [
        bool(args.target),
        bool(args.server),
        bool(args.replicas),
        bool(args.compare),
        bool(args.dtls_compare),
    ]
    if sum(modes) > 1:
        raise UsageError("choose one of --target, --server, --replicas, --compare, --dtls-compare")
    if sum(modes) == 0 and not args.startup_runs:
        raise UsageError(
            "nothing to do: give --target, --server, --replicas, --compare or --dtls-compare"
        )
    args.psk = psk_of(args)
    if args.psk is not None and (args.replicas or args.compare):
        raise UsageError("--psk-identity goes with --target, --server or --dtls-compare")
    if args.server in servers.DTLS_PEERS and args.psk is None:
        raise UsageError(f"--server {args.server} speaks coaps only: give --psk-identity and a key")
    if args.server and args.psk is not None and args.server not in ("collector", "scandium"):
        raise UsageError(f"--server {args.server} does not speak coaps (collector, scandium do)")
    if args.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    if args.replicas_mode == "netns" and not args.replicas:
        raise UsageError("--replicas-mode netns goes with --replicas")
    if args.sink == "elasticsearch" and not args.es_url:
        raise UsageError("--sink elasticsearch needs --es-url (or ES_URL)")
    if args.target and args.cpu_limit:
        raise UsageError("--cpu-limit applies to servers this tool starts, not --target")
    if args.startup_runs is not None and args.startup_runs < 0:
        raise UsageError("--startup-runs must be >= 0")
    if args.window < 0:
        raise UsageError("--window must be >= 0")
    if args.grow <= 1.0:
        raise UsageError("--grow must be above 1")
    if args.engine == "c" and (args.psk is not None or args.dtls_compare):
        raise UsageError("--engine c speaks plain CoAP only: leave it out for DTLS")
    if args.pin and shutil.which("taskset") is None:
        raise UsageError("--pin needs taskset (util-linux)")
    if args.compare:
        names = [s.strip() for s in args.servers.split(",") if s.strip()]
        bad = [s for s in names if s not in servers.PLAIN_SERVERS]
        if bad or not names:
            raise UsageError(f"--servers: unknown {', '.join(bad) or '(empty)'}")


def psk_of(args: argparse.Namespace) -> dtls.Psk | None:
    """The PSK of --psk-identity and --psk-key/--psk-key-hex, None without an identity.

    Raises UsageError for a key without an identity, both keys or neither, bad hex, or
    an empty identity or key.
    """
    identity, text, hexed = args.psk_identity, args.psk_key, args.psk_key_hex
    if identity is None:
        if text is not None or hexed is not None:
            raise UsageError("--psk-key/--psk-key-hex need --psk-identity")
        return None
    if (text is None) == (hexed is None):
        raise UsageError("--psk-identity needs one of --psk-key, --psk-key-hex")
    if text is not None:
        key = text.encode()
    else:
        try:
            key = bytes.fromhex(hexed)
        except ValueError:
            raise UsageError("--psk-key-hex: not hexadecimal") from None
    if not identity or not key:
        raise UsageError("--psk-identity and its key must not be empty")
    return dtls.Psk(identity, key)


def server_cores(name: str, workers: int, replicas: int = 1, cpu_limit: float | None = None) -> int:
    """The cores a started server is taken to use: one per collector worker (or its CPU
    quota, --cpu-limit per worker, rounded up), one for a peer (the JVM's threads included: it gets one core when pinned)."""
    count = workers if name == "collector" else 1
    per = math.ceil(servers.collector_quota(cpu_limit, count) or 0) if cpu_limit else count
    return max(1, per * replicas)


def split_cpus(server: int) -> tuple[list[int], list[int]]:
    """(CPUs for the server, CPUs for the generator) out of this process's affinity;
    the generator gets at least one, shared with the server if need be."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= 1:
        return cpus, cpus
    n = min(server, len(cpus) - 1)
    return cpus[:n], cpus[n:]


class _CpuMark:
    """A fleet's CPU seconds, read when the generator's processes are ready (their
    sockets and DTLS sessions open), so that what follows is the run alone."""

    def __init__(self, fleet: servers.Fleet | None) -> None:
        self.fleet = fleet
        self.at: float | None = None

    def mark(self) -> None:
        if self.fleet is not None:
            self.at = self.fleet.cpu_seconds()


class Bench:
    """Runs of one invocation, collected into the JSON document."""

    def __init__(self, args: argparse.Namespace, doc: dict[str, Any]) -> None:
        self.args = args
        self.doc = doc
        self.server_cpus: list[int] = []
        self.gen_cpus: list[int] = []
        self.procs = 1
        self.runq_share = 0.0  # the most a generator process waited for a CPU, any run

    def place(self, cores: int) -> None:
        """Decide --procs (and, with --pin, the CPUs) for a server using ``cores``."""
        srv, gen = split_cpus(cores)
        self.server_cpus = srv if self.args.pin else []
        self.gen_cpus = gen if self.args.pin else []
        self.procs = self.args.procs or len(gen)

    def spec(
        self,
        host: str,
        port: int,
        rate: float,
        duration: float | None = None,
        *,
        window: int | None = None,
        devices: int | None = None,
        warmup: float | None = None,
        psk: dtls.Psk | None = None,
        plain: bool = False,
    ) -> LoadSpec:
        """The load of one run: over DTLS with ``psk``, else --psk-identity's if given,
        unless ``plain``."""
        a = self.args
        psk = None if plain else (psk or a.psk)
        spec = LoadSpec(
            host=host,
            port=port,
            rate=rate,
            duration=duration or a.duration,
            warmup=a.warmup if warmup is None else warmup,
            devices=devices or a.devices,
            fmt=a.format,
            events=a.events_per_request,
            non=a.non,
            timeout=a.timeout,
            procs=self.procs,
            path=a.path,
            tick=max(0.0, a.tick),
            window=a.window if window is None else window,
            burst=a.burst,
            cpus=tuple(self.gen_cpus),
            engine=a.engine,
            psk_identity=psk.identity if psk else "",
            psk_key=psk.key if psk else b"",
        )
        need = max(min_devices(spec), spec.procs)
        if spec.devices < need:
            self.warn(f"--devices raised from {spec.devices} to {need} (Message ID space)")
            spec = LoadSpec(**{**spec.__dict__, "devices": need})
        return spec

    def warn(self, text: str) -> None:
        if text not in self.doc["warnings"]:
            self.doc["warnings"].append(text)
            print(f"warning: {text}", file=sys.stderr)

    def start(
        self,
        name: str,
        workers: int = 1,
        replicas: int = 1,
        mode: str = "reuseport",
        psk: dtls.Psk | None = None,
    ) -> tuple[servers.Fleet, str, int]:
        return servers.start_server(
            name,
            collector=self.collector_opts(workers),
            replicas=replicas,
            mode=mode,
            cpu_limit=self.args.cpu_limit,
            cpus=self.server_cpus,
            psk=psk,
        )

    def run(
        self,
        host: str,
        port: int,
        rate: float,
        label: str,
        server: str,
        replicas: int = 1,
        fleet: servers.Fleet | None = None,
        spec: LoadSpec | None = None,
    ) -> dict[str, Any]:
        spec = spec or self.spec(host, port, rate)
        cpu0 = _CpuMark(fleet)
        shown = f"{label} @{rate:.0f}" if not spec.window else f"{label} max"
        raw = run_load(spec, label=shown, show_progress=not self.args.quiet, on_ready=cpu0.mark)
        summary = report.summarize(raw, spec, label, server, replicas)
        if fleet is not None and cpu0.at is not None:
            # the server's own CPU per request (warm-up included, DTLS handshakes not):
            # comparable across servers even on a noisy box, where capacity figures
            # move with the neighbours
            cpu = fleet.cpu_seconds() - cpu0.at
            sent_total = sum(int(r["sent_total"]) for r in raw)
            summary["server_cpu_s"] = round(cpu, 3)
            summary["server_cpu_us_per_request"] = (
                round(cpu / sent_total * 1e6, 1) if sent_total else None
            )
        what = f"{label} at {rate:.0f}/s" if not spec.window else f"{label} (closed loop)"
        if summary["generator_saturated"]:
            self.warn(
                f"{what}: the generator was out of CPU (busiest process on a CPU"
                f" {summary['generator_cpu_share']:.0%} of the run): figures measure the"
                " generator, not the server; add --procs or --pin"
            )
        elif not summary["generator_kept_up"]:
            self.warn(
                f"{what}: the generator fell behind its schedule (sent"
                f" {summary['sent_rate']:.0f}/s, send lag p99"
                f" {summary['send_lag_ms']['p99'] or 0:.1f} ms); figures include generator"
                " delay"
            )
        self.runq_share = max(self.runq_share, summary["generator_runq_share"])
        self.doc["runs"].append(summary)
        return summary

    def rates(self) -> list[float]:
        return list(self.args.rates) if self.args.rates else [self.args.rate]

    def collector_opts(self, workers: int) -> servers.CollectorOptions:
        return servers.CollectorOptions(
            workers=workers, sink=self.args.sink, es_url=self.args.es_url
        )

    def plain_runs(self, host: str, port: int, label: str, name: str, fleet: Any) -> list[Any]:
        if self.args.window:
            return [self.run(host, port, 0.0, label, name, fleet=fleet)]
        return [self.run(host, port, r, label, name, fleet=fleet) for r in self.rates()]

    # --- modes -------------------------------------------------------------------------

    def target(self) -> list[dict[str, Any]]:
        host, port = self.args.target
        self.place(1)
        return self.plain_runs(host, port, f"{host}:{port}", "target", None)

    def server(self) -> list[dict[str, Any]]:
        a = self.args
        name = a.server
        workers = a.workers[0]
        self.place(server_cores(name, workers, 1, a.cpu_limit))
        fleet, host, port = self.start(name, workers, psk=a.psk)
        label = f"{name} w={workers}" if name == "collector" else name
        if a.psk is not None:
            label += " DTLS"
        try:
            return self.plain_runs(host, port, label, name, fleet)
        finally:
            servers.stop_fleet(fleet)

    def replicas(self) -> list[dict[str, Any]]:
        a = self.args
        out = []
        for n in a.replicas:
            self.place(server_cores("collector", 1, n, a.cpu_limit))
            fleet, host, port = self.start("collector", 1, n, a.replicas_mode)
            label = f"{n} replica{'s' if n > 1 else ''}"
            try:
                for r in self.rates():
                    before = fleet.netns.udp_in_datagrams() if fleet.netns else None
                    run = self.run(host, port, r, label, "collector", n, fleet=fleet)
                    if fleet.netns and before is not None:
                        after = fleet.netns.udp_in_datagrams()
                        run["replica_datagrams"] = [
                            a - b for a, b in zip(after, before, strict=True)
                        ]
                    out.append(run)
            finally:
                servers.stop_fleet(fleet)
        return out

    def startup(self, runs: int) -> dict[str, Any]:
        res = servers.measure_startup("collector", runs, collector=self.collector_opts(1))
        self.doc["startup"].append(res)
        return res

    def max_spec(self, host: str, port: int, psk: dtls.Psk | None, plain: bool) -> LoadSpec:
        """The closed-loop max's load: --max-window in flight on each of --max-devices
        sockets (over DTLS: see :meth:`spec`)."""
        a = self.args
        warmup = max(a.warmup, a.server_warmup)
        return self.spec(
            host, port, 0.0, window=a.max_window, devices=a.max_devices, warmup=warmup,
            psk=psk, plain=plain,
        )  # fmt: skip

    def max_run(
        self, host: str, port: int, label: str, name: str, fleet: servers.Fleet
    ) -> dict[str, Any]:
        """The closed-loop max: --max-window in flight on each of --max-devices sockets."""
        spec = self.max_spec(host, port, None, False)
        return self.run(host, port, 0.0, label, name, fleet=fleet, spec=spec)

    def handshake_run(
        self, host: str, port: int, label: str, name: str, fleet: servers.Fleet, psk: dtls.Psk
    ) -> dict[str, Any]:
        """PSK handshakes as fast as the server completes them (--handshake-window at a
        time per generator process, for --handshake-duration s), with the server's CPU
        per handshake."""
        a = self.args
        spec = self.spec(
            host,
            port,
            0.0,
            a.handshake_duration,
            window=a.handshake_window,
            devices=self.procs,
            warmup=0.0,
            psk=psk,
        )
        spec = dataclasses.replace(spec, handshakes=True)
        mark = _CpuMark(fleet)
        raw = run_load(
            spec, label=f"{label} handshakes", show_progress=not a.quiet, on_ready=mark.mark
        )
        summary = report.summarize_handshakes(raw, spec, label, name)
        if mark.at is not None:
            cpu = fleet.cpu_seconds() - mark.at
            summary["server_cpu_s"] = round(cpu, 3)
            done = summary["handshakes"]
            summary["server_cpu_us_per_handshake"] = round(cpu / done * 1e6, 1) if done else None
        if summary["generator_saturated"]:
            self.warn(
                f"{label} handshakes: the generator was out of CPU: the achieved rate is"
                " the generator's; the server's CPU per handshake still holds"
            )
        self.doc["handshake_runs"].append(summary)
        return summary

    def dtls_compare(self) -> dict[str, Any]:
        """Plain CoAP and DTLS on one collector, and Scandium over DTLS: see the module
        docstring. Both servers run for the whole comparison; the repetitions
        interleave every configuration."""
        a = self.args
        psk = a.psk or dtls.Psk("bench", secrets.token_hex(16).encode())
        workers = a.workers[0]
        wlabel = f"collector w={workers}"
        rows: list[dict[str, Any]] = [
            {"key": "plain", "name": f"{wlabel}, plain CoAP", "server": "collector", "reps": []},
            {"key": "dtls", "name": f"{wlabel}, DTLS", "server": "collector", "reps": []},
            {"key": "scandium", "name": "Scandium (Californium 3.12 DTLS)", "server": "scandium",
             "reps": []},
        ]  # fmt: skip
        # the handshake rate of each DTLS configuration
        shakes = [{**row, "reps": [], "handshakes": True} for row in rows[1:]]
        result: dict[str, Any] = {
            "workers": workers,
            "identity": psk.identity,
            "repeats": a.repeats,
            "rows": rows,
            "handshakes": shakes,
        }
        fleets: dict[str, tuple[servers.Fleet, str, dict[str, int]]] = {}
        try:
            self.place(server_cores("collector", workers, 1, a.cpu_limit))
            fleet, host, _port = self.start("collector", workers, psk=psk)
            fleets["collector"] = (fleet, host, fleet.ports)
            why = servers.peer_available("scandium")
            if why is None:
                self.place(server_cores("scandium", 1, 1, a.cpu_limit))
                try:
                    fleet, host, _port = self.start("scandium", psk=psk)
                    fleets["scandium"] = (fleet, host, fleet.ports)
                except servers.ServerError as exc:
                    why = str(exc)
            if why is not None:
                for entry in (*rows, *shakes):
                    if entry["server"] == "scandium":
                        entry["skipped"] = f"skipped: {why}"
                self.warn(f"--dtls-compare: Scandium skipped: {why}")
            # every configuration once per repetition, the handshake runs last: a noisy
            # spell of the shared machine falls on all of them rather than on one
            steps = [e for e in (*rows, *shakes) if not e.get("skipped")]
            for _rep in range(a.repeats):
                for entry in steps:
                    name = entry["server"]
                    fleet, host, ports = fleets[name]
                    self.place(server_cores(name, workers, 1, a.cpu_limit))
                    plain = entry["key"] == "plain"
                    port = ports["coap" if plain else "coaps"]
                    if entry.get("handshakes"):
                        run = self.handshake_run(host, port, entry["name"], name, fleet, psk)
                    else:
                        # the same generator for plain CoAP as for DTLS: the Python engine
                        spec = dataclasses.replace(
                            self.max_spec(host, port, psk, plain), engine="python"
                        )
                        run = self.run(host, port, 0.0, entry["name"], name, fleet=fleet, spec=spec)
                    entry["reps"].append(run)
        finally:
            for fleet, _host, _ports in fleets.values():
                servers.stop_fleet(fleet)
        report.dtls_summary(result)
        self.doc["dtls_compare"] = result
        for entry in rows:
            if entry.get("generator_limited"):
                self.warn(
                    f"{entry['name']}: the generator was out of CPU in most repetitions:"
                    " its requests/s are the generator's; its server CPU per request holds"
                )
        return result

    def capacity(
        self,
        host: str,
        port: int,
        label: str,
        name: str,
        fleet: servers.Fleet,
        start: float,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """The open-loop capacity search from ``start`` req/s; returns it and its runs."""
        a = self.args
        runs: list[dict[str, Any]] = []

        def probe(rate: float) -> Verdict:
            run = self.run(host, port, rate, label, name, fleet=fleet)
            runs.append(run)
            ok = report.passes(run, a.p99_bound)
            return Verdict(rate, ok, not ok and report.generator_limited(run), why(run))

        def why(run: dict[str, Any]) -> str:
            if report.passes(run, a.p99_bound):
                return ""
            if report.generator_limited(run):
                if run["generator_saturated"]:
                    return "generator out of CPU"
                if run["machine_busy"]:
                    return "machine busy: the generator waited for a CPU"
                return "generator behind its schedule"
            if run["timeouts"] or run["answered"] < run["sent"]:
                return "losses"
            if run["ok"] < run["answered"]:
                return "error answers"
            return "p99 over the bound"

        found = capacity_search(
            probe, start, grow=a.grow, refine=a.refine, retries=max(0, a.retries)
        )
        return found, runs

    def compare(self) -> dict[str, Any]:
        a = self.args
        names = [s.strip() for s in a.servers.split(",") if s.strip()]
        configs: list[tuple[str, str, int]] = []
        for name in names:
            if name == "collector":
                configs += [(f"collector w={w}", "collector", w) for w in a.workers]
            else:
                configs.append((name, name, 1))
        entries: list[dict[str, Any]] = [
            {"name": label, "server": name, "workers": w, "reps": []} for label, name, w in configs
        ]
        result: dict[str, Any] = {
            "p99_bound_ms": a.p99_bound,
            "repeats": a.repeats,
            "servers": entries,
            "echo_max": None,
        }
        for entry in entries:
            why = (
                None if entry["server"] == "collector" else servers.peer_available(entry["server"])
            )
            if why:
                entry["skipped"] = f"skipped: {why}"
                self.warn(f"--compare: {entry['name']} skipped: {why}")
        # repetitions interleaved: every server once, then every server again, so a
        # noisy minute on a shared machine falls on all of them rather than on one
        for rep in range(a.repeats):
            for entry in entries:
                if entry.get("skipped"):
                    continue
                label, name, workers = entry["name"], entry["server"], entry["workers"]
                self.place(server_cores(name, workers, 1, a.cpu_limit))
                try:
                    if rep == 0:
                        entry["startup_s"] = servers.measure_startup(
                            name, 1, collector=self.collector_opts(workers)
                        )["median_s"]
                    fleet, host, port = self.start(name, workers)
                except servers.ServerError as exc:
                    entry["skipped"] = f"skipped: {exc}"
                    self.warn(f"--compare: {label} skipped: {exc}")
                    continue
                try:
                    mx = self.max_run(host, port, label, name, fleet)
                    start = max(100.0, a.start_share * mx["ok_rate"])
                    found, runs = self.capacity(host, port, label, name, fleet, start)
                finally:
                    servers.stop_fleet(fleet)
                entry["reps"].append(
                    {
                        "rep": rep,
                        "max": mx,
                        "capacity": found.capacity,
                        "first_fail": found.first_fail,
                        "capacity_generator_limited": found.generator_limited,
                        "capacity_bound_by": found.note,
                        "trail": [[v.rate, v.passed, v.generator_limited] for v in found.trail],
                        "runs": runs,
                    }
                )
        for entry in entries:
            reps = entry["reps"]
            if not reps:
                entry.setdefault("skipped", "skipped: no repetition ran")
                continue
            entry.pop("skipped", None)
            maxes = [r["max"] for r in reps]
            entry["max"] = report.spread([m["ok_rate"] for m in maxes])
            entry["capacity"] = report.spread([r["capacity"] for r in reps])
            half = len(reps) / 2
            entry["max_generator_limited"] = sum(report.generator_limited(m) for m in maxes) > half
            entry["capacity_generator_limited"] = (
                sum(r["capacity_generator_limited"] for r in reps) > half
            )
            notes = [r["capacity_bound_by"] for r in reps if r["capacity_bound_by"]]
            entry["capacity_bound_by"] = max(set(notes), key=notes.count) if notes else ""
            entry["server_cpu_us"] = _median([m.get("server_cpu_us_per_request") for m in maxes])
            entry["generator_cpu_us"] = _median(
                [m.get("generator_cpu_us_per_request") for m in maxes]
            )
            st = [m["stalls"] for m in maxes]
            entry["stalls"] = {
                "count": sum(x["count"] for x in st),
                "stalled_s": round(sum(x["stalled_s"] for x in st), 2),
                "longest_s": max(x["longest_s"] for x in st),
                "between_rate": _median([x["between_rate"] for x in st]) or 0.0,
                "overall_rate": _median([x["overall_rate"] for x in st]) or 0.0,
            }
        ran = {e["server"]: e for e in entries if e.get("max")}
        echo = ran.get("echo")
        if echo:
            result["echo_max"] = echo["max"]["median"]
        self.doc["compare"] = result
        # the generator's ceiling shows best against the cheapest server, the C echo
        self.doc["generator_ceiling"] = self.ceiling(ran.get("echo-c") or echo)
        for entry in entries:
            if entry.get("max_generator_limited"):
                self.warn(
                    f"{entry['name']}: its max is the generator's limit, not the server's"
                    " (the generator was out of CPU): add --procs, --pin or cores"
                )
            if entry.get("capacity_generator_limited"):
                self.warn(
                    f"{entry['name']}: its capacity is the generator's limit (it fell"
                    " behind before the server failed the rule): the server holds at least"
                    " that"
                )
        return result

    def ceiling(self, echo: dict[str, Any] | None) -> dict[str, Any] | None:
        """The generator's own ceiling, measured against the echo peer in this run."""
        if not echo:
            return None
        maxes = [r["max"] for r in echo["reps"]]
        us = _median([m.get("generator_cpu_us_per_request") for m in maxes])
        procs = maxes[0]["procs"] if maxes else 1
        return {
            "echo": echo["name"],
            "engine": maxes[0].get("generator_engine") if maxes else None,
            "echo_max": echo["max"]["median"],
            "echo_max_generator_limited": echo["max_generator_limited"],
            "generator_cpu_us_per_request": us,
            "procs": procs,
            "cpu_bound_rate": round(procs * 1e6 / us) if us else None,
            "note": "cpu_bound_rate: the rate at which the generator's processes would be"
            " busy all the time, from its CPU per request against the echo peer",
        }


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ceiling_text(ceiling: dict[str, Any] | None) -> str:
    """One sentence on the generator's own ceiling in this run."""
    if not ceiling:
        return "Generator ceiling: not measured (the echo peer did not run)."
    us = ceiling["generator_cpu_us_per_request"]
    peer = ceiling.get("echo", "echo")
    text = (
        f"Generator: {ceiling['procs']} process(es), {ceiling.get('engine')} engine,"
        f" {us:.1f} us CPU per request against the {peer} peer, so it is busy all the"
        f" time at about {ceiling['cpu_bound_rate'] or 0:.0f} req/s."
        if us
        else "Generator: CPU per request not measured."
    )
    echo = ceiling["echo_max"] or 0
    if ceiling["echo_max_generator_limited"]:
        text += (
            f" The {peer} peer's max ({echo:.0f} req/s) was the generator's limit, not the"
            " echo's: any server near it is measured against the generator."
        )
    else:
        text += f" The {peer} peer's max ({echo:.0f} req/s) was the echo's own limit."
    return text


_KEY_FLAGS = ("--psk-key", "--psk-key-hex")


def redacted(argv: list[str]) -> list[str]:
    """``argv`` with the values of the key flags replaced: keys are never written down."""
    out: list[str] = []
    hide = False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if hide:
            out.append("<redacted>")
        elif flag in _KEY_FLAGS and "=" in arg:
            out.append(f"{flag}=<redacted>")
        else:
            out.append(arg)
        hide = not hide and arg in _KEY_FLAGS
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    servers.install_cleanup()
    doc = report.document(
        [str(Path(__file__)), *redacted(argv)],
        {
            k: v
            for k, v in vars(args).items()
            if k not in ("target", "psk", "psk_key", "psk_key_hex")
        }
        | {"target": f"{args.target[0]}:{args.target[1]}" if args.target else None},
        dt.datetime.now(dt.UTC),
    )
    bench = Bench(args, doc)
    out: list[str] = []
    try:
        if args.compare:
            cmp = bench.compare()
            out.append(
                f"## max and capacity ({args.repeats} interleaved repetitions: median [min-max])\n"
            )
            out.append(report.compare_table(cmp))
            out.append("\n" + ceiling_text(doc["generator_ceiling"]))
            out.append("\n## All runs\n")
            out.append(report.runs_table(doc["runs"]))
        elif args.dtls_compare:
            res = bench.dtls_compare()
            out.append(
                f"## coaps against plain CoAP ({args.repeats} interleaved repetitions:"
                " median [min-max])\n"
            )
            out.append(report.dtls_table(res))
            out.append("\n" + report.dtls_text(res))
            out.append("\n## All runs\n")
            out.append(report.runs_table(doc["runs"]))
            out.append("\n" + report.handshakes_table(doc["handshake_runs"]))
        elif args.replicas:
            runs = bench.replicas()
            for rate in bench.rates():
                at = [r for r in runs if r["rate"] == rate]
                out.append(f"## {rate:g} req/s offered, {args.replicas_mode}, sink {args.sink}\n")
                out.append(report.side_by_side(at) + "\n")
            out.append(report.runs_table(runs))
        elif args.server:
            out.append(report.runs_table(bench.server()))
        elif args.target:
            out.append(report.runs_table(bench.target()))
        runs_n = args.startup_runs if args.startup_runs is not None else (3 if args.compare else 0)
        if runs_n:
            st = bench.startup(runs_n)
            out.append(
                f"\nStart-up (exec of `iot-collector serve` to first 2.05 on /health):"
                f" median {st['median_s']:.3f} s over {st['runs']} runs"
                f" (min {st['min_s']:.3f}, max {st['max_s']:.3f})"
            )
    except (servers.ServerError, GeneratorError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    if bench.runq_share >= report.STARVED_SHARE:
        bench.warn(
            "the machine was oversubscribed: a generator process waited for a CPU up to"
            f" {bench.runq_share:.0%} of a run, so every figure here is noisy"
        )
    if doc["warnings"]:
        out.append("\nWarnings:\n" + "\n".join(f"- {w}" for w in doc["warnings"]))
    print("\n".join(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    if args.plot and doc["runs"]:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_runs = [r for r in doc["runs"] if r["mode"] == "closed"] if args.compare else []
        plot_runs = plot_runs or doc["runs"]
        report.plot(plot_runs, args.plot, "Response-time percentiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
