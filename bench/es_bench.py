#!/usr/bin/env python3
"""Elasticsearch store benchmark: the collector against a direct loader, same ES, one run.

Rows (each for --duration seconds after a short warm-up, against the same local ES):

- collector          `iot-collector serve --sink elasticsearch` driven by the closed-loop
                     CoAP generator of bench/loadtest.py (batched system calls, a few
                     us of CPU per request): --sockets source ports, each with --window
                     CON requests in flight, one event per request; acked (2.01)
                     events/s and latency p50/p99 of those acks.
- collector batch=1  the same with `--batch-max 1`: one write request per event, as the
                     thesis' node.js collector did (one `index` call per event).
- collector, null    the same with `--sink null`: the CoAP side and the generator alone,
                     i.e. what this box allows before any store is involved.
- loader (ceiling)   `helpers.async_streaming_bulk` writing the same documents
                     (`create`, same ids and indices), --loader-streams in parallel.
- ids: create+_id vs index+auto id, and http_compress on/off: the sink's own bulk path
                     (ElasticsearchSink.write, batches of --batch events, --inflight
                     writes at once), so only the variable changes.

CPU per stored event is measured for every row: the collector's process tree, the
loader (this process), the generator, and Elasticsearch itself (its process, found by
the port it listens on), so that on a machine where all of them share the cores the
comparison can be read per unit of work as well as per second.

Output: a Markdown table and the ratios on stdout, progress on stderr, and with --json
every figure. ES: $ES_URL, else one is started with scripts/es.sh on a free port (and
stopped). The generator, the collector and ES share the machine: the figures compare
designs on one box, they are not capacity claims.

Example:
  .venv/bin/python bench/es_bench.py --duration 10 --repeat 3 --json bench/results/es.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import report as lg_report  # noqa: E402
from loadgen import servers as lg_servers  # noqa: E402
from loadgen.generator import LoadSpec, run_load  # noqa: E402

from collector.events import Event  # noqa: E402
from collector.sinks.base import Outcome  # noqa: E402
from collector.sinks.elasticsearch import ElasticsearchSink, index_name  # noqa: E402

COLLECTOR_BIN = ROOT / ".venv" / "bin" / "iot-collector"


def log(msg: str) -> None:
    print(f"es_bench: {msg}", file=sys.stderr, flush=True)


# --- Elasticsearch ------------------------------------------------------------------


@contextlib.contextmanager
def elasticsearch(url: str | None) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ES_PORT=str(port), ES_HEAP=os.environ.get("ES_HEAP", "1g"))
    log(f"starting Elasticsearch on port {port} with scripts/es.sh")
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/es.sh"), "start"], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"es_bench: es.sh start failed: {out.stderr.strip().splitlines()[-1:]}")
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(ROOT / "scripts/es.sh"), "stop"], env=env, check=False)


def delete_prefix(url: str, prefix: str) -> None:
    from elasticsearch import Elasticsearch

    with Elasticsearch(url, request_timeout=60) as es:
        es.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")


def count_docs(url: str, prefix: str) -> int:
    from elasticsearch import Elasticsearch

    with Elasticsearch(url, request_timeout=60) as es:
        es.indices.refresh(index=f"{prefix}-*", allow_no_indices=True)
        return int(es.count(index=f"{prefix}-*", allow_no_indices=True)["count"])


# --- the collector and a closed-loop CoAP generator ----------------------------------


def start_collector(
    url: str, prefix: str, args: argparse.Namespace, **extra: Any
) -> tuple[subprocess.Popen[bytes], int, Path]:
    flags: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "workers": args.workers,
        "metrics_port": 0,
        "sink": "elasticsearch",
        "es_url": url,
        "es_index_prefix": prefix,
        "batch_max": args.batch,
        "log_level": "info",  # the "serving" line carries the port
    }
    for pair in args.collector_flag:
        key, _, value = pair.partition("=")
        flags[key.replace("-", "_")] = value
    flags.update(extra)
    argv = [str(COLLECTOR_BIN), "serve"]
    for key, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
        else:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    err = Path(f"/tmp/es_bench-collector-{os.getpid()}-{time.monotonic_ns()}.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    with err.open("wb") as f:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=env
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"es_bench: collector exited: {err.read_text()[-500:]}")
        for line in err.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("msg") == "serving":
                    return proc, int(rec["port"]), err
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("es_bench: collector did not print its serving line")


def stop_collector(proc: subprocess.Popen[bytes], err: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(OSError):
        err.unlink()


def drive(port: int, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Closed loop for `seconds` after the warm-up: the run's summary (loadgen report)."""
    spec = LoadSpec(
        host="127.0.0.1",
        port=port,
        rate=0.0,
        duration=seconds,
        warmup=args.warmup,
        devices=args.sockets,
        window=args.window,
        timeout=args.request_timeout,
    )
    raw = run_load(spec, label="collector", show_progress=False)
    summary = lg_report.summarize(raw, spec, "collector", "collector", 1)
    summary["sent_total"] = sum(int(r["sent_total"]) for r in raw)
    return summary


def es_pid(url: str) -> int | None:
    """The pid of the process listening on the URL's TCP port (Elasticsearch), if any."""
    port = url.rstrip("/").rsplit(":", 1)[-1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout
        found = re.search(r"pid=(\d+)", out)
        if found:
            return int(found.group(1))
    return None


def pid_cpu(pid: int | None) -> float:
    """User + system CPU seconds of one process so far (0 when it is unknown)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def collector_row(url: str, args: argparse.Namespace, name: str, **extra: Any) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    proc, port, err = start_collector(url, prefix, args, **extra)
    fleet = lg_servers.Fleet(procs=[lg_servers.Proc("collector", proc)])
    es = es_pid(url)
    try:
        time.sleep(0.5)
        cpu0, es0 = fleet.cpu_seconds(), pid_cpu(es)
        run = drive(port, args, args.duration)
        cpu, es_cpu = fleet.cpu_seconds() - cpu0, pid_cpu(es) - es0
    finally:
        stop_collector(proc, err)
    stored = count_docs(url, prefix) if extra.get("sink") != "null" else 0
    delete_prefix(url, prefix)
    acked = run["ok"]
    sent_total = run["sent_total"]
    row = {
        "row": name,
        "events_per_s": acked / args.duration,
        "p50_ms": run["latency_ms"]["p50"],
        "p99_ms": run["latency_ms"]["p99"],
        "other": {c: n for c, n in run["codes"].items() if c != "2.01"},
        "timeouts": run["timeouts"],
        "stored_total": stored,
        # CPU over warm-up and measurement, per request sent in that time
        "collector_cpu_us_per_event": round(cpu / sent_total * 1e6, 1) if sent_total else None,
        "es_cpu_us_per_event": round(es_cpu / sent_total * 1e6, 1) if sent_total and es else None,
        "generator_cpu_us_per_event": run["generator_cpu_us_per_request"],
    }
    log(
        f"{name}: {row['events_per_s']:.0f} ev/s p50 {row['p50_ms']} p99 {row['p99_ms']}"
        f" other {row['other']} timeouts {row['timeouts']} collector CPU"
        f" {row['collector_cpu_us_per_event']} us/event, ES {row['es_cpu_us_per_event']}"
    )
    return row


# --- direct loaders -------------------------------------------------------------------


def make_events(n: int) -> list[Event]:
    now = int(time.time() * 1000)
    return [
        Event(
            uuid.uuid4().hex,
            now,
            now,
            "default",
            "bench",
            f"dev{i % 256}",
            "temperature",
            random.uniform(-10, 40),
            "Cel",
            f"127.0.0.1:{40000 + i % 256}",
            0,
        )
        for i in range(n)
    ]


async def _streaming_loader(url: str, prefix: str, args: argparse.Namespace) -> int:
    from elasticsearch import AsyncElasticsearch
    from elasticsearch.helpers import async_streaming_bulk

    client = AsyncElasticsearch(url, request_timeout=60)
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + args.warmup
    stop_at = measure_from + args.duration
    done = total = 0

    async def actions() -> AsyncIterator[dict[str, Any]]:
        while loop.time() < stop_at:
            for e in make_events(args.batch):
                yield {
                    "_op_type": "create",
                    "_index": index_name(prefix, e.timestamp_ms),
                    "_id": e.id,
                    "_source": e.document(),
                }

    async def stream() -> None:
        nonlocal done, total
        async for ok, _item in async_streaming_bulk(
            client, actions(), chunk_size=args.batch, raise_on_error=False, max_retries=0
        ):
            total += 1
            now = loop.time()
            if ok and measure_from <= now <= stop_at:
                done += 1

    try:
        # The sink installs the same template the collector uses.
        sink = ElasticsearchSink(sink_config(url, prefix), 0)
        await sink.start()
        await sink.close()
        await asyncio.gather(*(stream() for _ in range(args.loader_streams)))
    finally:
        await client.close()
    return done, total


def sink_config(url: str, prefix: str, compress: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        es_url=url,
        es_index_prefix=prefix,
        es_username=None,
        es_password=None,
        es_api_key=None,
        es_ca_certs=None,
        store_wait=10.0,
        es_retry_deadline=30.0,
        es_compress=compress,
        es_ilm_policy=None,
    )


async def _sink_loader(
    url: str, prefix: str, args: argparse.Namespace, compress: bool, auto_ids: bool
) -> int:
    sink = ElasticsearchSink(sink_config(url, prefix, compress), 0)
    await sink.start()
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + args.warmup
    stop_at = measure_from + args.duration
    done = total = 0
    if auto_ids:
        # The alternative to deterministic ids: `index` actions without `_id`, so ES picks
        # one. Same serialisation path otherwise (patched action line).
        def action(event: Event) -> bytes:
            return b"".join(
                (
                    b'{"index":{"_index":"',
                    index_name(prefix, event.timestamp_ms).encode(),
                    b'"}}\n',
                    orjson.dumps(event.document()),
                    b"\n",
                )
            )

        sink._action = action  # type: ignore[method-assign]

    async def worker() -> None:
        nonlocal done, total
        while loop.time() < stop_at:
            events = make_events(args.batch)
            results = await sink.write(events)
            total += len(events)
            now = loop.time()
            if measure_from <= now <= stop_at:
                done += sum(1 for r in results if r.outcome is Outcome.STORED)

    try:
        await asyncio.gather(*(worker() for _ in range(args.inflight)))
    finally:
        await sink.close()
    return done, total


def loader_row(
    url: str, args: argparse.Namespace, name: str, kind: str, **kw: Any
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    es = es_pid(url)
    cpu0, es0 = self_cpu(), pid_cpu(es)
    try:
        if kind == "streaming":
            done, total = asyncio.run(_streaming_loader(url, prefix, args))
        else:
            done, total = asyncio.run(_sink_loader(url, prefix, args, **kw))
    finally:
        cpu, es_cpu = self_cpu() - cpu0, pid_cpu(es) - es0
        delete_prefix(url, prefix)
    row = {
        "row": name,
        "events_per_s": done / args.duration,
        "p50_ms": None,
        "p99_ms": None,
        # the loader's CPU includes making its events (what the generator and the
        # collector's decoding do for the collector rows)
        "collector_cpu_us_per_event": round(cpu / total * 1e6, 1) if total else None,
        "es_cpu_us_per_event": round(es_cpu / total * 1e6, 1) if total and es else None,
        "generator_cpu_us_per_event": None,
    }
    log(
        f"{name}: {row['events_per_s']:.0f} ev/s, loader CPU"
        f" {row['collector_cpu_us_per_event']} us/event, ES {row['es_cpu_us_per_event']}"
    )
    return row


# --- main -------------------------------------------------------------------------------


ROWS = {
    "collector": lambda url, a: collector_row(url, a, "collector"),
    "collector_batch1": lambda url, a: collector_row(url, a, "collector batch-max 1", batch_max=1),
    # The collector and generator alone (no store): what the CoAP side can do on this box.
    "collector_null": lambda url, a: collector_row(url, a, "collector, null sink", sink="null"),
    "loader": lambda url, a: loader_row(url, a, "loader async_streaming_bulk", "streaming"),
    "create_id": lambda url, a: loader_row(
        url, a, "sink: create + _id", "sink", compress=False, auto_ids=False
    ),
    "auto_id": lambda url, a: loader_row(
        url, a, "sink: index + auto id", "sink", compress=False, auto_ids=True
    ),
    "compress": lambda url, a: loader_row(
        url, a, "sink: create + _id, http_compress", "sink", compress=True, auto_ids=False
    ),
}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in (
        "events_per_s",
        "p50_ms",
        "p99_ms",
        "collector_cpu_us_per_event",
        "es_cpu_us_per_event",
        "generator_cpu_us_per_event",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["runs"] = [r["events_per_s"] for r in rows]
    return out


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--es-url", default=os.environ.get("ES_URL"))
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; medians are shown")
    p.add_argument("--workers", type=int, default=1, help="collector workers")
    p.add_argument(
        "--batch", type=int, default=500, help="events per bulk (collector --batch-max, loaders)"
    )
    p.add_argument("--sockets", type=int, default=64, help="generator source ports")
    p.add_argument(
        "--window",
        type=int,
        default=32,
        help="requests in flight per source port (32: 64 x 32 = 2048 events in flight, what"
        " the loader keeps in flight with 4 streams of 500, so both fill 500-event bulks)",
    )
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--loader-streams", type=int, default=4, help="parallel async_streaming_bulk")
    p.add_argument(
        "--inflight", type=int, default=4, help="parallel sink writes (id/compress rows)"
    )
    p.add_argument(
        "--collector-flag",
        action="append",
        default=[],
        metavar="FLAG=VALUE",
        help="extra `iot-collector serve` flag for the collector rows (repeatable)",
    )
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        print(f"es_bench: unknown rows {unknown}; choose from {','.join(ROWS)}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in wanted}
    with elasticsearch(args.es_url) as url:
        for rep in range(args.repeat):
            for name in wanted:
                log(f"run {rep + 1}/{args.repeat}: {name}")
                results[name].append(ROWS[name](url, args))
    med = {name: median_row(rows) for name, rows in results.items()}
    print(
        f"\n| row | events/s (median of {args.repeat}) | p50 ms | p99 ms | runs |"
        " collector or loader CPU us/event | ES CPU us/event | generator CPU us/event |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name in wanted:
        r = med[name]
        runs = ", ".join(f"{v:,.0f}" for v in r["runs"])
        print(
            f"| {r['row']} | {fmt(r['events_per_s'])} | {fmt(r['p50_ms'], 1)}"
            f" | {fmt(r['p99_ms'], 1)} | {runs} | {fmt(r['collector_cpu_us_per_event'], 1)}"
            f" | {fmt(r['es_cpu_us_per_event'], 1)} | {fmt(r['generator_cpu_us_per_event'], 1)} |"
        )
    print()

    def ratio(a: str, b: str, label: str) -> None:
        if a in med and b in med and med[b]["events_per_s"]:
            print(f"- {label}: {med[a]['events_per_s'] / med[b]['events_per_s']:.2f}x")

    ratio("collector", "loader", "collector / async_streaming_bulk loader (target >= 0.8)")
    ratio("collector", "collector_batch1", "collector batched / batch-max 1 (target >= 10)")
    ratio("collector", "collector_null", "collector with ES / collector with the null sink")
    ratio("create_id", "auto_id", "create + deterministic _id / index + auto id")
    ratio("compress", "create_id", "http_compress on / off")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": results,
                    "medians": med,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
