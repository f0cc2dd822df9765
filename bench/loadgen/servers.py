"""The servers a benchmark starts: peers, collector replicas, and where they listen.

Every process started here is remembered by PID and stopped (SIGTERM, then SIGKILL)
by :meth:`Fleet.stop`, which also runs at exit and on SIGTERM/SIGINT of the
generator, so an interrupted benchmark leaves no server, cgroup, network namespace
or nftables table behind. Readiness is judged over CoAP (a GET /health that gets
any 2.xx answer), never by a sleep; the same probe measures start-up time (exec to
the first 2.05).

Over DTLS (a :class:`loadgen.dtls.Psk` given): the collector gets a PSK file with
that identity (namespace ``default``, sender ``bench``) in its temporary directory and
serves coaps on a second free port beside plain CoAP (``--plain on``, so one process
answers both and ``Fleet.ports`` names them); ``scandium`` is the Californium
peer (``peers/californium``) serving coaps through Californium's DTLS connector,
Scandium, with the key in its environment. A DTLS server is ready when a handshake
completes.

Replicas behind one address, two ways:

* ``reuseport`` (default): N ``iot-collector serve --workers 1`` processes on the
  same host and port; the collector binds with SO_REUSEPORT, so the kernel spreads
  flows (by source address and port) over the N sockets.
* ``netns``: each replica in its own network namespace with its own IP on a veth
  pair into a host bridge, and a virtual IP whose new flows are DNATed round-robin
  to the replicas by an nftables ``numgen inc mod N`` map: what kube-proxy's
  nftables mode does for a Service. Needs root, ``ip`` and ``nft``. Addresses come
  from 169.254.0.0/16 link-local space inside this host only (no traffic leaves).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import dtls, native, wire

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
PEERS = ("echo", "echo-c", "aiocoap", "node-coap", "californium")
DTLS_PEERS = ("scandium",)  # coaps only: needs a PSK
# The Californium peer's JVM, as bench/peers/README.md explains: a fixed 1 GiB heap
# (no resizing during a run; the bounded deduplicator needs far less) and G1, the
# collector Californium's own benchmark instructions use, for short pauses.
CALIFORNIUM_JVM = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC")
# Every peer asks for the receive buffer the collector and the echo peer ask for.
PEER_RCVBUF = 4 << 20
PLAIN_SERVERS = ("collector", *PEERS)
SERVERS = (*PLAIN_SERVERS, *DTLS_PEERS)


class ServerError(RuntimeError):
    """A server could not be started or did not become ready; the message says why."""


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def collector_executable() -> str:
    """The ``iot-collector`` script next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "iot-collector"
    if here.exists():
        return str(here)
    found = shutil.which("iot-collector")
    if found is None:
        raise ServerError("iot-collector is not installed (run `make setup`)")
    return found


def probe(
    host: str, port: int, deadline: float, path: str = "/health", interval: float = 0.005
) -> int | None:
    """Send CON GET ``path`` every ``interval`` s until any response or ``deadline``.

    Returns the response code byte, or None if nothing answered in time.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.settimeout(interval)
        mid = random.getrandbits(16)
        token = random.getrandbits(32).to_bytes(4, "big")
        req = wire.health_request(mid, token) if path == "/health" else b""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                s.send(req)
            try:
                data = s.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            except OSError:
                time.sleep(interval)
                continue
            if len(data) >= 4 and data[2:4] == mid.to_bytes(2, "big"):
                if data[1] == 0:  # empty ACK: wait for the separate response
                    continue
                return int(data[1])
            if len(data) >= 8 and data[4:8] == token:
                return int(data[1])
    return None


def wait_ready(
    host: str,
    port: int,
    proc: subprocess.Popen[bytes],
    timeout: float,
    psk: dtls.Psk | None = None,
) -> float:
    """Probe until a 2.xx answer (with ``psk``: until a DTLS handshake completes);
    return the time it came. Raises ServerError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = b""
            if proc.stderr is not None:
                with contextlib.suppress(OSError, ValueError):
                    err = proc.stderr.read() or b""
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServerError(f"server exited with {proc.returncode}: {tail[0]}")
        if psk is not None:
            if dtls.probe(host, port, psk, min(deadline, time.monotonic() + 1.0)):
                return time.monotonic()
            continue
        code = probe(host, port, min(deadline, time.monotonic() + 0.25))
        if code is not None and code >> 5 == 2:
            return time.monotonic()
    what = "complete a DTLS handshake" if psk is not None else "answer GET /health"
    raise ServerError(f"server on {host}:{port} did not {what} in {timeout:.0f} s")


# --- cgroup CPU limits (v2 cpu.max or v1 cpu.cfs_quota_us) -----------------------------


def _cgroup_root() -> tuple[Path, str] | None:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "cpu" in v2.read_text().split():
        return Path("/sys/fs/cgroup"), "v2"
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cgroup.procs").exists():
        return v1, "v1"
    return None


@dataclass
class CpuLimit:
    """A cgroup holding one replica to ``cpus`` CPUs of quota."""

    cpus: float
    path: Path | None = None

    def create(self, name: str) -> Path:
        found = _cgroup_root()
        if found is None:
            raise ServerError("--cpu-limit needs a writable cgroup cpu controller")
        root, version = found
        path = root / name
        try:
            path.mkdir(exist_ok=True)
            period = 100_000
            quota = max(1000, int(self.cpus * period))
            if version == "v2":
                (path / "cpu.max").write_text(f"{quota} {period}")
            else:
                (path / "cpu.cfs_period_us").write_text(str(period))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as exc:
            raise ServerError(f"--cpu-limit: cannot set up cgroup {path}: {exc}") from exc
        self.path = path
        return path

    def remove(self) -> None:
        if self.path is None:
            return
        procs = self.path / "cgroup.procs"
        for _ in range(50):
            try:
                if not procs.read_text().strip():
                    break
            except OSError:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.path.rmdir()
        self.path = None


# --- processes -------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    limit: CpuLimit | None = None


@dataclass
class Fleet:
    """The servers of one configuration; stop() ends every process it started."""

    procs: list[Proc] = field(default_factory=list)
    netns: NetnsService | None = None
    tmpdir: str | None = None
    ports: dict[str, int] = field(default_factory=dict)  # "coap", "coaps": where it listens

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpu_limit: float | None = None,
        netns: str | None = None,
        cwd: Path | None = None,
        cpus: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> Proc:
        limit = None
        cmd = list(argv)
        if cpus:
            # pinned before exec, so forked workers and JVM threads inherit the set
            cmd = ["taskset", "-c", ",".join(str(c) for c in cpus), *cmd]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        if cpu_limit:
            limit = CpuLimit(cpu_limit)
            path = limit.create(f"iotbench-{os.getpid()}-{len(self.procs)}")
            # join the cgroup before exec, so the server's forked workers inherit it
            cmd = ["sh", "-c", f'echo $$ > "{path}/cgroup.procs" && exec "$@"', "sh", *cmd]
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=str(cwd or REPO),
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        except OSError as exc:
            if limit:
                limit.remove()
            raise ServerError(f"cannot start {name}: {exc}") from exc
        proc = Proc(name, popen, limit)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every live process of this fleet: the started ones and their descendants."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry)] = int(fields[1])
        tree = {p.popen.pid for p in self.procs if p.popen.poll() is None}
        grew = True
        while grew:
            kids = {pid for pid, ppid in parents.items() if ppid in tree} - tree
            grew = bool(kids)
            tree |= kids
        return sorted(tree)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the fleet's live processes (clock ticks)."""
        hz = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / hz

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()
            if p.popen.stderr is not None:
                p.popen.stderr.close()
            if p.limit:
                p.limit.remove()
        self.procs.clear()
        if self.netns is not None:
            self.netns.teardown()
            self.netns = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


_LIVE: list[Fleet] = []


def _stop_all() -> None:
    while _LIVE:
        _LIVE.pop().stop()


def _on_signal(signum: int, _frame: object) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every fleet at exit and on SIGTERM/SIGINT (main process only)."""
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


# --- commands for each server ----------------------------------------------------------


@dataclass(frozen=True)
class CollectorOptions:
    workers: int = 1
    sink: str = "null"
    es_url: str = ""
    extra: tuple[str, ...] = ()


def collector_argv(
    host: str, port: int, opts: CollectorOptions, sqlite_path: str = ""
) -> list[str]:
    argv = [
        collector_executable(),
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(opts.workers),
        "--sink",
        opts.sink,
        "--metrics-port",
        "0",
        "--share-port",  # reuseport replicas join one port on purpose (issue 14)
        # warnings and errors only: at info a DTLS session logs its opening and closing,
        # thousands a second in the handshake runs, into a pipe nobody reads
        "--log-level",
        "warning",
    ]
    if opts.sink == "elasticsearch" and opts.es_url:
        argv += ["--es-url", opts.es_url]
    if opts.sink == "sqlite" and sqlite_path:
        argv += ["--sqlite-path", sqlite_path]
    return argv + list(opts.extra)


def californium_jar(build: bool = True) -> Path:
    """The Californium peer jar, built with ``mvn -q package`` on first use."""
    d = PEERS_DIR / "californium"
    jar = d / "target" / "cf-peer.jar"
    sources = [*d.glob("src/**/*.java"), d / "pom.xml"]
    fresh = jar.exists() and all(p.stat().st_mtime <= jar.stat().st_mtime for p in sources)
    if fresh or not build:
        return jar
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise ServerError("californium peer needs java and mvn")
    print("building the Californium peer (mvn -q package, first use only)...", file=sys.stderr)
    r = subprocess.run(["mvn", "-q", "package"], cwd=d, capture_output=True, timeout=600)
    if r.returncode != 0 or not jar.exists():
        tail = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-1:]
        raise ServerError(f"mvn package failed: {tail[0] if tail else r.returncode}")
    return jar


def node_ready() -> None:
    d = PEERS_DIR / "node"
    if shutil.which("node") is None:
        raise ServerError("node-coap peer needs node")
    if not (d / "node_modules" / "coap").exists():
        if shutil.which("npm") is None:
            raise ServerError("node-coap peer needs `npm install` in bench/peers/node")
        r = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund"],
            cwd=d,
            capture_output=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise ServerError("npm install failed in bench/peers/node")


def peer_argv(name: str, host: str, port: int, psk: dtls.Psk | None = None) -> list[str]:
    """The command line of peer ``name``; raises ServerError if it cannot run here."""
    hp = ["--host", host, "--port", str(port)]
    buf = ["--rcvbuf", str(PEER_RCVBUF)]
    if name == "echo":
        return [sys.executable, str(PEERS_DIR / "echo.py"), *hp]
    if name == "echo-c":
        try:
            return [str(native.build(native.ECHO_SOURCE, shared=False)), *hp, *buf]
        except native.NativeError as exc:
            raise ServerError(f"echo-c: {exc}") from None
    if name == "aiocoap":
        return [sys.executable, str(PEERS_DIR / "aiocoap_server.py"), *hp, *buf]
    if name == "node-coap":
        node_ready()
        return ["node", str(PEERS_DIR / "node" / "server.js"), *hp, *buf]
    if name == "californium":
        jar = californium_jar()
        return ["java", *CALIFORNIUM_JVM, "-jar", str(jar), *hp]
    if name == "scandium":
        if psk is None:
            raise ServerError("the scandium peer speaks coaps only: it needs a PSK")
        jar = californium_jar()
        return ["java", *CALIFORNIUM_JVM, "-jar", str(jar), *hp, "--psk-identity", psk.identity]
    raise ServerError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")


def peer_available(name: str) -> str | None:
    """None when peer ``name`` can run here, else why not."""
    try:
        if name == "node-coap":
            node_ready()
        elif name in ("californium", "scandium"):
            californium_jar()
        elif name == "echo-c":
            native.build(native.ECHO_SOURCE, shared=False)
        elif name == "aiocoap":
            import aiocoap  # noqa: F401
    except (ServerError, ImportError, subprocess.TimeoutExpired, native.NativeError) as exc:
        return str(exc)
    return None


def collector_quota(cpu_limit: float | None, workers: int) -> float | None:
    """A collector's cgroup quota: `cpu_limit` per worker. So N workers get N times one
    worker's CPU, and `--workers 1,2 --cpu-limit 0.45` shows how workers scale on a
    machine with fewer free cores than workers."""
    return cpu_limit * workers if cpu_limit else None


def start_server(
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    collector: CollectorOptions | None = None,
    replicas: int = 1,
    mode: str = "reuseport",
    cpu_limit: float | None = None,
    ready_timeout: float = 60.0,
    cpus: Sequence[int] = (),
    psk: dtls.Psk | None = None,
) -> tuple[Fleet, str, int]:
    """Start server ``name`` (``replicas`` copies for the collector); return (fleet, host,
    port). With ``psk`` the port is the coaps one (see the module docstring).

    Raises ServerError with a one-line reason when it cannot.
    """
    fleet = Fleet()
    _LIVE.append(fleet)
    try:
        if mode == "netns" and name == "collector":
            ns = NetnsService(replicas)
            fleet.netns = ns
            ns.setup()
            port = port or 5683
            opts = collector or CollectorOptions()
            quota = collector_quota(cpu_limit, opts.workers)
            fleet.tmpdir = tempfile.mkdtemp(prefix="iotbench-")
            for i, (nsname, ip) in enumerate(zip(ns.namespaces, ns.replica_ips, strict=True)):
                argv = collector_argv(ip, port, opts, f"{fleet.tmpdir}/replica-{i}.db")
                proc = fleet.start(f"collector-{i}", argv, quota, netns=nsname, cpus=cpus)
                # probe each replica directly from the host, then the virtual IP
                wait_ready(ip, port, proc.popen, ready_timeout)
            ns.add_service(port)
            return fleet, ns.vip, port
        port = port or free_udp_port(host)
        fleet.ports["coaps" if name in DTLS_PEERS else "coap"] = port
        if name == "collector":
            opts = collector or CollectorOptions()
            fleet.tmpdir = tempfile.mkdtemp(prefix="iotbench-")
            if psk is not None:
                fleet.ports["coaps"] = free_udp_port(host)
                opts = CollectorOptions(
                    opts.workers,
                    opts.sink,
                    opts.es_url,
                    (*opts.extra, *_coaps_args(fleet.tmpdir, fleet.ports["coaps"], psk)),
                )
            quota = collector_quota(cpu_limit, opts.workers)
            for i in range(replicas):
                argv = collector_argv(host, port, opts, f"{fleet.tmpdir}/replica-{i}.db")
                fleet.start(f"collector-{i}", argv, quota, cpus=cpus)
        else:
            # the DTLS peer's key travels in its environment, not on its command line
            env = {"CF_PEER_PSK_KEY_HEX": psk.key.hex()} if psk is not None else None
            fleet.start(name, peer_argv(name, host, port, psk), cpu_limit, cpus=cpus, env=env)
        for p in fleet.procs:
            if "coap" in fleet.ports:
                wait_ready(host, port, p.popen, ready_timeout)
            if psk is not None:
                wait_ready(host, fleet.ports["coaps"], p.popen, ready_timeout, psk)
        return fleet, host, fleet.ports["coaps"] if psk is not None else port
    except BaseException:
        fleet.stop()
        _LIVE.remove(fleet)
        raise


def _coaps_args(tmpdir: str, port: int, psk: dtls.Psk) -> list[str]:
    """The collector's coaps flags, with a PSK file naming ``psk`` (and plain kept on)."""
    path = Path(tmpdir) / "psk.json"
    entry = {"identity": psk.identity, "key_hex": psk.key.hex(), "namespace": "default",
             "sender": wire.SENDER}  # fmt: skip
    path.write_text(json.dumps({"identities": [entry]}))
    path.chmod(0o600)
    return [
        "--coaps-port", str(port), "--psk-file", str(path), "--plain", "on",
        # the handshake-rate run opens thousands of sessions, each closed at once
        "--dtls-max-sessions", "100000",
    ]  # fmt: skip


def stop_fleet(fleet: Fleet) -> None:
    fleet.stop()
    if fleet in _LIVE:
        _LIVE.remove(fleet)


def measure_startup(
    name: str, runs: int, host: str = "127.0.0.1", collector: CollectorOptions | None = None
) -> dict[str, object]:
    """Median time from exec to the first 2.xx answer on GET /health, over ``runs`` starts.

    For the collector that answer is 2.05 (DESIGN.md); for peers it is whatever 2.xx
    the peer gives /health.
    """
    times = []
    for _ in range(runs):
        port = free_udp_port(host)
        argv = (
            collector_argv(host, port, collector or CollectorOptions())
            if name == "collector"
            else peer_argv(name, host, port)
        )
        fleet = Fleet()
        _LIVE.append(fleet)
        try:
            t0 = time.monotonic()
            proc = fleet.start(name, argv)
            t1 = wait_ready(host, port, proc.popen, 60)
            times.append(t1 - t0)
        finally:
            stop_fleet(fleet)
    return {
        "server": name,
        "runs": runs,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "all_s": times,
    }


# --- network namespaces + nftables numgen DNAT (a kube-proxy-like Service) --------------


class NetnsService:
    """N namespaces on a bridge, and a virtual IP DNATed round-robin to them.

    Layout (link-local 169.254.0.0/16, never routed off this host): bridge
    ``ib<tag>`` with 169.254.<x>.1/24 on the host, replica i at 169.254.<x>.(10+i)
    in namespace ``iotbench-<tag>-i`` via a veth pair; the virtual IP
    169.254.<x>.200 is DNATed by table ``ip iotbench_<tag>`` (prerouting for
    packets from other namespaces, output for this host's own sockets): new flows
    pick ``numgen inc mod N`` (conntrack keeps each flow on its replica).
    """

    def __init__(self, replicas: int) -> None:
        if os.geteuid() != 0:
            raise ServerError("--replicas-mode netns needs root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise ServerError(f"--replicas-mode netns needs `{tool}`")
        self.n = replicas
        self.tag = f"{os.getpid() % 100000:05d}{random.randint(0, 9)}"
        x = random.randint(10, 250)
        self.net = f"169.254.{x}"
        self.bridge = f"ib{self.tag}"
        self.table = f"iotbench_{self.tag}"
        self.namespaces = [f"iotbench-{self.tag}-{i}" for i in range(replicas)]
        self.replica_ips = [f"{self.net}.{10 + i}" for i in range(replicas)]
        self.vip = f"{self.net}.200"
        self._done: list[list[str]] = []  # teardown commands, run in reverse

    def _run(self, *argv: str, undo: Sequence[str] | None = None) -> None:
        r = subprocess.run(list(argv), capture_output=True, timeout=30)
        if r.returncode != 0:
            raise ServerError(
                f"{' '.join(argv)}: {r.stderr.decode(errors='replace').strip()[:200]}"
            )
        if undo is not None:
            self._done.append(list(undo))

    def setup(self) -> None:
        try:
            self._run(
                "ip", "link", "add", self.bridge, "type", "bridge",
                undo=["ip", "link", "del", self.bridge],
            )  # fmt: skip
            self._run("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
            self._run("ip", "link", "set", self.bridge, "up")
            for i, (ns, ip) in enumerate(zip(self.namespaces, self.replica_ips, strict=True)):
                host_if, ns_if = f"ih{self.tag}{i}", f"in{self.tag}{i}"
                self._run("ip", "netns", "add", ns, undo=["ip", "netns", "del", ns])
                self._run(
                    "ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
                    undo=["ip", "link", "del", host_if],
                )  # fmt: skip
                self._run("ip", "link", "set", ns_if, "netns", ns)
                self._run("ip", "link", "set", host_if, "master", self.bridge)
                self._run("ip", "link", "set", host_if, "up")
                self._run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ns_if)
                self._run("ip", "-n", ns, "link", "set", ns_if, "up")
                self._run("ip", "-n", ns, "link", "set", "lo", "up")
                self._run("ip", "-n", ns, "route", "add", "default", "via", f"{self.net}.1")
        except BaseException:
            self.teardown()
            raise

    def add_service(self, port: int) -> None:
        """The virtual IP: new UDP flows to vip:port DNAT to replica numgen inc mod N."""
        targets = ", ".join(f"{i} : {ip}" for i, ip in enumerate(self.replica_ips))
        rules = f"""
table ip {self.table} {{
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {self.vip} udp dport {port} dnat to numgen inc mod {self.n} map {{ {targets} }}
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        ip daddr {self.vip} udp dport {port} dnat to numgen inc mod {self.n} map {{ {targets} }}
    }}
}}
"""
        r = subprocess.run(
            ["nft", "-f", "-"], input=rules.encode(), capture_output=True, timeout=30
        )
        if r.returncode != 0:
            raise ServerError(f"nft: {r.stderr.decode(errors='replace').strip()[:200]}")
        self._done.append(["nft", "delete", "table", "ip", self.table])

    def udp_in_datagrams(self) -> list[int]:
        """Per replica namespace: UDP datagrams received so far (/proc/net/snmp Udp InDatagrams)."""
        out = []
        for ns in self.namespaces:
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                capture_output=True,
                timeout=10,
            )
            lines = [ln.split() for ln in r.stdout.decode().splitlines() if ln.startswith("Udp:")]
            value = -1
            if len(lines) >= 2 and "InDatagrams" in lines[0]:
                value = int(lines[1][lines[0].index("InDatagrams")])
            out.append(value)
        return out

    def teardown(self) -> None:
        while self._done:
            cmd = self._done.pop()
            subprocess.run(cmd, capture_output=True, timeout=30)
