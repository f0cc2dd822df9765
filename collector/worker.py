"""A worker: one SO_REUSEPORT socket, one uvloop loop, one sink: the plain-UDP shell.

This module moves bytes and owns time; the request core (`collector.core`) decides.
The worker reads its socket from a reader callback (up to READ_BURST datagrams per
wake-up, so timers and flushes still run under load): no transport object, no
per-datagram allocation beyond the message itself. Where libc offers them (Linux), it
moves datagrams with recvmmsg/sendmmsg (`collector.mmsg`), 64 per system call: the
core's answers collect in its outbox, which leaves once per read burst, per written
batch or per timer tick, so a batch of 500 completions leaves in 8 calls instead of
500. That measured 8-18% less CPU per request (bench/mmsg_bench.py); elsewhere it
keeps recvfrom/sendto.

The events the core accepts go to the batch driver (`collector.batching`); at the end
of each read burst the burst's events go to the store at once when it is idle, and a
write that does not wait (a sink's `write_now`) is answered before the burst's outbox
leaves: one wake-up, one recvmmsg, one sendmmsg. The worker never logs per datagram
and never dies of one: the core never raises for a datagram's content, and a bug
there costs that datagram only.

Shutdown (SIGTERM/SIGINT): the core stops taking requests (5.03 with Max-Age) while
the worker keeps reading, so ACKs and RSTs of separate responses still arrive; it
flushes the open batch and exits as soon as nothing is owed, or at --drain-timeout.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from typing import TYPE_CHECKING

import uvloop

from collector import mmsg, resources
from collector.batching import BatchDriver, Item
from collector.config import Config
from collector.core import RequestCore, code_label, source_of
from collector.exchange import Peer
from collector.exits import EXIT_DRAIN_INCOMPLETE, EXIT_OK, EXIT_STORE_UNAVAILABLE
from collector.metrics import PrometheusMetrics, WorkerStats
from collector.sinks import Result, StoreUnavailable, make_sink
from collector.status import DRAINING, SERVING, STOPPED, STORE_DOWN, StatusBoard

if TYPE_CHECKING:
    from collector.coaps import DtlsShell

log = logging.getLogger("collector.worker")

READ_BURST = 256  # datagrams per reader wake-up before yielding to timers
MAX_DATAGRAM = 65536  # read whole datagrams: an oversized body gets 4.13, not 4.00
TICK = 0.01  # seconds between exchange-timer sweeps
# Allocations between young-generation GC passes (default 700). A pass walks what was
# allocated since the last one and is still alive, so its pause grows with this
# number: 50,000 paused the worker 4-9 ms every second or so at 30,000 requests/s,
# 5,000 pauses it ~0.65 ms ten times as often, for the same total work.
GC_THRESHOLD = 5_000
PUBLISH_EVERY = 1.0  # seconds between metric publishes and store probes


class Worker:
    def __init__(
        self,
        index: int,
        sock: socket.socket | None,
        config: Config,
        status: StatusBoard | None = None,
        *,
        metrics: bool = True,
        batched_io: bool = True,
        dtls_sock: socket.socket | None = None,
    ) -> None:
        self.index = index
        self.sock = sock
        self.config = config
        self.status = status
        self.stats = WorkerStats(histograms=metrics)
        self.sink = make_sink(config, index)
        # Batched I/O: slots hold the largest UDP datagram, so every request arrives
        # whole (whatever its options) and a body over max_body gets its 4.13 with Size1.
        # The slots are an anonymous mmap: only pages the kernel writes become resident.
        self._batch = (
            mmsg.DatagramBatch(sock, slot_size=MAX_DATAGRAM)
            if sock is not None and batched_io and mmsg.available()
            else None
        )
        self.driver = BatchDriver(
            self.sink,
            self._on_results,
            batch_max=config.batch_max,
            batch_ms=config.batch_ms,
            max_flushes=config.max_flushes,
            on_flushed=self._on_flushed,
        )
        self.core = RequestCore(config, self.driver.add, worker=index, stats=self.stats)
        # coaps (issue 15): a second shell, core and driver on the same sink and stats.
        self.dtls: DtlsShell | None = None
        if dtls_sock is not None:
            from collector.coaps import DtlsShell

            self.dtls = DtlsShell(index, dtls_sock, config, self.sink, self.stats, metrics=metrics)
        if config.access_log:
            self.core.access = self._access
        self._in_burst = False  # in a read burst, which flushes the outbox at its end
        self.store_up = True
        self.stopping = False
        self._with_metrics = metrics
        self._metrics: PrometheusMetrics | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now = time.monotonic  # the loop's clock, once running
        self._stop: asyncio.Event | None = None
        self._drain_deadline = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def _set_status(self, state: int) -> None:
        if self.status is not None:
            self.status.set(self.index, state)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `stop()`), then drain. Returns the exit code."""
        loop = self._loop = asyncio.get_running_loop()
        self._now = loop.time
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # The supervisor forks with these blocked; one that came early is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            await self.sink.start()
        except StoreUnavailable as exc:
            log.error("store unavailable", extra={"worker": self.index, "reason": str(exc)})
            return EXIT_STORE_UNAVAILABLE
        if self._with_metrics:
            self._metrics = PrometheusMetrics(self.index)
        fd = self.sock.fileno() if self.sock is not None else None  # None: --plain off
        # What the worker built to serve with (the dedup table, the caches, the sink's
        # client) lives as long as it does: frozen, no GC pass walks it again. Left
        # young, the dedup table and its queues were walked whole by the first
        # middle-generation pass (10-17 ms at 30,000 requests/s).
        gc.freeze()
        if fd is not None:
            loop.add_reader(fd, self._on_readable)
        if self.dtls is not None:
            self.dtls.start(loop)
        self._set_status(SERVING)
        log.debug("worker serving", extra={"worker": self.index})
        ticker = loop.create_task(self._tick_loop())
        await self._stop.wait()
        self.stopping = True
        self.core.drain()
        if self.dtls is not None:
            self.dtls.drain()
        self._set_status(DRAINING)
        code = await self._drain(loop)
        if self.dtls is not None and not await self.dtls.finish(self._drain_deadline):
            code = EXIT_DRAIN_INCOMPLETE
        if fd is not None:
            loop.remove_reader(fd)
        if self.dtls is not None:
            self.dtls.close()
        self._flush_outbox()
        ticker.cancel()
        self._publish()
        await self.sink.close()
        self._set_status(STOPPED)
        return code

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> int:
        """Flush and answer everything held, reading on (ACKs of separate responses,
        duplicates, and new requests, which get 5.03); done when nothing is owed."""
        deadline = self._drain_deadline = loop.time() + self.config.drain_timeout
        self.driver.flush()
        self._flush_outbox()
        try:
            await asyncio.wait_for(self.driver.wait_idle(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "drain timed out",
                extra={"worker": self.index, "pending_events": self.driver.pending},
            )
            return EXIT_DRAIN_INCOMPLETE
        while self.core.owed and loop.time() < deadline:
            await asyncio.sleep(TICK)
        return EXIT_OK

    async def _tick_loop(self) -> None:
        """Exchange timers every TICK; once a second, a store probe and a metrics publish.

        The probe runs as its own task: a store that hangs (a locked sqlite file, an
        Elasticsearch that does not answer) must not hold up empty ACKs and
        retransmissions, which are exactly what devices need while the store is slow.
        """
        loop = asyncio.get_running_loop()
        next_publish = loop.time() + PUBLISH_EVERY
        probe: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(TICK)
                now = loop.time()
                self.core.tick(now)
                self._flush_outbox()
                if now >= next_publish:
                    next_publish = now + PUBLISH_EVERY
                    if probe is None or probe.done():
                        probe = loop.create_task(self._probe_store())
                    self._publish()
        finally:
            if probe is not None:
                probe.cancel()

    async def _probe_store(self) -> None:
        try:
            up = await self.sink.healthy()
        except Exception:
            up = False
        if up != self.store_up:
            self.store_up = up
            log.warning("store up" if up else "store down", extra={"worker": self.index})
        if not self.stopping:
            # A spooling sink is up while it works around its store: /health says so.
            degraded = getattr(self.sink, "degraded", None)
            if not up:
                self.core.health = resources.HEALTH_STORE_DOWN
            else:
                self.core.health = resources.HEALTH_DEGRADED if degraded else resources.HEALTH_OK
            self._set_status(SERVING if up else STORE_DOWN)

    def _publish(self) -> None:
        stats = self.stats
        stats.retransmissions += self.core.exchange.retransmitted
        self.core.exchange.retransmitted = 0
        if self._metrics is not None:
            self._metrics.publish(stats, self.driver.pending, self.store_up)

    # -- bytes in, bytes out -----------------------------------------------------------

    def _flush_outbox(self) -> None:
        outbox = self.core.outbox
        if outbox:
            self.core.outbox = []
            assert self.sock is not None  # an outbox comes from reading the socket
            mmsg.send_all(self.sock, self._batch, outbox)

    def _on_readable(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        wall_ms = int(time.time() * 1000)
        self._in_burst = True
        try:
            if self._batch is not None:
                self._read_batched(self._batch, now, wall_ms)
            else:
                self._read_single(now, wall_ms)
            # The burst's events go to the store now; a write that needs no wait
            # (the null sink) answers them before the outbox leaves below.
            try:
                self.driver.close_idle()
            except Exception:  # answering is guarded like handling: log, keep serving
                log.exception("answering a batch failed", extra={"worker": self.index})
        finally:
            self._in_burst = False
            self._flush_outbox()

    def _read_single(self, now: float, wall_ms: int) -> None:
        assert self.sock is not None
        recv = self.sock.recvfrom
        datagram = self.core.datagram
        for _ in range(READ_BURST):
            try:
                data, peer = recv(MAX_DATAGRAM)
            except OSError:  # BlockingIOError: the queue is empty
                return
            try:
                datagram(data, peer, now, wall_ms)
            except Exception:  # a bug must cost one datagram, never the worker
                log.exception("datagram handling failed", extra={"worker": self.index})

    def _read_batched(self, batch: mmsg.DatagramBatch, now: float, wall_ms: int) -> None:
        datagram = self.core.datagram
        taken = 0
        while taken < READ_BURST:
            try:
                got = batch.recv()
            except OSError:
                return
            for data, peer in got:
                try:
                    datagram(data, peer, now, wall_ms)
                except Exception:  # a bug must cost one datagram, never the worker
                    log.exception("datagram handling failed", extra={"worker": self.index})
            for head, peer, size in batch.oversized:
                try:
                    datagram(head, peer, now, wall_ms, None, size)
                except Exception:
                    log.exception("datagram handling failed", extra={"worker": self.index})
            received = len(got) + len(batch.oversized)
            if received < batch.slots:  # the queue is empty: no EAGAIN call needed
                return
            taken += received

    def _on_results(self, batch: list[Item], results: list[Result]) -> None:
        self.core.on_results(batch, results, self._now())
        if not self._in_burst:  # inside a burst, its end sends everything at once
            self._flush_outbox()

    def _access(self, peer: Peer, mid: int, code: int) -> None:
        """--access-log: a JSON line per answered request (slow; for debugging)."""
        log.info("request", extra={"peer": source_of(peer), "mid": mid, "code": code_label(code)})

    def _on_flushed(self, count: int, seconds: float) -> None:
        self.stats.batch_size.observe(float(count))
        self.stats.flush_seconds.observe(seconds)


def serve_forever(
    index: int,
    sock: socket.socket | None,
    config: Config,
    status: StatusBoard | None,
    dtls_sock: socket.socket | None = None,
) -> int:
    """Run one worker on a fresh uvloop loop (the worker process's main)."""
    # The dedup cache holds up to --dedup-capacity live entries; the cyclic GC would
    # walk them on every old-generation pass (measured: p99 at 4000 req/s 22-26 ms with
    # the default settings, 10-12 ms without). The hot path makes no cycles, so freeze
    # what start-up made (again once the worker is built: Worker.run), keep the young
    # passes short (GC_THRESHOLD) and the older ones rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 1000)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = Worker(
            index, sock, config, status, metrics=bool(config.metrics_port), dtls_sock=dtls_sock
        )
        return loop.run_until_complete(worker.run())
    finally:
        loop.close()


__all__ = ["Worker", "serve_forever"]
