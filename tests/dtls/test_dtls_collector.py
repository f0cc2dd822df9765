"""coaps end to end: a real collector, real DTLS peers (libcoap, our client), real files.

One collector serves most cases (module scope would share state between tests, so
each test starts its own and keeps to a few seconds); libcoap's clients exit 0 even
when DTLS fails, so their output is read instead of their exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coap
from coap import Code, Message, Type
from collector.dtls import SessionClosed
from collector.dtls.client import DtlsClientSession
from tests.server.conftest import REPO, free_udp_port, row_count, rows, rss_kib

from .conftest import KEYS, DtlsUdpClient, event_body, have, libcoap, psk_document

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "collector.client"]
BODY = event_body().decode()


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _wait_rows(db: Path, count: int, where: str = "1", timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        try:
            n = row_count(db, where)
        except Exception:  # the table is created by the first write
            n = 0
        if n >= count:
            return n
        time.sleep(0.05)
    return n


@pytest.mark.parametrize("tool", ["coap-client-openssl", "coap-client-gnutls"])
def test_libcoap_right_key_stores_as_the_identity_wrong_key_stores_nothing(
    coaps_collector, tool: str
) -> None:
    if not have(tool):
        pytest.skip(f"{tool} not installed (libcoap3-bin)")
    server, port = coaps_collector()
    uri = f"coaps://127.0.0.1:{port}/events"
    key = KEYS["dev-17"][0]
    out = libcoap(tool, "-m", "post", "-u", "dev-17", "-k", key, "-t", "json", "-e", BODY, uri)
    assert "4." not in out and "5." not in out and "ERR" not in out, out
    assert _wait_rows(server.db, 1) == 1
    [row] = rows(server.db)
    assert (row["sender"], row["namespace"]) == ("dev-17", "lab")
    assert row["identity"] == "dev-17"  # stored as authenticated, and as whom
    # Wrong key, unknown identity: no session, no answer, nothing stored.
    for identity, secret in (("dev-17", "not the key"), ("nobody", key)):
        out = libcoap(
            tool, "-B", "3", "-m", "post", "-u", identity, "-k", secret, "-t", "json", "-e",
            BODY, uri,
        )  # fmt: skip
        assert "2.01" not in out
    time.sleep(0.5)
    assert row_count(server.db) == 1


def test_libcoap_other_sender_is_forbidden(coaps_collector) -> None:
    if not have("coap-client-openssl"):
        pytest.skip("libcoap3-bin not installed")
    server, port = coaps_collector()
    other = event_body("dev-18").decode()
    out = libcoap(
        "coap-client-openssl", "-m", "post", "-u", "dev-17", "-k", KEYS["dev-17"][0],
        "-t", "json", "-e", other, f"coaps://127.0.0.1:{port}/events",
    )  # fmt: skip
    assert "4.03" in out, out
    time.sleep(0.3)
    assert _wait_rows(server.db, 1, timeout=0.5) == 0


def test_our_client_over_coaps_send_and_simulate(coaps_collector) -> None:
    server, port = coaps_collector()
    common = ["-P", str(port), "--psk-identity", "dev-18", "--psk-key", KEYS["dev-18"][0]]
    done = _cli(*common, "-s", "dev-18", "-N", "lab", "send", "temperature", "21.5")
    assert done.returncode == 0, done.stderr
    assert "2.01" in done.stdout
    done = _cli(
        *common, "-s", "dev-18", "-N", "lab", "simulate", "--devices", "3", "--rate", "30",
        "--duration", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _wait_rows(server.db, 10) >= 10
    assert {r["sender"] for r in rows(server.db)} == {"dev-18"}
    health = _cli(*common, "healthcheck")
    assert health.returncode == 0, health.stdout + health.stderr


def test_plain_coap_is_off_with_a_psk_file(coaps_collector) -> None:
    plain = free_udp_port()
    _server, _port = coaps_collector(port=plain)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        ping = coap.encode(Message(Type.CON, Code.EMPTY, 0x1234))
        sock.sendto(ping, ("127.0.0.1", plain))
        with pytest.raises((TimeoutError, ConnectionRefusedError)):
            sock.recv(100)


def test_replayed_record_is_ignored_and_stores_once(coaps_collector) -> None:
    server, port = coaps_collector()
    with DtlsUdpClient(port) as client:
        assert client.handshake()
        reply = client.post(event_body(id="replay-1"))
        assert reply is not None and reply.code == Code.CREATED
        client.sock.send(client.last_record)  # the same record again, byte for byte
        assert client.recv(1.0) is None
    assert row_count(server.db) == 1


def test_spoofed_client_hello_flood_keeps_rss_flat_and_no_sessions(coaps_collector) -> None:
    server, port = coaps_collector(metrics_port=0)
    [worker] = server.workers()
    hello = DtlsClientSession("dev-17", KEYS["dev-17"][0].encode()).start()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        for _ in range(20):  # warm-up: allocator pools settle
            for sock in socks:
                sock.sendto(hello, ("127.0.0.1", port))
        time.sleep(0.5)
        before = rss_kib(worker)
        for _ in range(100):  # 5000 ClientHellos from 50 "spoofed" source ports
            for sock in socks:
                sock.sendto(hello, ("127.0.0.1", port))
        time.sleep(1.0)
        after = rss_kib(worker)
        answers = []
        for sock in socks[:5]:
            sock.settimeout(0.2)
            try:
                answers.append(sock.recv(2000))
            except TimeoutError:
                pass
    finally:
        for sock in socks:
            sock.close()
    assert after - before < 4096, (before, after)  # KiB: no per-peer state
    assert answers and all(len(a) < len(hello) for a in answers)  # HelloVerifyRequests
    # And a real device still gets in.
    with DtlsUdpClient(port) as client:
        assert client.handshake()


def test_session_table_stays_at_its_bound(coaps_collector) -> None:
    _server, port = coaps_collector(dtls_max_sessions=4)
    clients = [DtlsUdpClient(port) for _ in range(8)]
    try:
        opened = [c.handshake(timeout=1.5) for c in clients]
        assert sum(opened) == 4, opened  # the table is full; the rest get no session
        for client, ok in zip(clients, opened, strict=True):
            if ok:  # the four inside keep working
                reply = client.post(event_body())
                assert reply is not None and reply.code == Code.CREATED
    finally:
        for c in clients:
            c.close()


def test_rate_limit_answers_4_29_with_max_age(coaps_collector) -> None:
    server, port = coaps_collector(rate_limit="2:2")
    with DtlsUdpClient(port) as client:
        assert client.handshake()
        codes = []
        for i in range(3):
            reply = client.post(event_body(id=f"rl-{i}"))
            assert reply is not None
            codes.append(reply.code)
            if reply.code == Code.TOO_MANY_REQUESTS:
                assert coap.decode_uint(reply.option(coap.OptionNumber.MAX_AGE) or b"") >= 1
        assert codes == [Code.CREATED, Code.CREATED, Code.TOO_MANY_REQUESTS]
    assert row_count(server.db) == 2


def test_sighup_adds_and_removes_identities(coaps_collector) -> None:
    server, port = coaps_collector()
    with DtlsUdpClient(port, "dev-17") as old:
        assert old.handshake()
        psk = Path(server.flags["psk_file"])
        new_keys = {"dev-18": KEYS["dev-18"], "dev-19": ("a text key for dev-19", "lab", "dev-19")}
        psk.write_text(psk_document(new_keys))
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(line.get("msg") == "psk file reloaded" for line in server.log_lines()):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(server.stderr_tail())
        # dev-17's open session was closed: a close_notify came, or its records go unanswered.
        with pytest.raises(SessionClosed):
            old.post(event_body(), timeout=2.0)
    with DtlsUdpClient(port, "dev-19", new_keys["dev-19"][0]) as added:
        assert added.handshake()
        reply = added.post(event_body("dev-19"))
        assert reply is not None and reply.code == Code.CREATED
    with DtlsUdpClient(port, "dev-17") as removed:
        assert not removed.handshake(timeout=3.0)
    assert server.proc.poll() is None
    key = KEYS["dev-17"][0]
    assert key not in server.stderr() and new_keys["dev-19"][0] not in server.stderr()


def test_kill_9_of_a_worker_clients_rehandshake_and_nothing_acked_is_lost(
    coaps_collector,
) -> None:
    server, port = coaps_collector(workers=1)
    script = f"""
import asyncio, json, os, sys
from collector.client import dtls
from collector.client.endpoint import ClientEndpoint
from coap import Code
async def main():
    ep = await dtls.connect("127.0.0.1", {port}, "dev-17", {KEYS["dev-17"][0]!r}.encode())
    acked = []
    for i in range(16):
        if i == 6:
            print("KILL", flush=True)
            sys.stdin.readline()
        body = json.dumps({{"sender": "dev-17", "origin": "p", "id": f"k-{{i}}",
                           "payload": {{"type": "t", "value": i}}}}).encode()
        r = await ep.request(Code.POST, "events", payload=body, content_format=50)
        if r.code == Code.CREATED:
            acked.append(f"k-{{i}}")
    print(json.dumps(acked), flush=True)
asyncio.run(main())
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "KILL"
        [worker] = server.workers()
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and server.workers() in ([], [worker]):
            time.sleep(0.1)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip(), err + server.stderr_tail(20)
    acked = json.loads(out.strip().splitlines()[-1])
    assert len(acked) == 16, err  # the client re-handshook with the new worker
    stored = {r["client_id"] for r in rows(server.db)}  # the device's ids (scoped in "id")
    assert set(acked) <= stored


@settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(datagram=st.binary(min_size=0, max_size=200) | st.builds(
    lambda cut, junk: _HELLO[:cut] + junk, st.integers(0, 120), st.binary(max_size=40)
))  # fmt: skip
def _arbitrary(datagram: bytes, port: int, answers: list[tuple[int, int]]) -> None:
    # A socket (a source port) of its own for each datagram: an answer that comes
    # late, on a loaded machine, cannot be taken for the next datagram's.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(datagram, ("127.0.0.1", port))
        sock.settimeout(0.05)
        try:
            while True:
                answers.append((len(datagram), len(sock.recv(70000))))
        except TimeoutError:
            pass


_HELLO = DtlsClientSession("dev-17", KEYS["dev-17"][0].encode()).start()


def test_arbitrary_datagrams_never_kill_a_worker_nor_draw_a_larger_answer(
    coaps_collector,
) -> None:
    server, port = coaps_collector()
    [worker] = server.workers()
    answers: list[tuple[int, int]] = []
    _arbitrary(port=port, answers=answers)  # type: ignore[call-arg]
    assert server.workers() == [worker]
    assert answers, "no datagram drew an answer: nothing was compared"
    assert all(answer <= asked for asked, answer in answers), answers
    with DtlsUdpClient(port) as client:
        assert client.handshake()


SCANDIUM_JAR = REPO / "bench" / "peers" / "scandium" / "target" / "sc-peer.jar"


@pytest.mark.skipif(not SCANDIUM_JAR.exists(), reason="Scandium peer not built (make setup)")
def test_scandium_client_posts_over_coaps(coaps_collector) -> None:
    server, port = coaps_collector()
    done = subprocess.run(
        ["java", "-jar", str(SCANDIUM_JAR), "client", f"coaps://127.0.0.1:{port}/events",
         "dev-17", KEYS["dev-17"][0], BODY],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.startswith("2.01"), done.stdout + done.stderr
    assert row_count(server.db) == 1


def test_dtls_metrics_count_handshakes_sessions_rejections_and_4_29(coaps_collector) -> None:
    import urllib.request

    from tests.server.conftest import free_tcp_port

    metrics_port = free_tcp_port()
    _server, port = coaps_collector(
        metrics_host="127.0.0.1", metrics_port=metrics_port, rate_limit="1:1"
    )
    with DtlsUdpClient(port) as good, DtlsUdpClient(port, "dev-17", "wrong key!!") as bad:
        assert good.handshake()
        assert not bad.handshake(timeout=2.0)
        assert (good.post(event_body()) or Message(Type.ACK, 0, 0)).code == Code.CREATED
        assert (good.post(event_body()) or Message(Type.ACK, 0, 0)).code == Code.TOO_MANY_REQUESTS
        want = (
            'iot_collector_dtls_handshakes_total{outcome="ok"} 1.0',
            'iot_collector_auth_rejections_total{reason="bad_key"} 1.0',
            'iot_collector_dtls_sessions{worker="0"} 1.0',
            "iot_collector_rate_limited_total 1.0",
        )
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            if all(line in text for line in want):
                break
            time.sleep(0.3)
        missing = [line for line in want if line not in text]
        assert not missing, "\n".join(
            line for line in text.splitlines() if "dtls" in line or "auth" in line or "rate" in line
        )
