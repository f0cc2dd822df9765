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
  --server NAME               start NAME locally (collector, echo, aiocoap, node-coap,
                              californium), load it, stop it
  --replicas 1,3              start the collector as N independent 1-worker replicas
                              behind one address per configuration, same load on each,
                              percentile table side by side (the thesis' Fig 34/35)
  --compare                   every available server with the same generator: capacity
                              (highest rate with p99 <= --p99-bound and no errors, by a
                              rate sweep), p99 at a common rate, ratios to the
                              collector, the generator's own ceiling, start-up times
  --startup-runs N            (any mode) median time from exec of `iot-collector serve`
                              to its first 2.05 on GET /health, over N starts

Output: a one-line progress display every second on stderr; Markdown tables on
stdout; --json FILE with every number plus argv, versions and machine; --plot FILE
with percentile curves per configuration.

Examples:
  python bench/loadtest.py --server collector --rate 5000 --duration 10
  python bench/loadtest.py --replicas 1,3 --rate 8000 --duration 20 --cpu-limit 0.3 \\
      --plot bench/results/replicas.png --json bench/results/replicas.json
  python bench/loadtest.py --compare --duration 3 --json bench/results/compare.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import report, servers
from loadgen.generator import GeneratorError, LoadSpec, min_devices, run_load
from loadgen.wire import FORMATS

DEFAULT_LADDER = (500, 1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000, 48000, 64000)


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


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
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
        "--cpu-limit",
        type=_positive(float),
        metavar="CPUS",
        help="CPU quota per started server/replica via a cgroup, e.g. 0.3 (needs root)",
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
        help="sweep these offered rates (one run each); --compare: the capacity ladder",
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
        default=1,
        help="generator processes sharing the schedule and the devices (default 1)",
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
        default=0.0,
        help="shortest wait of the generator loop in seconds (default 0: wake exactly at"
        " each send time); e.g. 0.0002 coalesces wake-ups, adding at most that much send"
        " lag (reported) in exchange for less generator CPU per request",
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
        "--common-rate",
        type=_positive(float),
        help="rate at which every server's p99 is compared (default: the highest ladder rate"
        " every server passed)",
    )
    c.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-run a failing ladder step this many times; it fails only if all tries do"
        " (default 1: a shared machine stalls now and then)",
    )
    c.add_argument(
        "--server-warmup",
        type=float,
        default=3.0,
        help="seconds of unrecorded load at the lowest ladder rate after each server starts"
        " (JIT, caches; default 3)",
    )
    c.add_argument(
        "--refine", type=int, default=2, help="bisection steps after the ladder (default 2)"
    )
    c.add_argument(
        "--servers",
        default=",".join(servers.SERVERS),
        help="servers for --compare (default all: %(default)s)",
    )
    c.add_argument(
        "--startup-runs",
        type=int,
        default=None,
        help="measure exec-to-first-2.05 of the collector over N starts (median);"
        " --compare does 3 by default",
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
    ]
    if sum(modes) > 1:
        raise UsageError("choose one of --target, --server, --replicas, --compare")
    if sum(modes) == 0 and not args.startup_runs:
        raise UsageError("nothing to do: give --target, --server, --replicas or --compare")
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
    if args.compare:
        names = [s.strip() for s in args.servers.split(",") if s.strip()]
        bad = [s for s in names if s not in servers.SERVERS]
        if bad or not names:
            raise UsageError(f"--servers: unknown {', '.join(bad) or '(empty)'}")


class Bench:
    """Runs of one invocation, collected into the JSON document."""

    def __init__(self, args: argparse.Namespace, doc: dict[str, Any]) -> None:
        self.args = args
        self.doc = doc

    def spec(self, host: str, port: int, rate: float, duration: float | None = None) -> LoadSpec:
        a = self.args
        spec = LoadSpec(
            host=host,
            port=port,
            rate=rate,
            duration=duration or a.duration,
            warmup=a.warmup,
            devices=a.devices,
            fmt=a.format,
            events=a.events_per_request,
            non=a.non,
            timeout=a.timeout,
            procs=a.procs,
            path=a.path,
            tick=max(0.0, a.tick),
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

    def run(
        self,
        host: str,
        port: int,
        rate: float,
        label: str,
        server: str,
        replicas: int = 1,
        fleet: servers.Fleet | None = None,
    ) -> dict[str, Any]:
        spec = self.spec(host, port, rate)
        cpu0 = fleet.cpu_seconds() if fleet else None
        raw = run_load(spec, label=label, show_progress=not self.args.quiet)
        summary = report.summarize(raw, spec, label, server, replicas)
        if fleet is not None and cpu0 is not None:
            # the server's own CPU per request (warm-up included): comparable across
            # servers even on a noisy box, where capacity figures move with the neighbours
            cpu = fleet.cpu_seconds() - cpu0
            sent_total = sum(int(r["sent_total"]) for r in raw)
            summary["server_cpu_s"] = round(cpu, 3)
            summary["server_cpu_us_per_request"] = (
                round(cpu / sent_total * 1e6, 1) if sent_total else None
            )
        if not summary["generator_kept_up"]:
            self.warn(
                f"{label} at {rate:g}/s: the generator fell behind its schedule (sent"
                f" {summary['sent_rate']:.0f}/s, send lag p99 {summary['send_lag_ms']['p99']} ms);"
                " figures include generator delay: add --procs or lower --rate"
            )
        self.doc["runs"].append(summary)
        return summary

    def step(
        self,
        host: str,
        port: int,
        label: str,
        name: str,
        fleet: servers.Fleet,
        rate: float,
        entry: dict[str, Any],
    ) -> tuple[dict[str, Any], bool]:
        """One capacity-ladder step; a failing rate is tried again --retries times."""
        a = self.args
        run = self.run(host, port, rate, label, name, fleet=fleet)
        ok = report.passes(run, a.p99_bound)
        for _ in range(a.retries if not ok else 0):
            # a shared box stalls now and then: a rate fails only if every try does
            time.sleep(1.0)
            again = self.run(host, port, rate, f"{label} (retry)", name, fleet=fleet)
            if report.passes(again, a.p99_bound):
                run, ok = again, True
                break
        entry["runs"][f"{rate:g}"] = run
        return run, ok

    def warm(self, host: str, port: int, rate: float, label: str) -> None:
        """An unrecorded run that warms the server up (JIT, caches, allocators)."""
        seconds = self.args.server_warmup
        if seconds <= 0:
            return
        spec = LoadSpec(**{**self.spec(host, port, rate).__dict__, "duration": seconds})
        run_load(spec, label=f"{label} warm-up", show_progress=not self.args.quiet)

    def rates(self) -> list[float]:
        return list(self.args.rates) if self.args.rates else [self.args.rate]

    def collector_opts(self, workers: int) -> servers.CollectorOptions:
        return servers.CollectorOptions(
            workers=workers, sink=self.args.sink, es_url=self.args.es_url
        )

    # --- modes -------------------------------------------------------------------------

    def target(self) -> list[dict[str, Any]]:
        host, port = self.args.target
        return [self.run(host, port, r, f"{host}:{port}", "target") for r in self.rates()]

    def server(self) -> list[dict[str, Any]]:
        a = self.args
        name = a.server
        opts = self.collector_opts(a.workers[0])
        fleet, host, port = servers.start_server(name, collector=opts, cpu_limit=a.cpu_limit)
        label = f"{name} w={opts.workers}" if name == "collector" else name
        try:
            return [self.run(host, port, r, label, name, fleet=fleet) for r in self.rates()]
        finally:
            servers.stop_fleet(fleet)

    def replicas(self) -> list[dict[str, Any]]:
        a = self.args
        out = []
        for n in a.replicas:
            fleet, host, port = servers.start_server(
                "collector",
                collector=self.collector_opts(1),
                replicas=n,
                mode=a.replicas_mode,
                cpu_limit=a.cpu_limit,
            )
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

    def compare(self) -> dict[str, Any]:
        a = self.args
        ladder = sorted(a.rates) if a.rates else list(DEFAULT_LADDER)
        names = [s.strip() for s in a.servers.split(",") if s.strip()]
        configs: list[tuple[str, str, int]] = []
        for name in names:
            if name == "collector":
                configs += [(f"collector w={w}", "collector", w) for w in a.workers]
            else:
                configs.append((name, name, 1))
        result: dict[str, Any] = {
            "p99_bound_ms": a.p99_bound,
            "ladder": ladder,
            "servers": [],
            "common_rate": None,
            "reference": configs[0][0] if configs else None,
            "reference_capacity": None,
        }
        gen_ceiling = None
        echo_capacity = None
        for label, name, workers in configs:
            entry: dict[str, Any] = {"name": label, "server": name, "runs": {}}
            result["servers"].append(entry)
            why = None if name == "collector" else servers.peer_available(name)
            if why:
                entry["skipped"] = f"skipped: {why}"
                self.warn(f"--compare: {label} skipped: {why}")
                continue
            try:
                entry["startup_s"] = servers.measure_startup(
                    name, 1, collector=self.collector_opts(workers)
                )["median_s"]
                fleet, host, port = servers.start_server(
                    name, collector=self.collector_opts(workers), cpu_limit=a.cpu_limit
                )
            except servers.ServerError as exc:
                entry["skipped"] = f"skipped: {exc}"
                self.warn(f"--compare: {label} skipped: {exc}")
                continue
            try:
                self.warm(host, port, ladder[0], label)

                best, first_fail = None, None
                for rate in ladder:
                    run, ok = self.step(host, port, label, name, fleet, rate, entry)
                    if name == "echo" and run["generator_kept_up"]:
                        gen_ceiling = max(gen_ceiling or 0, rate)
                    if ok:
                        best = rate
                        continue
                    first_fail = first_fail or rate
                    # echo keeps climbing while the generator keeps up: its ceiling
                    if name != "echo" or not run["generator_kept_up"]:
                        break
                    if best is None or rate > 2 * best:
                        break
                if best is not None:
                    higher = [r for r in ladder if r > best]
                    first_fail = min(higher) if higher and first_fail is not None else None
                lo, hi = best, first_fail
                for _ in range(a.refine if lo is not None and hi is not None else 0):
                    assert lo is not None and hi is not None
                    mid = round((lo + hi) / 2, -1)
                    if mid in (lo, hi):
                        break
                    _, ok = self.step(host, port, label, name, fleet, mid, entry)
                    if ok:
                        lo = mid
                    else:
                        hi = mid
                entry["capacity"] = lo if lo is not None else 0
                if name == "echo":
                    echo_capacity = entry["capacity"]
            finally:
                servers.stop_fleet(fleet)

        measured = [s for s in result["servers"] if "capacity" in s]
        if a.common_rate:
            common = a.common_rate
            for s in measured:
                if f"{common:g}" not in s["runs"]:
                    fleet, host, port = servers.start_server(
                        s["server"],
                        collector=self.collector_opts(
                            int(s["name"].split("=")[-1]) if "=" in s["name"] else 1
                        ),
                        cpu_limit=a.cpu_limit,
                    )
                    try:
                        s["runs"][f"{common:g}"] = self.run(
                            host, port, common, s["name"], s["server"]
                        )
                    finally:
                        servers.stop_fleet(fleet)
        else:
            passed_all = [
                r
                for r in ladder
                if measured
                and all(
                    f"{r:g}" in s["runs"] and report.passes(s["runs"][f"{r:g}"], a.p99_bound)
                    for s in measured
                )
            ]
            common = max(passed_all) if passed_all else None
            if common is None and measured:
                ran_all = [r for r in ladder if all(f"{r:g}" in s["runs"] for s in measured)]
                common = min(ran_all) if ran_all else None
                result["common_rate_note"] = (
                    "no ladder rate passed on every server: the lowest rate all of them ran"
                )
        result["common_rate"] = common
        for s in measured:
            at = s["runs"].get(f"{common:g}") if common else None
            s["p99_at_common_ms"] = at["latency_ms"]["p99"] if at else None
            s["p50_at_common_ms"] = at["latency_ms"]["p50"] if at else None
            s["cpu_us_at_common"] = at.get("server_cpu_us_per_request") if at else None
        ref = next((s for s in measured if s["server"] == "collector"), None)
        result["reference_capacity"] = ref["capacity"] if ref else None
        if ref:
            result["reference"] = ref["name"]
        for s in measured:
            s["capacity_vs_reference"] = (
                s["capacity"] / ref["capacity"]
                if ref and ref["capacity"] and s["capacity"]
                else None
            )
        self.doc["generator_ceiling"] = {
            "rate": gen_ceiling,
            "echo_capacity": echo_capacity,
            "note": "highest offered rate at which the generator kept its schedule against"
            " the echo peer; '>=' when the ladder ended first",
        }
        if gen_ceiling:
            for s in measured:
                if s["server"] == "collector" and s["capacity"] > 0.5 * gen_ceiling:
                    self.warn(
                        f"{s['name']} capacity {s['capacity']:g}/s is not well below the"
                        f" generator's ceiling ({gen_ceiling:g}/s against echo): it may"
                        " measure the generator; add --procs"
                    )
        self.doc["compare"] = result
        return result


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
        [str(Path(__file__)), *argv],
        {k: v for k, v in vars(args).items() if k != "target"}
        | {"target": f"{args.target[0]}:{args.target[1]}" if args.target else None},
        dt.datetime.now(dt.UTC),
    )
    bench = Bench(args, doc)
    out: list[str] = []
    try:
        if args.compare:
            cmp = bench.compare()
            out.append("## Capacity (--compare)\n")
            out.append(report.compare_table(cmp))
            if cmp.get("common_rate_note"):
                out.append(f"\nCommon rate: {cmp['common_rate_note']}.")
            ceiling = doc["generator_ceiling"]
            out.append(
                f"\nGenerator ceiling against echo: {report._g(ceiling['rate'])} req/s"
                f" (echo capacity {report._g(ceiling['echo_capacity'])} req/s)."
            )
            out.append("\n## All runs\n")
            out.append(report.runs_table(doc["runs"]))
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
    if doc["warnings"]:
        out.append("\nWarnings:\n" + "\n".join(f"- {w}" for w in doc["warnings"]))
    print("\n".join(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    if args.plot and doc["runs"]:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_runs = doc["runs"]
        if args.compare and doc["compare"] and doc["compare"]["common_rate"]:
            common = doc["compare"]["common_rate"]
            plot_runs = [r for r in doc["runs"] if r["rate"] == common]
        rates = " / ".join(sorted({f"{r['rate']:g}" for r in plot_runs}))
        report.plot(plot_runs, args.plot, f"Response-time percentiles at {rates} req/s offered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
