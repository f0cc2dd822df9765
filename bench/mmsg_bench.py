"""Does batching a worker's datagram system calls pay? recvfrom/sendto vs recvmmsg/sendmmsg.

Two measurements, each side by side in one run:

1. Echo. Two server processes run the same uvloop reader callback (`loop.add_reader`
   on a non-blocking UDP socket, CON -> ACK 2.01 by patching the header, like
   bench/peers/echo.py): (a) up to 256 `recvfrom` + one `sendto` per datagram per
   wake-up, (b) `DatagramBatch.recv()` until empty or 256 datagrams, the replies
   collected and sent with one `DatagramBatch.send()`. One client process (the same
   for both: `DatagramBatch` on many sockets, a fixed number of requests in flight on
   each, every reply answered by a new request) drives one server for a window, then
   the other, alternating. Per window: replies/s seen by the client and the server
   process's CPU seconds (utime + stime from /proc/<pid>/stat) per 1000 replies. On a
   shared 2-core machine CPU per request is the honest figure; req/s is printed too.
2. Burst send. 500 replies produced at once (as when a store write completes a
   batch) go to 100 peers: 500 `sendto` vs one `DatagramBatch.send()`, CPU of this
   process (CLOCK_PROCESS_CPUTIME_ID) per reply. On loopback the sender's CPU
   includes the kernel's delivery to the receiving socket, for both variants alike.

Usage: python bench/mmsg_bench.py [--rounds 3] [--seconds 3] [--sockets 32] [--window 16]
       [--fills 20] [--fill 2048] [--burst-rounds 200]
(loopback only; every loop is bounded in time and count; the servers it starts are
stopped by PID before it exits.)
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.mmsg import DatagramBatch, available

READ_BURST = 256  # datagrams per wake-up, as the worker
BUF = 4 << 20  # socket buffers: no loss with hundreds in flight
_CREATED = 0x41
_TICKS = os.sysconf("SC_CLK_TCK")


# -- servers ---------------------------------------------------------------------------------


def _reply(data: bytes) -> bytes | None:
    """CON -> piggybacked ACK 2.01 with the request's MID and token; else nothing."""
    if len(data) < 4:
        return None
    first = data[0]
    tkl = first & 0x0F
    if first >> 4 != 0x4 or tkl > 8 or len(data) < 4 + tkl:  # version 1, CON
        return None
    return bytes((0x60 | tkl, _CREATED)) + data[2 : 4 + tkl]


def serve_worker(mode: str, sock: socket.socket) -> None:
    import uvloop

    from collector.config import Config
    from collector.worker import Worker

    config = Config(sink="null", host="127.0.0.1", port=0)
    worker = Worker(0, sock, config, None, metrics=False, batched_io=mode == "worker-mmsg")
    loop = uvloop.new_event_loop()
    print(sock.getsockname()[1], flush=True)
    loop.run_until_complete(worker.run())
    loop.close()


def serve(mode: str) -> None:
    import asyncio

    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    if mode.startswith("worker"):
        serve_worker(mode, sock)
        return
    reply = _reply

    def plain() -> None:
        recv, send = sock.recvfrom, sock.sendto
        for _ in range(READ_BURST):
            try:
                data, peer = recv(65536)
            except OSError:
                return
            out = reply(data)
            if out is not None:
                try:
                    send(out, peer)
                except OSError:
                    pass

    batch = DatagramBatch(sock) if mode == "mmsg" else None

    def batched() -> None:
        assert batch is not None
        outbox: list[tuple[bytes, tuple[str, int]]] = []
        append = outbox.append
        taken = 0
        while taken < READ_BURST:
            got = batch.recv()
            for data, peer in got:
                out = reply(data)
                if out is not None:
                    append((out, peer))
            if len(got) < batch.slots:  # the queue is empty: no EAGAIN call needed
                break
            taken += len(got)
        if outbox:
            batch.send(outbox)

    loop = uvloop.new_event_loop()
    loop.add_reader(sock.fileno(), batched if mode == "mmsg" else plain)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(sock.getsockname()[1], flush=True)
    loop.run_until_complete(stop.wait())
    loop.close()


def _cpu(pid: int) -> float:
    """CPU seconds of process `pid` so far: schedstat's nanoseconds, else stat's ticks."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# -- the client ------------------------------------------------------------------------------


class Client:
    """`sockets` source ports, `window` CON requests in flight on each."""

    def __init__(self, sockets: int, window: int) -> None:
        self.window = window
        self.socks = []
        self.batches = []
        self.selector = selectors.EpollSelector()
        for index in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
            self.batches.append(DatagramBatch(sock))
            self.selector.register(sock, selectors.EVENT_READ, index)
        self.mid = [0] * sockets
        self.fresh_mids = False  # the collector deduplicates: give it a new MID each time
        # A 75-byte CON POST /events (Content-Format 50) with a 4-byte token, one event.
        self.template = (
            bytes((0x44, 0x02, 0, 0))
            + b"tokn"
            + bytes((0xB6,))
            + b"events"
            + bytes((0x11, 50, 0xFF))
            + b'{"sender":"b","origin":"p1","payload":{"type":"t","value":1.5}}'
        )

    def _requests(
        self, index: int, count: int, peer: tuple[str, int]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        if not self.fresh_mids:  # the echo keeps no state: one request object serves
            return [(self.template, peer)] * count
        head, tail = self.template[:2], self.template[4:]
        mid = self.mid[index]
        out = []
        for _ in range(count):
            mid = (mid + 1) & 0xFFFF
            out.append((head + mid.to_bytes(2, "big") + tail, peer))
        self.mid[index] = mid
        return out

    def drain(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not any(batch.recv() for batch in self.batches):
                time.sleep(0.05)
                if not any(batch.recv() for batch in self.batches):
                    return

    def run(self, port: int, seconds: float, pid: int) -> tuple[float, float, int]:
        """Drive the server at `port` for `seconds`: (replies/s, server CPU ms/1000, replies)."""
        peer = ("127.0.0.1", port)
        batches = self.batches
        last_seen = [time.monotonic()] * len(batches)
        for index, batch in enumerate(batches):
            batch.send(self._requests(index, self.window, peer))
        warm_until = time.monotonic() + 0.3
        replies = 0
        started = cpu0 = 0.0
        measuring = False
        end = warm_until + seconds
        select = self.selector.select
        while True:
            now = time.monotonic()
            if not measuring and now >= warm_until:
                measuring, replies, started, cpu0 = True, 0, now, _cpu(pid)
            if now >= end:
                break
            for key, _ in select(0.05):
                index = key.data
                got = batches[index].recv()
                if got:
                    replies += len(got)
                    last_seen[index] = now
                    batches[index].send(self._requests(index, len(got), peer))
            for index, seen in enumerate(last_seen):  # a socket whose requests were lost
                if now - seen > 0.2:
                    last_seen[index] = now
                    batches[index].send(self._requests(index, self.window, peer))
        elapsed = time.monotonic() - started
        cpu = _cpu(pid) - cpu0
        self.drain()
        return replies / elapsed, cpu / replies * 1e6 if replies else float("nan"), replies

    def saturated(self, port: int, pid: int, fills: int, per_port: int) -> tuple[float, int]:
        """Server CPU ms per 1000 requests when its queue never runs dry.

        Each fill stops the server (SIGSTOP), queues `per_port` requests from every port
        in its socket, lets it go (SIGCONT) and waits, idle, until it has spent under
        0.5 ms of CPU in 20 ms (the worker's 10 ms ticker never lets it reach zero):
        every wake-up then finds a full queue, the "full load" case.
        """
        peer = ("127.0.0.1", port)
        spent = 0.0
        sent = replies = 0
        for _ in range(fills):
            os.kill(pid, signal.SIGSTOP)
            deadline = time.monotonic() + 2.0
            while _state(pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)
            for index, batch in enumerate(self.batches):
                sent += batch.send(self._requests(index, per_port, peer))
            cpu0 = _cpu(pid)
            os.kill(pid, signal.SIGCONT)
            last, deadline = cpu0, time.monotonic() + 5.0
            while time.monotonic() < deadline:
                time.sleep(0.02)
                now = _cpu(pid)
                if now - last < 0.0005 and _state(pid) == "S":
                    break
                last = now
            spent += last - cpu0
            for batch in self.batches:
                while got := batch.recv():
                    replies += len(got)
        if replies < sent:
            print(f"# saturated: {sent - replies} of {sent} requests got no reply (dropped)")
        return spent / replies * 1e6 if replies else float("nan"), replies


# -- burst send ------------------------------------------------------------------------------


def burst(rounds: int, alternations: int) -> tuple[list[float], list[float]]:
    """CPU microseconds per reply: 500 sendto vs one DatagramBatch.send, alternated."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    batch = DatagramBatch(sender)
    receivers = []
    for _ in range(100):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
        sock.bind(("127.0.0.1", 0))
        receivers.append((sock, DatagramBatch(sock)))
    peers = [sock.getsockname() for sock, _ in receivers]
    items = [(bytes((0x64, 0x41, i >> 8, i & 0xFF)) + b"tokn", peers[i % 100]) for i in range(500)]

    def plain() -> int:
        send = sender.sendto
        for data, peer in items:
            send(data, peer)
        return len(items)

    def batched() -> int:
        return batch.send(items)

    results: tuple[list[float], list[float]] = ([], [])
    for _ in range(alternations):
        for variant, fn in enumerate((plain, batched)):
            spent = 0.0
            sent = 0
            for _ in range(rounds):
                t0 = time.process_time()
                sent += fn()
                spent += time.process_time() - t0
                for _, rbatch in receivers:
                    while rbatch.recv():
                        pass
            results[variant].append(spent / sent * 1e6)
    sender.close()
    for sock, _ in receivers:
        sock.close()
    return results


# -- main ------------------------------------------------------------------------------------


def _start(mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit(f"mmsg_bench: the {mode} server did not start")
    return proc, int(line)


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _stop(servers: list[tuple[subprocess.Popen[str], int]]) -> None:
    for proc, _ in servers:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    for proc, _ in servers:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def compare(client: Client, target: str, modes: tuple[str, str], args: argparse.Namespace) -> None:
    """Alternate the two servers of `target` under the same client; print rows and medians.

    Both servers are started afresh for every round, so each measurement meets the same
    state (a worker's dedup table grows with every request it has seen).
    """
    labels = dict(zip(modes, ("recvfrom/sendto", "recvmmsg/sendmmsg"), strict=True))
    loop: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    full: dict[str, list[float]] = {mode: [] for mode in modes}
    title = "bare echo" if target == "echo" else "collector worker, null sink"
    per_port = max(1, args.fill // args.sockets)
    print(
        f"== {title}: closed loop ({args.sockets} ports x {args.window} in flight, "
        f"{args.seconds}s), then saturated ({args.fills} fills of {per_port * args.sockets} "
        "requests queued while the server is stopped); CPU is the server process's"
    )
    print(
        f"{'round':>5} {'variant':<18} {'req/s':>8} {'CPU ms/1000':>11} {'replies':>8}"
        f" | {'saturated CPU ms/1000':>21} {'replies':>8}"
    )
    for round_no in range(1, args.rounds + 1):
        servers = [_start(mode) for mode in modes]
        try:
            row = {}
            for mode, (proc, port) in zip(modes, servers, strict=True):
                row[mode] = client.run(port, args.seconds, proc.pid)
                loop[mode].append(row[mode][:2])
            for mode, (proc, port) in zip(modes, servers, strict=True):
                cpu, replies = client.saturated(port, proc.pid, args.fills, per_port)
                full[mode].append(cpu)
                rate, loop_cpu, loop_replies = row[mode]
                print(
                    f"{round_no:>5} {labels[mode]:<18} {rate:>8.0f} {loop_cpu:>11.2f}"
                    f" {loop_replies:>8} | {cpu:>21.2f} {replies:>8}"
                )
        finally:
            _stop(servers)
    a, b = modes
    rate_a, rate_b = (_med([r for r, _ in loop[m]]) for m in modes)
    cpu_a, cpu_b = (_med([c for _, c in loop[m]]) for m in modes)
    full_a, full_b = _med(full[a]), _med(full[b])
    print(f"{title} medians of {args.rounds} (CPU ms per 1000 requests):")
    print(
        f"  recvfrom/sendto   closed loop {rate_a:>7.0f} req/s {cpu_a:>6.2f} ms;"
        f" saturated {full_a:>6.2f} ms"
    )
    print(
        f"  recvmmsg/sendmmsg closed loop {rate_b:>7.0f} req/s {cpu_b:>6.2f} ms;"
        f" saturated {full_b:>6.2f} ms"
    )
    print(
        f"  ratio mmsg/plain: closed-loop req/s x{rate_b / rate_a:.2f}, CPU/req x{cpu_b / cpu_a:.2f};"
        f" saturated CPU/req x{full_b / full_a:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="a/b alternations (>= 1)")
    parser.add_argument("--seconds", type=float, default=3.0, help="each measured window")
    parser.add_argument("--sockets", type=int, default=32, help="client source ports")
    parser.add_argument("--window", type=int, default=16, help="requests in flight per port")
    parser.add_argument("--fills", type=int, default=20, help="saturated fills per run")
    parser.add_argument("--fill", type=int, default=2048, help="requests queued per fill")
    parser.add_argument("--burst-rounds", type=int, default=200, help="500-reply bursts/run")
    parser.add_argument(
        "--serve", choices=("plain", "mmsg", "worker-plain", "worker-mmsg"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if not available():
        print("mmsg_bench: recvmmsg/sendmmsg are not available here", file=sys.stderr)
        return 2
    if not (
        1 <= args.rounds <= 50
        and 0.5 <= args.seconds <= 60
        and 1 <= args.sockets <= 512
        and 1 <= args.window <= 256
        and 1 <= args.fills <= 1000
        and 1 <= args.fill <= 4096
        and 1 <= args.burst_rounds <= 10000
    ):
        print("mmsg_bench: an option is out of range (see --help)", file=sys.stderr)
        return 2
    print(f"# {' '.join(sys.argv)}")
    print(f"# kernel {os.uname().release}, python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    client = Client(args.sockets, args.window)
    for target, modes in (("echo", ("plain", "mmsg")), ("worker", ("worker-plain", "worker-mmsg"))):
        client.fresh_mids = target == "worker"
        compare(client, target, modes, args)

    plain_us, batched_us = burst(args.burst_rounds, args.rounds)
    print(f"burst: 500 replies to 100 peers, {args.burst_rounds} bursts per run, CPU us/reply")
    for round_no, (a, b) in enumerate(zip(plain_us, batched_us, strict=True), 1):
        print(f"{round_no:>5} 500x sendto {a:>7.3f}   one send() {b:>7.3f}")
    a, b = _med(plain_us), _med(batched_us)
    print(f"median 500x sendto {a:.3f} us/reply, sendmmsg {b:.3f} us/reply, ratio x{b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
