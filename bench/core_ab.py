"""A/B of the request path: this checkout against an older one, interleaved.

The request core (collector/core.py) replaced the old worker's hot path; this script
is how README's "what the request core costs" figures were made. Check the old
commit out beside this one (`git worktree add /tmp/before f2beed6`), then:

    python bench/core_ab.py --before /tmp/before micro          # in process
    python bench/core_ab.py --before /tmp/before load --rate 15000

`micro`: 20,000 plain event POSTs per repetition fed to one worker's request path in
process (no sockets, null sink, a batch closed every 64 datagrams), the best CPU time
per request of each tree's runs. `load`: each tree's `iot-collector serve --workers 1
--sink null` loaded by this checkout's bench/loadtest.py; the worker's CPU per request
from /proc, and the generator's p50 and p99. Trees alternate in every repetition, so
a change in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
N = 20_000


def _micro_run(tree: str, reps: int) -> float:
    """In this process, with `tree` first on sys.path: the best µs per request."""
    sys.path.insert(0, tree)
    import asyncio

    import orjson

    import coap
    from collector.config import Config

    body = orjson.dumps(
        {"sender": "demo", "origin": "probe1", "payload": {"type": "temperature", "value": 15.5}}
    )
    options = ((11, b"events"), (12, b"\x32"))

    async def run() -> float:
        try:
            from collector.core import RequestCore  # the request core
        except ImportError:
            RequestCore = None
        from collector.batching import BatchDriver
        from collector.sinks.null import NullSink

        best = float("inf")
        if RequestCore is not None:
            cfg = Config(sink="null")
            core = None

            def on_results(batch: list, results: list) -> None:
                assert core is not None
                core.on_results(batch, results, 0.0)

            driver = BatchDriver(NullSink(), on_results, batch_max=500, batch_ms=5, max_flushes=4)
            core = RequestCore(cfg, driver.add)
            feed = core.datagram

            def sent() -> None:
                core.outbox.clear()

        else:
            from collector.worker import Worker

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                worker = Worker(0, sock, Config(sink="null"), metrics=False, batched_io=False)
            worker._send = lambda _d, _p: None  # type: ignore[method-assign]
            worker._loop = asyncio.get_running_loop()
            feed = worker._handle
            driver = worker.driver

            def sent() -> None:
                return None

        for rep in range(reps):
            datagrams = [
                coap.encode(
                    coap.Message(coap.Type.CON, coap.Code.POST, i & 0xFFFF, b"tok4", options, body)
                )
                for i in range(N)
            ]
            peers = [(f"127.0.{rep}.{i % 200}", 10_000 + i // 200) for i in range(N)]
            wall_ms = int(time.time() * 1000)
            t0 = time.process_time()
            for start in range(0, N, 64):
                for j in range(start, min(N, start + 64)):
                    feed(datagrams[j], peers[j], 1.0, wall_ms)
                driver.close_idle()
                sent()
            best = min(best, (time.process_time() - t0) / N * 1e6)
            await driver.wait_idle()
        return best

    return asyncio.run(run())


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
    parser = argparse.ArgumentParser(
        description="A/B of the request path against an older checkout"
    )
    parser.add_argument("--before", required=True, help="an older checkout (git worktree)")
    parser.add_argument("--after", default=str(HERE), help="this checkout (default)")
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--reps", type=int, default=15)
    m.add_argument("--rounds", type=int, default=3)
    lo = sub.add_parser("load")
    lo.add_argument("--rate", type=int, default=15000)
    lo.add_argument("--duration", type=float, default=4.0)
    lo.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    if args.mode == "micro":
        micro(trees, args.reps, args.rounds)
    else:
        load(trees, args.rate, args.duration, args.reps)


if __name__ == "__main__":
    main()
