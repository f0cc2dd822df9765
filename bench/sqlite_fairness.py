#!/usr/bin/env python3
"""SQLite fairness between workers: streaks of one worker's rows, and latency.

Starts `iot-collector serve --workers W --sink sqlite` on a fresh database, drives it
closed-loop with --devices sockets, each with one CON request of --events events in
flight, for --duration seconds, then stops it (SIGTERM) and reads the rows back in
insertion order (rowid). A streak is a run of consecutive rows written by one worker
while the other workers had requests waiting; with writers taking turns it stays
around a couple of batches.

Output: acked events/s, 2.01 and 5.03 counts, latency p50/p99/max of the 2.01
answers, per-worker rows, the longest streak, and "overtaken by": the most events
of other workers committed ahead of an event they received after it, i.e. how many
of another worker's batches an event waited behind (events, and batches at the
mean batch size read from the collector's metrics). A streak can also mean that the
other worker had nothing to write; "overtaken by" counts only real waiting.

Example:
  .venv/bin/python bench/sqlite_fairness.py --workers 2 --devices 32 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import coap  # noqa: E402
from coap import Code, OptionNumber, Type  # noqa: E402


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Device(asyncio.DatagramProtocol):
    """One socket, one request in flight; resends after 2 s (loopback: rarely)."""

    def __init__(self, events: int, stop_at: float, out: dict[str, list[float]]) -> None:
        self.events = events
        self.stop_at = stop_at
        self.out = out
        self.mid = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.sent_at = 0.0
        self.current = b""
        self.done = asyncio.get_event_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send_next()

    def send_next(self) -> None:
        if time.monotonic() >= self.stop_at:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.mid = (self.mid + 1) & 0xFFFF
        body = json.dumps(
            [
                {
                    "sender": "bench",
                    "origin": "o",
                    "payload": {"type": "t", "value": i},
                    "id": uuid.uuid4().hex,
                }
                for i in range(self.events)
            ],
            separators=(",", ":"),
        ).encode()
        options = (
            (int(OptionNumber.URI_PATH), b"events"),
            (int(OptionNumber.CONTENT_FORMAT), coap.encode_uint(50)),
        )
        msg = coap.Message(
            Type.CON, Code.POST, self.mid, self.mid.to_bytes(2, "big"), options, body
        )
        self.current = coap.encode(msg)
        self.sent_at = time.monotonic()
        self.resend()

    def resend(self) -> None:
        assert self.transport is not None
        self.transport.sendto(self.current)
        self.timer = asyncio.get_event_loop().call_later(2.0, self.resend)

    def datagram_received(self, data: bytes, _addr: object) -> None:
        try:
            msg = coap.decode(data)
        except coap.CoapError:
            return
        if msg.token != self.mid.to_bytes(2, "big"):
            return
        if msg.type == Type.ACK and msg.code == 0:
            return  # empty ACK: the separate response follows
        if msg.type == Type.CON:
            assert self.transport is not None
            self.transport.sendto(coap.encode(coap.Message(Type.ACK, 0, msg.mid, b"", (), b"")))
        if self.timer is not None:
            self.timer.cancel()
        code = coap.code_str(msg.code)
        self.out.setdefault(code, []).append(time.monotonic() - self.sent_at)
        self.send_next()


async def drive(port: int, devices: int, events: int, duration: float) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    out: dict[str, list[float]] = {}
    stop_at = time.monotonic() + duration
    made = []
    for _ in range(devices):
        _t, proto = await loop.create_datagram_endpoint(
            lambda: Device(events, stop_at, out), remote_addr=("127.0.0.1", port)
        )
        made.append((_t, proto))
    await asyncio.wait([p.done for _t, p in made], timeout=duration + 10)
    for t, _p in made:
        t.close()
    return out


def streaks(db: Path) -> tuple[dict[int, int], int, int]:
    """Rows per worker, the longest run of one worker's rows (rowid order), and the
    most events of other workers committed ahead of an event they received later
    ("overtaken by": how long an event waited behind other workers' writes)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT worker, received_ms FROM events ORDER BY rowid").fetchall()
    finally:
        conn.close()
    per: dict[int, int] = {}
    longest = run = 0
    previous = None
    for w, _received in rows:
        per[w] = per.get(w, 0) + 1
        run = run + 1 if w == previous else 1
        previous = w
        longest = max(longest, run)
    # Fenwick trees over received_ms ranks, one per worker: for each row, count the
    # rows of other workers committed before it that were received after it.
    ranks = {t: i + 1 for i, t in enumerate(sorted({r for _w, r in rows}))}
    size = len(ranks)
    trees = {w: [0] * (size + 1) for w in per}
    seen = dict.fromkeys(per, 0)
    overtaken = 0

    def prefix(tree: list[int], i: int) -> int:
        total = 0
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total

    for w, received in rows:
        rank = ranks[received]
        ahead = sum(seen[o] - prefix(trees[o], rank) for o in per if o != w)
        overtaken = max(overtaken, ahead)
        tree = trees[w]
        i = rank
        while i <= size:
            tree[i] += 1
            i += i & -i
        seen[w] += 1
    return per, longest, overtaken


def mean_batch(metrics_port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "iot_collector_batch_size_events_sum":
                total += s.value
            elif s.name == "iot_collector_batch_size_events_count":
                count += s.value
    return total / count if count else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--events", type=int, default=100, help="events per request")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--synchronous", default="full", choices=("full", "normal"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sqlite-fair-"))
    db = work / "events.db"
    port, metrics_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(work / "prom"))
    argv = [
        str(ROOT / ".venv" / "bin" / "iot-collector"),
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={args.workers}",
        "--sink=sqlite",
        f"--sqlite-path={db}",
        f"--sqlite-synchronous={args.synchronous}",
        "--metrics-host=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--log-level=warning",
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/readyz", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the collector did not become ready")
            time.sleep(0.2)
        out = asyncio.run(drive(port, args.devices, args.events, args.duration))
        batch = mean_batch(metrics_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    per, longest, overtaken = streaks(db)
    created = out.get("2.01", [])
    print(
        f"workers={args.workers} devices={args.devices} events/request={args.events} "
        f"duration={args.duration}s synchronous={args.synchronous}"
    )
    print("answers: " + ", ".join(f"{k}: {len(v)}" for k, v in sorted(out.items())))
    print(f"acked events/s: {len(created) * args.events / args.duration:.0f}")
    if created:
        print(
            f"2.01 latency s: p50 {statistics.median(created):.3f} p99 {pct(created, 0.99):.3f} "
            f"max {max(created):.3f}"
        )
    print(f"rows per worker: {dict(sorted(per.items()))}")
    in_batches = (lambda n: f" = {n / batch:.1f} batches") if batch else (lambda n: "")
    print(f"mean batch: {batch:.0f} events")
    print(f"longest one-worker streak: {longest} events{in_batches(longest)}")
    print(
        f"most other-worker events committed ahead of an earlier-received event: "
        f"{overtaken}{in_batches(overtaken)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
