"""The collector as a process: drain on SIGTERM under load, a worker killed with
SIGKILL, overload, exit codes of bad configurations, IPv6/dual-stack.

Load loops are bounded in count and time and talk only to loopback; processes are
ended by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import coap
from coap import Code, OptionNumber, Type
from collector.core import PENDING_RESERVE

from .conftest import (
    CoapClient,
    Collector,
    event,
    free_tcp_port,
    ids_stored,
    row_count,
    rows,
    rss_kib,
    run_cli,
    start_collector,
)

pytestmark = pytest.mark.integration


class Loader(threading.Thread):
    """One device hammering the collector: up to `window` CON POSTs in flight, each one
    event with a unique id, until `limit` are sent, `stop` is set, or `deadline`.

    Records the ids answered 2.01 and a tally of every final code; separate CON
    responses are ACKed. No retransmission: on loopback a request that is not answered
    was not read, and this test is about what was answered.
    """

    def __init__(
        self, host: str, port: int, *, limit: int, stop: threading.Event, window: int = 8
    ) -> None:
        super().__init__(daemon=True)
        self.client = CoapClient(host, port)
        self.limit = limit
        self.stop = stop
        self.window = window
        self.deadline = time.monotonic() + 30.0
        self.sent = 0
        self.created: list[str] = []
        self.codes: Counter[str] = Counter()
        self.sent_after_stop = 0
        self.stop_sending = threading.Event()
        self.max_age: set[int | None] = set()

    def run(self) -> None:
        outstanding: dict[bytes, str] = {}
        client = self.client
        idle_since = time.monotonic()
        try:
            while time.monotonic() < self.deadline:
                while (
                    not self.stop_sending.is_set()
                    and self.sent < self.limit
                    and len(outstanding) < self.window
                ):
                    ev = event()
                    token = self.sent.to_bytes(4, "big")
                    msg = client.build(
                        Code.POST, "events", json.dumps(ev).encode(), fmt=50, token=token
                    )
                    client.send(coap.encode(msg))
                    outstanding[token] = ev["id"]
                    self.sent += 1
                    if self.stop.is_set():
                        self.sent_after_stop += 1
                if not outstanding and (self.stop_sending.is_set() or self.sent >= self.limit):
                    return
                try:
                    data = client.recv_raw(0.1)
                except OSError:
                    data = None
                if data is None:
                    if self.stop_sending.is_set() and time.monotonic() - idle_since > 1.0:
                        return  # the collector is gone: what is unanswered stays so
                    continue
                idle_since = time.monotonic()
                reply = coap.decode(data)
                if reply.code == Code.EMPTY:
                    continue  # empty ACK: a separate response will follow
                if reply.type == Type.CON:
                    client.ack(reply)
                ev_id = outstanding.pop(reply.token, None)
                if ev_id is None:
                    continue
                self.codes[coap.code_str(reply.code)] += 1
                if reply.code == Code.CREATED:
                    self.created.append(ev_id)
                elif reply.code == Code.SERVICE_UNAVAILABLE:
                    self.max_age.add(reply.uint_option(OptionNumber.MAX_AGE))
        finally:
            client.close()


def test_sigterm_under_load_drains_and_keeps_every_acknowledged_event(
    collector: Callable[..., Collector],
) -> None:
    drain_timeout = 5.0
    server = collector(workers=2, drain_timeout=drain_timeout)
    server.expect_clean_exit = False  # checked here
    stop = threading.Event()
    loaders = [Loader(server.client_host, server.port, limit=1000, stop=stop) for _ in range(4)]
    for loader in loaders:
        loader.start()
    # Let the load build up, then SIGTERM the supervisor in the middle of it.
    deadline = time.monotonic() + 10
    while sum(len(x.created) for x in loaders) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(drain_timeout + 5)  # drain timeout, kill grace, slack
    for loader in loaders:
        loader.stop_sending.set()
    for loader in loaders:
        loader.join(10)
        assert not loader.is_alive()
    assert code == 0, server.stderr_tail()
    assert any(x.sent_after_stop for x in loaders), "the load had ended before SIGTERM"
    created = [i for x in loaders for i in x.created]
    assert len(created) >= 300
    missing = set(created) - ids_stored(server.db, created)
    assert not missing, f"{len(missing)} events answered 2.01 are not in the database"
    codes = sum((x.codes for x in loaders), Counter())
    # Requests that arrive while draining are told to come back later (5.03 with
    # Max-Age); nothing else but 2.01 is answered.
    assert set(codes) <= {"2.01", "5.03"}, codes
    max_ages = {m for x in loaders for m in x.max_age}
    assert None not in max_ages
    assert any(line.get("msg") == "stopped" for line in server.log_lines())


def test_killed_worker_is_replaced_and_service_continues(
    collector: Callable[..., Collector],
) -> None:
    server = collector(workers=2)
    before = server.workers()
    assert len(before) == 2, before
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    # Requests from many source ports, sent at once: some hash to the dead worker's
    # socket, which the supervisor keeps open, so they wait for the replacement.
    clients = [server.client() for _ in range(24)]
    evs = [event() for _ in clients]
    try:
        msgs = []
        for client, ev in zip(clients, evs, strict=True):
            msg = client.build(Code.POST, "events", json.dumps(ev).encode(), fmt=50)
            client.send(coap.encode(msg))
            msgs.append(msg)
        for client, msg in zip(clients, msgs, strict=True):
            assert client.transact(msg, timeout=10).code == Code.CREATED
    finally:
        for client in clients:
            client.close()
    after = server.workers()
    assert len(after) == 2 and victim not in after, (before, after)
    assert before[1] in after  # the other worker was left alone
    assert len(ids_stored(server.db, [e["id"] for e in evs])) == len(evs)
    died = [x for x in server.log_lines() if x.get("msg") == "worker died; restarting"]
    assert [x["pid"] for x in died] == [victim]


def test_overload_gets_503_with_max_age_and_loses_nothing_acknowledged(
    collector: Callable[..., Collector],
) -> None:
    server = collector(workers=1, max_pending=20, ack_delay=0.2)
    taken = 20 - 20 // PENDING_RESERVE
    worker = server.workers()[0]
    rss_before = rss_kib(worker)
    stop = threading.Event()
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the store cannot keep up: it takes nothing
        loaders = [
            Loader(server.client_host, server.port, limit=150, stop=stop, window=150)
            for _ in range(8)
        ]
        for loader in loaders:
            loader.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            refused = sum(x.codes["5.03"] for x in loaders)
            if refused >= 8 * 150 - taken:
                break
            time.sleep(0.02)
        # At once, while the store is still locked: one address (every loader here)
        # takes max-pending less the reserve kept for other devices; the rest is 5.03.
        created_early = sum(len(x.created) for x in loaders)
        refused = sum(x.codes["5.03"] for x in loaders)
        rss_during = rss_kib(worker)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for loader in loaders:
        loader.stop_sending.set()
        loader.join(15)
        assert not loader.is_alive()
    assert created_early == 0
    assert refused == 8 * 150 - taken
    codes = sum((x.codes for x in loaders), Counter())
    assert codes == Counter({"5.03": 8 * 150 - taken, "2.01": taken}), codes
    # MAX_AGE_OVERLOADED (1 s), jittered up to twice that so a fleet does not retry
    # in lock-step.
    assert set().union(*(x.max_age for x in loaders)) <= {1, 2}
    created = [i for x in loaders for i in x.created]
    assert len(ids_stored(server.db, created)) == taken
    assert row_count(server.db) == taken  # nothing refused was stored
    assert rss_during - rss_before < 64 * 1024, (rss_before, rss_during)
    assert rss_kib(worker) < 256 * 1024


# --- exit codes -------------------------------------------------------------------


def assert_one_line(text: str) -> str:
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "word"),
    [
        (["--workers", "0"], {}, "--workers"),
        (["--port", "70000"], {}, "--port"),
        (["--ack-delay", "5"], {}, "--ack-delay"),
        (["--batch-ms", "nan"], {}, "--batch-ms"),
        ([], {"COLLECTOR_BATCH_MAX": "abc"}, "COLLECTOR_BATCH_MAX"),
        ([], {"COLLECTOR_SINK": "bogus"}, "COLLECTOR_SINK"),
        ([], {"COLLECTOR_ACCESS_LOG": "maybe"}, "COLLECTOR_ACCESS_LOG"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], word: str
) -> None:
    result = run_cli(
        ["serve", "--sqlite-path", str(tmp_path / "e.db"), "--metrics-port", "0", *args], env
    )
    assert result.returncode == 2, result.stderr
    assert word in assert_one_line(result.stderr)
    assert not (tmp_path / "e.db").exists()  # nothing was started


@pytest.mark.parametrize("args", [["--sink", "bogus"], ["--bogus", "1"], ["--log-level", "loud"]])
def test_bad_flag_exits_2_with_one_line(args: list[str]) -> None:
    result = run_cli(["serve", *args])
    assert result.returncode == 2
    assert_one_line(result.stderr)


def test_unreachable_elasticsearch_exits_3_with_one_line(tmp_path: Path) -> None:
    closed = free_tcp_port()
    result = run_cli(
        [
            "serve",
            "--sink",
            "elasticsearch",
            "--es-url",
            f"http://127.0.0.1:{closed}",
            "--store-wait",
            "0.5",
            "--metrics-port",
            "0",
            "--port",
            "0",
        ]
    )
    assert result.returncode == 3, result.stderr
    assert "unavailable" in assert_one_line(result.stderr)


def test_sqlite_path_under_a_file_exits_2_with_one_line(tmp_path: Path) -> None:
    """A configuration error, named by its flag (it was exit 3 with "[Errno 17]")."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli(
        ["serve", "--sqlite-path", str(blocker / "e.db"), "--metrics-port", "0", "--port", "0"]
    )
    assert result.returncode == 2, result.stderr
    assert "--sqlite-path" in assert_one_line(result.stderr)


def test_port_taken_without_reuseport_exits_4_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli(
            [
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
                "--sqlite-path",
                str(tmp_path / "e.db"),
                "--metrics-port",
                "0",
            ]
        )
    assert result.returncode == 4, result.stderr
    assert str(port) in assert_one_line(result.stderr)


def test_metrics_port_taken_exits_4_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            [
                "serve",
                "--port",
                "0",
                "--workers",
                "1",
                "--sqlite-path",
                str(tmp_path / "e.db"),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            ]
        )
    assert result.returncode == 4, result.stderr
    assert str(port) in assert_one_line(result.stderr)


# --- IPv6 and dual stack -------------------------------------------------------------


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dual_stack_answers_ipv6_and_ipv4(collector: Callable[..., Collector]) -> None:
    server = collector(host="::", workers=2)
    sources = {}
    for host in ("::1", "127.0.0.1"):
        with CoapClient(host, server.port) as client:
            ev = event()
            assert client.post_events(ev).code == Code.CREATED
            assert client.request(Code.GET, "health").code == Code.CONTENT
            sources[host] = (ev["id"], client.port)
    for host, (ev_id, port) in sources.items():
        (row,) = rows(server.db, "client_id = ?", (ev_id,))
        # IPv4 arrives IPv4-mapped on a dual-stack socket: [::ffff:127.0.0.1]:port
        assert row["source"].startswith("[") and row["source"].endswith(f"]:{port}")
        assert host in row["source"]


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_only_host(collector: Callable[..., Collector]) -> None:
    server = collector(host="::1")
    with CoapClient("::1", server.port) as client:
        assert client.post_events(event()).code == Code.CREATED


# --- regressions ---------------------------------------------------------------------


def test_metrics_off_ignores_a_missing_multiproc_dir(tmp_path: Path) -> None:
    """With --metrics-port 0 nothing should depend on PROMETHEUS_MULTIPROC_DIR; a
    value pointing at a missing directory made every worker crash at start, forever."""
    server = start_collector(
        tmp_path,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")},
        metrics_port=0,
        start_timeout=5,
    )
    try:
        with server.client() as client:
            assert client.post_events(event()).code == Code.CREATED
    finally:
        assert server.terminate() == 0


# --- store failures and shutdown edge cases --------------------------------------------


def test_store_failure_gets_503_with_max_age_and_health_says_so(
    collector: Callable[..., Collector],
) -> None:
    """A write lock held past SQLite's busy timeout (5 s) fails the batch: the device
    gets 5.03 with Max-Age, nothing is stored, /health and /storez report the store down
    (/readyz stays 200: the replica still answers devices),
    and a write after the lock is gone succeeds again."""
    metrics_port = free_tcp_port()
    server = collector(metrics_host="127.0.0.1", metrics_port=metrics_port, ack_delay=0.2)
    ev = event()
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with server.client() as client:
            reply = client.post_events(ev, timeout=15)
            assert reply.code == Code.SERVICE_UNAVAILABLE, reply
            assert reply.type == Type.CON  # separate: the store took longer than ack-delay
            assert (reply.uint_option(OptionNumber.MAX_AGE) or 0) >= 1
            assert b"sqlite" in reply.payload
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 0
    # The failed write marks the store down for a while: /health and /storez say so.
    deadline = time.monotonic() + 5
    with server.client() as client:
        while True:
            health = client.request(Code.GET, "health")
            if health.code != Code.CONTENT or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert health.code == Code.SERVICE_UNAVAILABLE
    assert health.uint_option(OptionNumber.MAX_AGE) is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/storez", timeout=5):
            ready = 200
    except urllib.error.HTTPError as exc:
        ready = exc.code
        exc.close()
    assert ready == 503
    with server.client() as client:
        assert client.post_events(ev).code == Code.CREATED  # the device's retry works
    assert row_count(server.db, "client_id = ?", (ev["id"],)) == 1


def test_sigint_drains_cleanly(collector: Callable[..., Collector]) -> None:
    server = collector(workers=2)
    with server.client() as client:
        assert client.post_events(event()).code == Code.CREATED
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(15) == 0, server.stderr_tail()
    assert server.workers() == []


def test_second_signal_forces_exit(collector: Callable[..., Collector]) -> None:
    server = collector(drain_timeout=30)
    server.expect_clean_exit = False
    workers = server.workers()
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with server.client() as client:
            msg = client.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            client.send(coap.encode(msg))
            time.sleep(0.3)  # the event now waits on the lock: the drain cannot finish
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert server.proc.poll() is None, "exited although an event was pending"
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(10)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert code == 1
    assert "killed" in server.stderr().strip().splitlines()[-1]
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )


def test_drain_timeout_exceeded_exits_1(collector: Callable[..., Collector]) -> None:
    server = collector(drain_timeout=0.5)
    server.expect_clean_exit = False
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with server.client() as client:
            msg = client.build(Code.POST, "events", json.dumps(event()).encode(), fmt=50)
            client.send(coap.encode(msg))
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(15)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert code == 1, server.stderr_tail()
    last = server.stderr().strip().splitlines()[-1]
    assert last.startswith("iot-collector:"), last


def test_environment_twins_and_flags_win(collector: Callable[..., Collector]) -> None:
    server = collector(
        workers=None,
        max_body=300,
        log_level="info",
        env={"COLLECTOR_WORKERS": "3", "COLLECTOR_MAX_BODY": "200", "COLLECTOR_LOG_LEVEL": "error"},
    )
    assert len(server.workers()) == 3  # from the environment
    with server.client() as client:
        ev = event(payload={"type": "blob", "value": "x" * 400})
        reply = client.post_events(ev)
        assert reply.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert reply.uint_option(OptionNumber.SIZE1) == 300  # the flag beat the variable
    # --log-level info beat COLLECTOR_LOG_LEVEL=error: the info lines are there
    assert any(line.get("msg") == "serving" for line in server.log_lines())


def test_sigterm_during_startup_exits_cleanly(tmp_path: Path) -> None:
    for attempt in range(2):
        server = start_collector(tmp_path / str(attempt), workers=2, wait=False, drain_timeout=3)
        try:
            deadline = time.monotonic() + 15
            while len(server.workers()) < 2 and time.monotonic() < deadline:
                time.sleep(0.002)
            server.proc.send_signal(signal.SIGTERM)  # workers forked, maybe not serving yet
            code = server.proc.wait(15)
        finally:
            server.kill()
        assert code == 0, server.stderr_tail()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_exit_when_the_supervisor_is_killed(collector: Callable[..., Collector]) -> None:
    server = collector(workers=2)
    server.expect_clean_exit = False
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    try:
        deadline = time.monotonic() + 5
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "orphaned workers still running"
    finally:
        for pid in workers:  # ours: the orphans of the collector this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_worker_killed_mid_write_loses_nothing_and_duplicates_nothing(
    collector: Callable[..., Collector],
) -> None:
    """A worker dies (kill -9) while its batch waits on the store: the device, never
    answered, retransmits; the replacement stores the event once, with or without a
    client id (the content id covers the source and the Message ID)."""
    server = collector(workers=1, ack_delay=1.5)
    victim = server.workers()[0]
    origin = f"mid-{uuid.uuid4().hex[:10]}"
    evs = [event(origin=origin), event(origin=origin, id=None)]
    with server.client() as client:
        msg = client.build(Code.POST, "events", json.dumps(evs).encode(), fmt=50)
        lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            client.send(coap.encode(msg))
            time.sleep(0.3)  # the batch is now waiting on the lock, in the worker
            assert client.recv_raw(0.01) is None
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.3)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        reply = client.transact(msg, timeout=15)  # the device's retransmission
        assert reply.code == Code.CREATED
    assert victim not in server.workers()
    assert row_count(server.db, "origin = ?", (origin,)) == 2


def test_sqlite3_cli_reads_while_the_collector_writes(collector: Callable[..., Collector]) -> None:
    """The database is safe to read with the `sqlite3` CLI under load (WAL): no
    'database is locked', and the count only grows."""
    import shutil
    import subprocess

    cli = shutil.which("sqlite3")
    if cli is None:
        pytest.skip("sqlite3 CLI not installed")
    server = collector(workers=2)
    stop = threading.Event()
    loaders = [Loader(server.client_host, server.port, limit=400, stop=stop) for _ in range(2)]
    for loader in loaders:
        loader.start()
    counts = []
    try:
        for _ in range(8):
            result = subprocess.run(
                [cli, "-readonly", str(server.db), "SELECT count(*) FROM events"],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            assert result.returncode == 0 and not result.stderr, result.stderr
            counts.append(int(result.stdout))
            time.sleep(0.05)
    finally:
        for loader in loaders:
            loader.stop_sending.set()
        for loader in loaders:
            loader.join(10)
    assert counts == sorted(counts) and counts[-1] > 0, counts


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_the_store_check_ends_start_up_with_one_line(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Before the supervisor owns the signals (here: an Elasticsearch that accepts the
    connection and never answers), SIGTERM/SIGINT end start-up cleanly: exit 0 and one
    line, not death by signal (143) or a traceback."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        hung.settimeout(20)
        server = start_collector(
            tmp_path,
            wait=False,
            sink="elasticsearch",
            es_url=f"http://127.0.0.1:{hung.getsockname()[1]}",
        )
        try:
            conn, _ = hung.accept()  # the store check is now waiting for an answer
            with conn:
                time.sleep(0.2)
                server.proc.send_signal(sig)
                code = server.proc.wait(10)
        finally:
            server.kill()
    lines = server.stderr().strip().splitlines()
    assert code == 0, server.stderr_tail()
    assert lines[-1] == f"iot-collector: stopped by {sig.name} before serving"
    assert "Traceback" not in server.stderr()
