"""A/B of the generator's engines (Python loops against loadgen/engine.c), interleaved.

One generator process against the C echo peer (``--peer echo-c``, the default; or any
plain peer of loadtest.py), the same runs for each engine in every repetition: the
closed-loop max (``--devices`` sockets, ``--window`` in flight each) and the open
loop at each of ``--rates``. Engines alternate within a repetition, so a change in
the machine's load hits both alike. Per engine and load it prints the medians of
the repetitions with [min-max]: answered requests/s, the generator's CPU per request
(user + system, from getrusage), its share of the run on a CPU and waiting for one
(the machine's other work), p50 and p99, and
in how many repetitions the generator kept its schedule (open loop: >= 98% sent, send
lag p99 <= 10 ms, every request answered). ``--pin`` puts the peer on the first CPU
and the generator on the second.

    .venv/bin/python bench/engine_ab.py --repeats 3 --duration 3 --rates 60000,120000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import report, servers
from loadgen.generator import LoadSpec, run_load

ENGINES = ("python", "c")


def _loads(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(name, rate, window) of each load of a repetition."""
    return [("closed max", 0.0, args.window)] + [(f"open {r:g}/s", r, 0) for r in args.rates]


def _kept(run: dict[str, Any]) -> bool:
    if run["mode"] == "closed":
        return not run["generator_saturated"]
    return run["generator_kept_up"] and run["timeouts"] == 0 and run["answered"] == run["sent"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--peer", default="echo-c", choices=servers.PEERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--window", type=int, default=4, help="closed loop: in flight per socket")
    parser.add_argument(
        "--rates", type=lambda t: [float(x) for x in t.split(",")], default=[60000.0, 120000.0]
    )
    parser.add_argument("--pin", action="store_true", help="peer on CPU 0, generator on CPU 1")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    fleet, host, port = servers.start_server(args.peer, cpus=cpus[:1] if pin else ())
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for rep in range(args.repeats):
            for name, rate, window in _loads(args):
                for engine in ENGINES if rep % 2 == 0 else ENGINES[::-1]:
                    spec = LoadSpec(
                        host=host, port=port, rate=rate, duration=args.duration,
                        warmup=args.warmup, devices=args.devices, window=window,
                        engine=engine, cpus=tuple(cpus[1:2]) if pin else (),
                    )  # fmt: skip
                    raw = run_load(spec, show_progress=False)
                    run = report.summarize(raw, spec, name, args.peer, 1)
                    runs.setdefault((name, engine), []).append(run)
                    print(
                        f"rep {rep + 1} {name:>14} {engine:>6}: {run['ok_rate']:8.0f} ok/s,"
                        f" {run['generator_cpu_us_per_request']:5.2f} us/req,"
                        f" p99 {run['latency_ms']['p99'] or 0:8.2f} ms,"
                        f" {'kept up' if _kept(run) else 'BEHIND'}",
                        file=sys.stderr,
                    )
    finally:
        servers.stop_fleet(fleet)
    print(
        f"{args.repeats} interleaved repetitions against {args.peer}"
        f"{' (pinned: peer CPU 0, generator CPU 1)' if pin else ''}, one generator process,"
        f" {args.devices} devices, {args.duration:g} s each: median [min-max]\n"
    )
    print(
        "| load | engine | ok/s | generator CPU us/req | generator CPU share |"
        " waited for a CPU | p50 ms | p99 ms | kept schedule |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _rate, _window in _loads(args):
        for engine in ENGINES:
            rs = runs[(name, engine)]

            def sp(key: str, digits: int, rs: list[dict[str, Any]] = rs) -> str:
                s = report.spread([r[key] if key in r else r["latency_ms"][key] for r in rs])
                return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

            print(
                f"| {name} | {engine} | {sp('ok_rate', 0)} |"
                f" {sp('generator_cpu_us_per_request', 2)} | {sp('generator_cpu_share', 2)} |"
                f" {sp('generator_runq_share', 2)} |"
                f" {sp('p50', 2)} | {sp('p99', 2)} | {sum(map(_kept, rs))}/{len(rs)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
