"""The DTLS (coaps) shell of a worker: records in, plaintext to the request core, and back.

The second I/O shell around the same sans-I/O request core (the plain-UDP shell is
collector.worker): one socket of the --coaps-port SO_REUSEPORT group, one
`DtlsServer` (sessions, cookies, records), one `RequestCore` and one `BatchDriver`
on the worker's sink. A datagram's path reads straight down: socket ->
`DtlsServer.datagram` (plaintexts of an open session) -> `RequestCore.datagram` with
the session's `Identity` -> the core's outbox of plaintext answers -> one record each
-> socket. The core never sees a datagram of a peer without a session, so nothing
unauthenticated reaches event decoding or the store.

Keys: the worker reads --psk-file itself (after fork) and again on SIGHUP; a reload
that fails keeps the previous keys (logged, without key material), one that removes
or re-keys an identity closes that identity's sessions at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from typing import Any

from collector import mmsg
from collector.batching import BatchDriver, Item
from collector.config import Config
from collector.core import RequestCore, source_of
from collector.dtls import DtlsServer, SessionEvent, make_backend
from collector.identity import Identity
from collector.metrics import WorkerStats
from collector.psk import PskFileError, PskStore, load_psk_file
from collector.sinks import Result, Sink

log = logging.getLogger("collector.coaps")

READ_BURST = 256  # datagrams per reader wake-up before yielding to timers
TICK = 0.01  # seconds between exchange-timer sweeps (as the plain shell)
PUBLISH_EVERY = 1.0  # seconds between metric publishes
# A DTLS record is at most 2^14 bytes plus its overhead (RFC 6347 §4.1); a datagram
# larger than a slot is not ours to read.
MAX_DATAGRAM = 18 * 1024
SESSION_SWEEP = 1.0  # seconds between session-table sweeps (idle, stale handshakes)
AUTH_FAILURES = frozenset({"bad_key", "unknown_identity"})


class DtlsMetrics:
    """The Prometheus objects of the coaps shell (create after fork, in the worker)."""

    def __init__(self, worker: int) -> None:
        from prometheus_client import Counter, Gauge

        self.worker = str(worker)
        self.handshakes = Counter(
            "iot_collector_dtls_handshakes",
            "DTLS handshakes by outcome (ok, bad_key, unknown_identity, timeout, ...)",
            ["outcome"],
            registry=None,
        )
        self.sessions = Gauge(
            "iot_collector_dtls_sessions",
            "DTLS sessions in the table (handshaking or open)",
            ["worker"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.auth_rejections = Counter(
            "iot_collector_auth_rejections",
            "Devices refused: bad_key, unknown_identity (handshake), revoked (reload)",
            ["reason"],
            registry=None,
        )


class DtlsShell:
    """coaps on one socket of a worker, sharing the worker's sink and stats."""

    def __init__(
        self,
        index: int,
        sock: socket.socket,
        config: Config,
        sink: Sink,
        stats: WorkerStats,
        *,
        metrics: bool = True,
        batched_io: bool = True,
    ) -> None:
        assert config.psk_file is not None
        self.index = index
        self.sock = sock
        self.config = config
        self.stats = stats
        self.store = PskStore(load_psk_file(config.psk_file))
        self.server = DtlsServer(
            make_backend(config.dtls_backend, self.store),
            max_sessions=config.dtls_max_sessions,
            idle_timeout=config.dtls_idle_timeout,
        )
        self.driver = BatchDriver(
            sink,
            self._on_results,
            batch_max=config.batch_max,
            batch_ms=config.batch_ms,
            max_flushes=config.max_flushes,
        )
        self.core = RequestCore(config, self.driver.add, worker=index, stats=stats)
        # recvmmsg/sendmmsg as the plain shell, where libc has them (collector.mmsg).
        self._batch = (
            mmsg.DatagramBatch(sock, slot_size=MAX_DATAGRAM)
            if batched_io and mmsg.available()
            else None
        )
        self._with_metrics = metrics
        self._metrics: DtlsMetrics | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_burst = False
        self._next_sweep = 0.0
        self._published: dict[str, int] = {}
        self._revoked = 0
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle (called by the worker) ------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the socket, run the timers, reload the keys on SIGHUP (after the sink
        has started: the worker calls this once it serves)."""
        self._loop = loop
        if self._with_metrics:
            self._metrics = DtlsMetrics(self.index)
        loop.add_reader(self.sock.fileno(), self._on_readable)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._ticker = loop.create_task(self._tick_loop())

    def drain(self) -> None:
        """New requests get 5.03 (the core's draining); sessions stay open meanwhile,
        so ACKs of separate responses and duplicates are still read."""
        self.core.drain()
        self.driver.flush()
        self._flush()

    async def finish(self, deadline: float) -> bool:
        """Wait (until the loop time `deadline`) for the store and for what is owed to
        devices; True when everything was answered."""
        assert self._loop is not None
        loop = self._loop
        try:
            await asyncio.wait_for(self.driver.wait_idle(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return False
        while self.core.owed and loop.time() < deadline:
            await asyncio.sleep(TICK)
        return not self.core.owed

    def close(self) -> None:
        """Stop reading and ticking; close_notify to every open session."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_signal_handler(signal.SIGHUP)
        if self._ticker is not None:
            self._ticker.cancel()
        self.server.close_all()
        self._events()
        self._flush()
        self.publish()

    async def _tick_loop(self) -> None:
        assert self._loop is not None
        loop = self._loop
        next_publish = loop.time() + PUBLISH_EVERY
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            self.tick(now)
            if now >= next_publish:
                next_publish = now + PUBLISH_EVERY
                self.publish()

    def reload(self) -> None:
        """SIGHUP: read --psk-file again; close sessions of removed/re-keyed identities."""
        assert self.config.psk_file is not None
        try:
            entries = load_psk_file(self.config.psk_file)
        except PskFileError as exc:
            log.error(
                "psk file not reloaded; keeping the previous keys",
                extra={"worker": self.index, "reason": str(exc)},
            )
            return
        gone = self.store.replace(entries)
        closed = self.server.close_identities(gone)
        self._revoked += closed
        log.info(
            "psk file reloaded",
            extra={
                "worker": self.index,
                "identities": len(entries),
                "revoked": sorted(gone),
                "sessions_closed": closed,
            },
        )
        self._events()
        self._flush()

    def tick(self, now: float) -> None:
        """Exchange timers every tick; the session sweep once a second."""
        self.core.tick(now)
        if now >= self._next_sweep:
            self._next_sweep = now + SESSION_SWEEP
            self.server.tick(now)
            self._events()
        self._flush()

    def publish(self) -> None:
        """Move the session layer's counts into the Prometheus objects (once a second)."""
        metrics = self._metrics
        if metrics is None:
            return
        for outcome, count in self.server.stats.handshakes.items():
            delta = count - self._published.get(outcome, 0)
            if delta:
                self._published[outcome] = count
                metrics.handshakes.labels(outcome).inc(delta)
                if outcome in AUTH_FAILURES:
                    metrics.auth_rejections.labels(outcome).inc(delta)
        if self._revoked:
            metrics.auth_rejections.labels("revoked").inc(self._revoked)
            self._revoked = 0
        metrics.sessions.labels(metrics.worker).set(len(self.server.sessions))

    # -- bytes in, bytes out -------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        wall_ms = int(time.time() * 1000)
        self._in_burst = True
        try:
            if self._batch is not None:
                taken = 0
                while taken < READ_BURST:
                    try:
                        got = self._batch.recv()  # oversized: > MAX_DATAGRAM, not DTLS
                    except OSError:
                        break
                    self._datagrams(got, now, wall_ms)
                    if len(got) + len(self._batch.oversized) < self._batch.slots:
                        break  # the queue is empty
                    taken += len(got)
            else:
                recv = self.sock.recvfrom
                for _ in range(READ_BURST):
                    try:
                        data, peer = recv(MAX_DATAGRAM)
                    except OSError:  # BlockingIOError: the queue is empty
                        break
                    self._datagrams([(data, peer)], now, wall_ms)
            try:
                self.driver.close_idle()
            except Exception:
                log.exception("answering a batch failed", extra={"worker": self.index})
            if self.server.events:
                self._events()
        finally:
            self._in_burst = False
            self._flush()

    def _datagrams(self, got: list[tuple[bytes, Any]], now: float, wall_ms: int) -> None:
        """Each datagram through the session layer, its plaintexts to the core (a burst
        in one call: the per-datagram work here is the shell's whole cost)."""
        opened_by = self.server.datagram
        request = self.core.datagram
        for data, peer in got:
            try:
                opened = opened_by(data, peer, now)
                if opened is None:
                    continue
                session, plaintexts = opened
                identity: Identity | None = session.principal
                if identity is None:
                    identity = self._identity(session)
                    if identity is None:
                        continue
                for plain in plaintexts:
                    request(plain, peer, now, wall_ms, identity)
            except Exception:  # a bug must cost one datagram, never the worker
                log.exception("coaps datagram handling failed", extra={"worker": self.index})

    def _identity(self, session: Any) -> Identity | None:
        """The Identity of a freshly opened session, from the current PSK entries."""
        entry = self.store.entry(session.identity) if session.identity else None
        if entry is None:  # removed between the handshake and its first record
            self.server.close_identities({session.identity or ""})
            return None
        identity = Identity(entry.identity, entry.namespace, entry.sender)
        session.principal = identity
        return identity

    def _flush(self) -> None:
        outbox = self.core.outbox
        if outbox:
            self.core.outbox = []
            self.server.send_all(outbox)  # an answer to a session closed meanwhile: none
        records = self.server.outbox
        if not records:
            return
        self.server.outbox = []
        mmsg.send_all(self.sock, self._batch, records)

    def _on_results(self, batch: list[Item], results: list[Result]) -> None:
        assert self._loop is not None
        self.core.on_results(batch, results, self._loop.time())
        if not self._in_burst:
            self._flush()

    def _events(self) -> None:
        """Lifecycle logs: the identity and the peer, never a key."""
        events, self.server.events = self.server.events, []
        for event in events:
            _log_event(self.index, event)


def _log_event(worker: int, event: SessionEvent) -> None:
    fields = {
        "worker": worker,
        "peer": source_of(event.peer),
        "identity": event.identity,
        "outcome": event.outcome,
    }
    if event.kind == "handshake":
        if event.outcome == "ok":
            log.info("dtls session opened", extra={**fields, "cipher": event.cipher})
        else:
            log.warning("dtls handshake failed", extra=fields)
    else:
        log.info("dtls session closed", extra=fields)
