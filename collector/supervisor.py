"""The supervisor: binds the socket group, forks workers, restarts them, drains them.

It binds every worker's SO_REUSEPORT socket before forking and keeps them all open
for its whole life. The kernel spreads flows by hashing over the group's open
sockets, so a worker that dies and is replaced neither loses the datagrams queued on
its socket nor moves other devices' flows onto workers lacking their dedup state.

The supervisor runs no threads (forking a threaded process is unsafe) and no asyncio:
one selector loop over a signal wake-up pipe and the metrics HTTP connections, each
of them non-blocking (collector/probes.py), so no HTTP client can hold the loop. Signal
handlers only record the signal; the loop acts on it (uvicorn's shape). Shutdown has
two stages: SIGTERM/SIGINT asks every worker to drain within `--drain-timeout`; a
second signal, or the timeout, kills them.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from collector.config import Config
from collector.exits import EXIT_DRAIN_INCOMPLETE, EXIT_OK
from collector.metrics import SupervisorMetrics
from collector.probes import ProbeServer
from collector.redact import redact_url
from collector.status import SERVING, STORE_DOWN, StatusBoard

log = logging.getLogger("collector.supervisor")


RESTART_BACKOFF_MAX = 5.0  # seconds between restarts of a worker that keeps dying
STABLE_AFTER = 10.0  # a worker that lived this long restarts without delay
KILL_GRACE = 1.0
WAIT_NOTICE_AFTER = 1.0  # seconds of store start-up before "waiting for the store"  # seconds past the drain timeout before SIGKILL


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_PR_SET_PDEATHSIG = 1


class BindError(Exception):
    pass


def _set_parent_death_signal(sig: int) -> None:
    """Linux prctl(PR_SET_PDEATHSIG): `sig` when the supervisor dies; elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _already_served(family: int, address: tuple[Any, ...]) -> bool:
    """Whether another socket already holds this UDP address.

    SO_REUSEPORT lets any process of the same user join a group silently, and a
    second collector would then take a share of the flows (and ack them into its own
    store). A probe bound without SO_REUSEPORT fails with EADDRINUSE exactly when some
    socket serves the address (or a wildcard/specific address overlapping it).
    """
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(address)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


def bind_group(
    host: str, port: int, count: int, rcvbuf: int, *, share: bool = False
) -> list[socket.socket]:
    """Bind `count` UDP sockets of one SO_REUSEPORT group on (host, port).

    A port another process already serves is refused unless `share` (--share-port)
    asks to join its group.

    `host` '::' gives dual-stack sockets (IPv6 and IPv4-mapped). The receive buffer is
    set with SO_RCVBUFFORCE when permitted (root/CAP_NET_ADMIN), since plain SO_RCVBUF
    is capped by net.core.rmem_max. Raises BindError with one line.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _type, _proto, _canon, address = infos[0]
    if port and not share and _already_served(family, address):
        raise BindError(f"UDP {_host_port(host, port)} is already served by another process")
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind(address)
            if address[1] == 0:  # port 0: the first socket picks, the rest join it
                address = (address[0], sock.getsockname()[1], *address[2:])
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"UDP {_host_port(host, port)} is already served by another process"
            ) from None
        raise BindError(f"cannot bind udp {host}:{port}: {exc.strerror or exc}") from None
    return socks


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def preflight_store(config: Config) -> None:
    """Check the store once before forking, so a dead store is one clear line, not N.

    Installs schemas/templates as a side effect (idempotent). Raises StoreUnavailable.
    """
    from collector.sinks import StoreUnavailable, make_sink

    async def check() -> None:
        sink = make_sink(config, 0, spool=False)  # the primary only: workers own the spools
        try:
            starting = asyncio.ensure_future(sink.start())
            done, _ = await asyncio.wait({starting}, timeout=WAIT_NOTICE_AFTER)
            if not done:  # say why start-up is quiet, once
                print(
                    f"iot-collector: waiting for the store at {store_location(config)} "
                    f"({config.store_wait:g} s)",
                    file=sys.stderr,
                    flush=True,
                )
            await starting
        finally:
            await sink.close()

    try:
        asyncio.run(check())
    except StoreUnavailable as exc:
        if not config.spool_path:
            raise
        # With a spool the workers serve into it and keep starting the store.
        log.warning("store unavailable: serving into the spool", extra={"reason": str(exc)})


def store_location(config: Config) -> str:
    """Where the store is, for messages: the URL without its userinfo, or the file."""
    if config.sink == "elasticsearch":
        return redact_url(config.es_url)
    if config.sink == "sqlite":
        return config.sqlite_path
    return config.sink


class Supervisor:
    """Forks and watches the workers. `signals` may be injected (tests)."""

    def __init__(
        self,
        config: Config,
        socks: list[socket.socket],
        *,
        signals: queue.SimpleQueue[int] | None = None,
        worker_main: Callable[[int, socket.socket, Config, StatusBoard], int] | None = None,
        dtls_socks: list[socket.socket] | None = None,
    ) -> None:
        self.config = config
        # Plain CoAP's group (empty when --plain is off) and the coaps group (issue
        # 15): worker i owns socket i of each, for the same reason as above.
        self.socks = socks
        self.dtls_socks = dtls_socks or []
        self.status = StatusBoard(config.workers)
        self.signals: queue.SimpleQueue[int] = (
            signals if signals is not None else queue.SimpleQueue()
        )
        self._worker_main = worker_main
        self.pids: dict[int, int] = {}  # pid -> worker index
        self._started: dict[int, float] = {}  # worker index -> start time
        self._failures: dict[int, int] = {}  # worker index -> quick deaths in a row
        self._restart_at: dict[int, float] = {}
        self._stopping_since: float | None = None
        self._forced = False
        self._exit_codes: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._http: ProbeServer | None = None
        self._selector: selectors.BaseSelector | None = None
        self._metrics: SupervisorMetrics | None = None

    # -- signals -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def record(signum: int, _frame: object) -> None:
            self.signals.put(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    # -- workers -----------------------------------------------------------------------

    def spawn(self, index: int) -> int:
        # TERM/INT stay blocked across the fork: one that arrives before the worker has
        # its own handler stays pending (neither killing it mid-start nor landing in the
        # supervisor's inherited handler); the worker unblocks them once it can drain.
        parent = os.getpid()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        else:  # the worker process
            code = EXIT_DRAIN_INCOMPLETE
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                # SIGHUP (a PSK reload, forwarded) must not kill a worker that has no
                # handler of its own yet; the coaps shell installs one.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                # A worker whose supervisor is gone drains and exits, rather than serve
                # the port headless and join a new collector's SO_REUSEPORT group.
                _set_parent_death_signal(signal.SIGTERM)
                if os.getppid() != parent:
                    os.kill(os.getpid(), signal.SIGTERM)
                os.close(self._wake_r)
                os.close(self._wake_w)
                if self._http is not None:
                    self._http.close_in_child()
                if self._selector is not None:
                    self._selector.close()  # the child's copy; the supervisor's set stays
                for group in (self.socks, self.dtls_socks):
                    for i, sock in enumerate(group):
                        if i != index:
                            sock.close()
                plain = self.socks[index] if self.socks else None
                if self._worker_main is not None:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                    code = self._worker_main(index, plain, self.config, self.status)  # type: ignore[arg-type]
                else:
                    from collector.worker import serve_forever

                    dtls = self.dtls_socks[index] if self.dtls_socks else None
                    code = serve_forever(index, plain, self.config, self.status, dtls)
            except BaseException:
                log.exception("worker crashed", extra={"worker": index})
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = index
        self._started[index] = time.monotonic()
        return pid

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            self._mark_dead(pid)
            self.status.set(index, 0)
            if self._stopping_since is not None:
                self._exit_codes.append(code)
                continue
            lived = time.monotonic() - self._started.get(index, 0.0)
            failures = 0 if lived >= STABLE_AFTER else self._failures.get(index, 0) + 1
            self._failures[index] = failures
            delay = 0.0 if failures <= 1 else min(RESTART_BACKOFF_MAX, 0.1 * 2 ** (failures - 1))
            self._restart_at[index] = time.monotonic() + delay
            log.warning(
                "worker died; restarting",
                extra={"worker": index, "pid": pid, "exit": code, "restart_in_s": delay},
            )
            if self._metrics is not None:
                self._metrics.restarts.inc()

    def _mark_dead(self, pid: int) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self._restart_at.items()):
            if due <= now:
                del self._restart_at[index]
                self.spawn(index)

    # -- HTTP: /metrics /healthz /readyz ----------------------------------------------

    def ready(self) -> bool:
        """Every worker is running and answering devices, whatever the store's state.

        A worker whose store is down still answers (5.03 with Max-Age, or into its
        spool); taking the replica out of the Service would turn that into silence.
        """
        return (
            self._stopping_since is None
            and len(self.pids) == self.config.workers
            and all(self.status.get(i) in (SERVING, STORE_DOWN) for i in range(self.config.workers))
        )

    def store_up(self) -> bool:
        """Every worker reports its store accepting writes."""
        return len(self.pids) == self.config.workers and self.status.all(SERVING)

    def _routes(self) -> dict[str, Callable[[], tuple[int, bytes, str]]]:
        def healthz() -> tuple[int, bytes, str]:
            return 200, b"ok\n", "text/plain"

        def readyz() -> tuple[int, bytes, str]:
            if self.ready():
                return 200, b"ready\n", "text/plain"
            return 503, b"not ready\n", "text/plain"

        def storez() -> tuple[int, bytes, str]:
            if self.store_up():
                return 200, b"store up\n", "text/plain"
            return 503, b"store down\n", "text/plain"

        def metrics() -> tuple[int, bytes, str]:
            from collector.metrics import render_metrics

            return (200, *render_metrics())

        return {"/healthz": healthz, "/readyz": readyz, "/storez": storez, "/metrics": metrics}

    def _start_http(self) -> None:
        if not self.config.metrics_port:
            return
        try:
            self._http = ProbeServer(
                self.config.metrics_host, self.config.metrics_port, self._routes()
            )
        except OSError as exc:
            raise BindError(
                f"cannot bind metrics tcp {self.config.metrics_host}:{self.config.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise until they have all exited."""
        selector = self._selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._start_http()
        if self._http is not None:
            self._http.attach(selector)
        if self.config.metrics_port:
            self._metrics = SupervisorMetrics()
        if self._worker_main is None:
            # Import the worker's modules once, here: every fork then starts serving at
            # once instead of importing uvloop and friends N times over.
            import collector.worker  # noqa: F401
        for index in range(self.config.workers):
            self.spawn(index)
        announced = False
        while self.pids or (self._restart_at and self._stopping_since is None):
            try:
                ready = selector.select(0.1)
            except InterruptedError:
                ready = []
            for key, events in ready:
                if key.data is None:  # the signal wake-up pipe
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif self._http is not None:
                    self._http.handle(key, events)
            if self._http is not None:
                self._http.expire()
            self._handle_signals()
            self._reap()
            if self._stopping_since is None:
                self._restart_due()
                if not announced and self.ready():
                    announced = True
                    first = (self.socks or self.dtls_socks)[0]
                    host, port = first.getsockname()[:2]
                    log.info(
                        "serving",
                        extra={
                            "host": host,
                            "port": port if self.socks else None,
                            "coaps_port": (
                                self.dtls_socks[0].getsockname()[1] if self.dtls_socks else None
                            ),
                            "workers": self.config.workers,
                            "sink": self.config.sink,
                        },
                    )
            elif not self._forced and (
                time.monotonic() - self._stopping_since > self.config.drain_timeout + KILL_GRACE
            ):
                log.error("drain timeout exceeded; killing workers")
                self._kill_all()
        return self._finish()

    def _handle_signals(self) -> None:
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            if signum == signal.SIGCHLD:
                continue
            if signum == signal.SIGHUP:
                # Reload the PSK file: each worker reads it again itself (the keys
                # never pass through the supervisor).
                if self.dtls_socks and self._stopping_since is None:
                    log.info("reloading psk file")
                    for pid in list(self.pids):
                        self._signal(pid, signal.SIGHUP)
                continue
            if self._stopping_since is None:
                self._stopping_since = time.monotonic()
                log.info("draining", extra={"signal": signal.Signals(signum).name})
                self._restart_at.clear()
                for pid in list(self.pids):
                    self._signal(pid, signal.SIGTERM)
            else:
                log.warning("second signal: forcing exit")
                self._kill_all()

    def _kill_all(self) -> None:
        self._forced = True
        for pid in list(self.pids):
            self._signal(pid, signal.SIGKILL)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _finish(self) -> int:
        if self._http is not None:
            self._http.close()
        if self._selector is not None:
            self._selector.close()
        for sock in (*self.socks, *self.dtls_socks):
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._forced:
            print("iot-collector: workers killed before they finished draining", file=sys.stderr)
            return EXIT_DRAIN_INCOMPLETE
        bad = [code for code in self._exit_codes if code != 0]
        if bad:
            print(f"iot-collector: {len(bad)} worker(s) did not drain cleanly", file=sys.stderr)
            return EXIT_DRAIN_INCOMPLETE
        log.info("stopped")
        return EXIT_OK
