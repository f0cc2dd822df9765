"""A/B of the request path: this checkout against an older one, interleaved.

The request core (collector/core.py) replaced the old worker's hot path; this script
is how README's "what the request core costs" figures were made. Check the old
commit out beside this one (`git worktree add /tmp/before f2beed6`), then:

    python bench/core_ab.py --before /tmp/before micro          # in process
    python bench/core_ab.py --before /tmp/before instructions   # in process, counted
    python bench/core_ab.py --before /tmp/before instructions --dedup-capacity 20000
    python bench/core_ab.py --before /tmp/before load --rate 15000

`micro`: 20,000 plain event POSTs per repetition fed to one worker's request path in
process (no sockets, null sink, a batch closed every 64 datagrams), the best CPU time
per request of each tree's runs. `instructions`: the same loop run under callgrind
(valgrind), the instructions one request costs: deterministic, so the one A/B here
that other work on a shared machine cannot disturb (`--dedup-capacity 20000`: a dedup
table full from the second repetition on, so every request also evicts). `load`: each tree's `iot-collector serve --workers 1
--sink null` loaded by this checkout's bench/loadtest.py; the worker's CPU per request
from /proc, and the generator's p50 and p99. Trees alternate in every repetition, so
a change in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
N = 20_000


def _feeder(tree: str, dedup_capacity: int | None) -> tuple[Any, Any, Any]:
    """With `tree` first on sys.path: its request path's feed(data, peer, now,
    wall_ms), its batch driver, and what to call after each burst."""
    sys.path.insert(0, tree)
    import asyncio

    from collector.config import Config

    flags = {} if dedup_capacity is None else {"dedup_capacity": dedup_capacity}
    try:
        from collector.core import RequestCore  # the request core
    except ImportError:
        RequestCore = None
    if RequestCore is not None:
        from collector.batching import BatchDriver
        from collector.sinks.null import NullSink

        def on_results(batch: list, results: list) -> None:
            core.on_results(batch, results, 0.0)

        driver = BatchDriver(NullSink(), on_results, batch_max=500, batch_ms=5, max_flushes=4)
        core = RequestCore(Config(sink="null", **flags), driver.add)
        return core.datagram, driver, core.outbox.clear
    from collector.worker import Worker

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        worker = Worker(0, sock, Config(sink="null", **flags), metrics=False, batched_io=False)
    worker._send = lambda _d, _p: None  # type: ignore[method-assign]
    worker._loop = asyncio.get_running_loop()
    return worker._handle, worker.driver, lambda: None


def _datagrams() -> list[bytes]:
    import orjson

    import coap

    body = orjson.dumps(
        {"sender": "demo", "origin": "probe1", "payload": {"type": "temperature", "value": 15.5}}
    )
    options = ((11, b"events"), (12, b"\x32"))
    return [
        coap.encode(coap.Message(coap.Type.CON, coap.Code.POST, i & 0xFFFF, b"tok4", options, body))
        for i in range(N)
    ]


def _peers(rep: int) -> list[tuple[str, int]]:
    """Repetition `rep`'s 20,000 peers: 200 addresses with 100 ports each, none seen
    in another repetition (so nothing is a duplicate)."""
    return [(f"127.0.{rep}.{i % 200}", 10_000 + i // 200) for i in range(N)]


async def _feed(feed: Any, driver: Any, sent: Any, datagrams: list[bytes], peers: list) -> None:
    wall_ms = int(time.time() * 1000)
    for start in range(0, N, 64):  # a batch closed every 64 datagrams, like a read burst
        for j in range(start, min(N, start + 64)):
            feed(datagrams[j], peers[j], 1.0, wall_ms)
        driver.close_idle()
        sent()
    await driver.wait_idle()


def _micro_run(tree: str, reps: int) -> float:
    """In this process: the best CPU µs per request of `reps` repetitions."""
    import asyncio

    async def run() -> float:
        feed, driver, sent = _feeder(tree, None)
        best = float("inf")
        for rep in range(reps):
            datagrams, peers = _datagrams(), _peers(rep)
            t0 = time.process_time()
            await _feed(feed, driver, sent, datagrams, peers)
            best = min(best, (time.process_time() - t0) / N * 1e6)
        return best

    return asyncio.run(run())


def _counted_run(tree: str, reps: int, dedup_capacity: int | None) -> None:
    """`reps` repetitions for callgrind to count, after a set-up that does not depend
    on `reps` (so two counts' difference is the repetitions' cost alone), with the
    worker's GC settings (collector.worker.serve_forever)."""
    import asyncio
    import gc

    datagrams = _datagrams()
    peers = [_peers(rep) for rep in range(IR_REPS[1])]

    async def run() -> None:
        feed, driver, sent = _feeder(tree, dedup_capacity)
        for rep in range(reps):
            await _feed(feed, driver, sent, datagrams, peers[rep])

    sys.path.insert(0, tree)
    from collector.worker import GC_THRESHOLD  # each tree's own: 50,000 before, 5,000 now

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 1000)
    asyncio.run(run())


IR_REPS = (1, 3)  # repetitions counted: the second count less the first is the cost


def instructions(trees: dict[str, str], dedup_capacity: int | None) -> None:
    """Instructions per request, counted by callgrind: deterministic, so unlike the
    timed modes it is not disturbed by other work on the machine."""
    if shutil.which("valgrind") is None:
        raise SystemExit("core_ab: instructions needs valgrind (apt-get install valgrind)")
    extra = [] if dedup_capacity is None else [str(dedup_capacity)]
    for name, tree in trees.items():
        counts = []
        for reps in IR_REPS:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                 sys.executable, __file__, "_counted", tree, str(reps), *extra],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            found = re.search(r"Collected : (\d+)", out.stderr)
            if found is None:
                raise SystemExit(f"core_ab: no callgrind count in: {out.stderr[-300:]}")
            counts.append(int(found.group(1)))
        per = (counts[1] - counts[0]) / ((IR_REPS[1] - IR_REPS[0]) * N)
        print(f"{name}: {per:,.0f} instructions/request")


def micro(trees: dict[str, str], reps: int, rounds: int) -> None:
    for rnd in range(rounds):
        for name, tree in trees.items():
            out = subprocess.run(
                [sys.executable, __file__, "_micro", tree, str(reps)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(f"round {rnd + 1} {name}: best of {reps}: {float(out.stdout):.2f} us/request")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def load(trees: dict[str, str], rate: int, duration: float, reps: int) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    for rep in range(reps):
        for name, tree in trees.items():
            port = _free_port()
            code = f"import sys; sys.path.insert(0, {tree!r}); from collector.cli import main; sys.exit(main())"
            server = subprocess.Popen(
                [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--sink", "null", "--metrics-port", "0", "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                time.sleep(1.5)
                worker = int(
                    Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()[0]
                )
                before = _cpu_ticks(worker)
                out = subprocess.run(
                    [sys.executable, str(HERE / "bench" / "loadtest.py"), "--target", f"127.0.0.1:{port}",
                     "--rate", str(rate), "--duration", str(duration), "--warmup", "1", "--quiet"],
                    capture_output=True, text=True,
                )  # fmt: skip
                used = _cpu_ticks(worker) - before
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(15)
            row = next((line for line in out.stdout.splitlines() if line.startswith("| 127.")), "")
            cells = [c.strip() for c in row.strip("|").split("|")]
            p50, p99 = (cells[4], cells[6]) if len(cells) > 6 else ("?", "?")
            us = used / hz / (rate * (duration + 1)) * 1e6
            print(
                f"rep {rep + 1} {name}: server CPU {us:.0f} us/request, p50 {p50} ms, p99 {p99} ms"
            )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_micro":
        print(_micro_run(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) in (4, 5) and sys.argv[1] == "_counted":
        capacity = int(sys.argv[4]) if len(sys.argv) == 5 else None
        _counted_run(sys.argv[2], int(sys.argv[3]), capacity)
        return
    parser = argparse.ArgumentParser(
        description="A/B of the request path against an older checkout"
    )
    parser.add_argument("--before", required=True, help="an older checkout (git worktree)")
    parser.add_argument("--after", default=str(HERE), help="this checkout (default)")
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--reps", type=int, default=15)
    m.add_argument("--rounds", type=int, default=3)
    ir = sub.add_parser("instructions")
    ir.add_argument(
        "--dedup-capacity",
        type=int,
        default=None,
        help="a table this small is full after its first repetition (default: the default)",
    )
    lo = sub.add_parser("load")
    lo.add_argument("--rate", type=int, default=15000)
    lo.add_argument("--duration", type=float, default=4.0)
    lo.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    if args.mode == "micro":
        micro(trees, args.reps, args.rounds)
    elif args.mode == "instructions":
        instructions(trees, args.dedup_capacity)
    else:
        load(trees, args.rate, args.duration, args.reps)


if __name__ == "__main__":
    main()
