"""The generator over coaps: DTLS sessions per device, records both ways, handshake runs.

Unit tests run the generator's loops in this process against a DTLS responder in a
thread (the collector's own sans-I/O `DtlsServer` on a real loopback socket, scripted
to answer or misbehave); the integration tests run bench/loadtest.py against a real
collector started with a PSK file, and --dtls-compare end to end. Nothing here
asserts a speed: only that every request is counted once and where it should be.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from loadgen import dtls, report
from loadgen.generator import LoadSpec, run_share

from collector.dtls import DtlsServer, make_backend
from collector.psk import PskEntry, PskStore
from tests.bench.test_generator import ack, responder
from tests.bench.test_generator import spec as plain_spec
from tests.bench.test_loadtest_cli import loadtest
from tests.server.conftest import free_udp_port

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "bench" / "loadtest.py"
COLLECTOR = Path(sys.executable).parent / "iot-collector"
IDENTITY, KEY = "dev-17", b"a text key for dev-17"

# plaintext request -> plaintext answers (the responder encrypts them)
Answer = Callable[[bytes], list[bytes]]


def spec(port: int, **kw: object) -> LoadSpec:
    """The generator tests' load, over DTLS as IDENTITY, on 4 devices for 0.5 s."""
    base: dict[str, object] = {"duration": 0.5, "devices": 4, "psk_identity": IDENTITY,
                               "psk_key": KEY}  # fmt: skip
    return plain_spec(port, **{**base, **kw})


@contextmanager
def dtls_responder(answer: Answer) -> Iterator[tuple[int, list[bytes]]]:
    """A DTLS server on loopback answering each request's plaintext with ``answer``;
    yields its port and the list of plaintexts it received."""
    store = PskStore({IDENTITY: PskEntry(IDENTITY, KEY, "lab", IDENTITY)})
    server = DtlsServer(make_backend("openssl", store), max_sessions=10_000, idle_timeout=60)
    seen: list[bytes] = []

    def handle(sock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
        opened = server.datagram(data, peer, time.monotonic())
        if opened is not None:
            session, plains = opened
            for plain in plains:
                seen.append(plain)
                for reply in answer(plain):
                    server.send(session, reply)
        for record, to in server.outbox:
            sock.sendto(record, to)
        server.outbox.clear()

    with responder(handle) as port:
        yield port, seen


def test_open_loop_over_dtls_counts_every_request_once_and_names_no_sender() -> None:
    with dtls_responder(lambda p: [ack(p)]) as (port, seen):
        r = run_share(spec(port), 0)
    assert r["dtls"] is True and r["dtls_errors"] == 0
    assert r["sent"] == r["answered"] == r["ok"] == 100
    assert r["codes"] == {"2.01": 100} and r["timeouts"] == 0
    assert len(seen) == 100  # one record per request, each decrypted by the server
    assert b'"sender"' not in seen[0]  # the identity names the sender over DTLS
    assert b"/events" not in seen[0] and b"events" in seen[0]


def test_closed_loop_over_dtls_keeps_its_window() -> None:
    with dtls_responder(lambda p: [ack(p)]) as (port, _seen):
        r = run_share(spec(port, window=2, duration=0.5), 0)
    assert r["mode"] == "closed" and r["dtls"] is True
    assert r["answered"] > 10 and r["ok"] == r["answered"] and r["timeouts"] == 0


def test_retransmissions_and_empty_acks_travel_in_records() -> None:
    """A dropped first copy is retransmitted in a new record of the session; a separate
    response's CON is acknowledged with an empty ACK, in a record too."""
    firsts: set[bytes] = set()
    acks: list[bytes] = []
    mid = [0x4000]

    def answer(p: bytes) -> list[bytes]:
        if (p[0] >> 4) & 3 == 2:  # the generator's empty ACK of our CON response
            acks.append(p)
            return []
        if p[2:4] not in firsts:
            firsts.add(p[2:4])
            return []  # the first copy is "lost"
        mid[0] += 1
        tkl = p[0] & 0x0F
        con = bytes((0x40 | tkl, 0x41)) + mid[0].to_bytes(2, "big") + p[4 : 4 + tkl]
        return [bytes((0x60, 0x00)) + p[2:4], con]  # empty ACK, then a separate 2.01

    with dtls_responder(answer) as (port, _seen):
        sp = spec(port, rate=40.0, duration=0.5, ack_timeout=0.2, ack_random_factor=1.0)
        r = run_share(sp, 0)
        time.sleep(0.1)
    assert r["ok"] == 20 and r["timeouts"] == 0
    assert r["retransmissions"] == 20
    assert r["separate_responses"] == 20
    assert len(acks) == 20 and all(len(a) == 4 and a[1] == 0 for a in acks)


def test_handshake_run_opens_and_closes_sessions() -> None:
    with dtls_responder(lambda p: []) as (port, _seen):
        r = run_share(spec(port, handshakes=True, window=4, duration=0.5), 0)
    assert r["mode"] == "handshakes"
    assert r["handshakes"] > 0 and r["failed"] == 0
    assert r["cpu_s"] > 0 and r["wall_s"] >= 0.5


def test_a_wrong_key_is_a_setup_error_not_a_hang() -> None:
    with dtls_responder(lambda p: [ack(p)]) as (port, _seen):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        with s, pytest.raises(dtls.DtlsSetupError):
            dtls.handshake_all([s], dtls.Psk(IDENTITY, b"not the right key"), timeout=2.0)


def test_psk_repr_hides_the_key() -> None:
    assert "text key" not in repr(dtls.Psk(IDENTITY, KEY))
    assert "text key" not in repr(spec(1))


def _rep(ok_rate: float, cpu_us: float) -> dict[str, Any]:
    return {
        "ok_rate": ok_rate,
        "latency_ms": {"p50": 1.0, "p99": 2.0},
        "server_cpu_us_per_request": cpu_us,
        "generator_cpu_us_per_request": 5.0,
        "generator_kept_up": True,
        "generator_saturated": False,
    }


def _shake(rate: float, cpu_us: float) -> dict[str, Any]:
    return {"handshake_rate": rate, "server_cpu_us_per_handshake": cpu_us,
            "generator_saturated": False}  # fmt: skip


def test_dtls_summary_takes_ratios_within_each_repetition() -> None:
    result: dict[str, Any] = {
        "workers": 1,
        "repeats": 2,
        "rows": [
            {"key": "plain", "name": "plain", "reps": [_rep(1000, 10), _rep(500, 20)]},
            {"key": "dtls", "name": "dtls", "reps": [_rep(600, 20), _rep(300, 40)]},
            {"key": "scandium", "name": "sc", "reps": [_rep(100, 80), _rep(100, 120)]},
        ],
        "handshakes": [
            {"key": "dtls", "name": "dtls", "reps": [_shake(900, 400), _shake(800, 500)]},
            {"key": "scandium", "name": "sc", "reps": [_shake(300, 1000), _shake(200, 1000)]},
        ],
    }
    report.dtls_summary(result)
    dtls_row = result["rows"][1]
    # 600/1000 and 300/500: the same ratio although the machine halved in between
    assert dtls_row["req_s_vs_plain"] == {"median": 0.6, "min": 0.6, "max": 0.6, "n": 2}
    assert dtls_row["capacity_vs_plain"]["median"] == 0.5
    assert result["scandium_cpu_vs_collector"] == {"median": 3.5, "min": 3.0, "max": 4.0, "n": 2}
    assert result["handshakes"][0]["per_core"] == round(1e6 / 450)
    table = report.dtls_table(result)
    assert table.count("\n") == 4  # header, rule, three rows
    assert "0.60 [0.60-0.60]" in table and "2222" in table
    text = report.dtls_text(result)
    assert "0.60x the requests/s" in text and "3.50x" in text and "2222 handshakes/s" in text


@pytest.mark.integration
@pytest.mark.skipif(not COLLECTOR.exists(), reason="iot-collector not installed")
def test_target_over_coaps_stores_every_event_as_the_identity(tmp_path: Path) -> None:
    """--target against a collector with a PSK file: every request is answered 2.01
    and stored once, with the identity's sender and namespace."""
    psk = tmp_path / "psk.json"
    psk.write_text(json.dumps({"identities": [
        {"identity": IDENTITY, "key": KEY.decode(), "namespace": "lab", "sender": IDENTITY}
    ]}))  # fmt: skip
    db = tmp_path / "events.db"
    port = free_udp_port()
    proc = subprocess.Popen(
        [str(COLLECTOR), "serve", "--host", "127.0.0.1", "--port", str(free_udp_port()),
         "--coaps-port", str(port), "--psk-file", str(psk), "--workers", "1",
         "--sink", "sqlite", "--sqlite-path", str(db), "--metrics-port", "0",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert dtls.probe("127.0.0.1", port, dtls.Psk(IDENTITY, KEY), time.monotonic() + 30)
        out = tmp_path / "run.json"
        r = loadtest(
            "--target", f"127.0.0.1:{port}", "--psk-identity", IDENTITY, "--psk-key",
            KEY.decode(), "--rate", "200", "--duration", "1", "--warmup", "0.2",
            "--devices", "8", "--quiet", "--json", str(out),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        doc = json.loads(out.read_text())
        [run] = doc["runs"]
        assert run["dtls"] is True and run["dtls_errors"] == 0
        assert run["codes"] == {"2.01": run["ok"]} and run["ok"] == run["sent"] > 0
        assert KEY.decode() not in out.read_text()  # the key is never written down
    finally:
        proc.terminate()
        proc.wait(15)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT sender, namespace, identity, count(*) FROM events").fetchall()
    # warm-up requests are stored too: 200/s for 1.2 s
    assert stored == [(IDENTITY, "lab", IDENTITY, 240)]


@pytest.mark.integration
@pytest.mark.skipif(not COLLECTOR.exists(), reason="iot-collector not installed")
def test_dtls_compare_reports_plain_dtls_and_handshakes(tmp_path: Path) -> None:
    out = tmp_path / "dtls.json"
    r = loadtest(
        "--dtls-compare", "--repeats", "2", "--duration", "0.4", "--warmup", "0.1",
        "--server-warmup", "0.2", "--handshake-duration", "0.3", "--max-devices", "4",
        "--quiet", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    doc = json.loads(out.read_text())
    res = doc["dtls_compare"]
    plain, dtls_row, scandium = res["rows"]
    for row in (plain, dtls_row):
        assert len(row["reps"]) == 2
        for run in row["reps"]:
            assert run["mode"] == "closed" and run["ok"] == run["answered"] > 0
            assert run["server_cpu_us_per_request"] > 0
    assert [run["dtls"] for run in plain["reps"] + dtls_row["reps"]] == [False] * 2 + [True] * 2
    assert {run["generator_engine"] for run in plain["reps"] + dtls_row["reps"]} == {"python"}
    assert dtls_row["req_s_vs_plain"]["n"] == 2
    shakes = res["handshakes"][0]
    assert len(shakes["reps"]) == 2 and all(s["handshakes"] > 0 for s in shakes["reps"])
    assert shakes["per_core"] > 0
    if scandium.get("skipped"):
        assert "Scandium" in r.stdout and "skipped" in r.stdout
    else:
        assert len(scandium["reps"]) == 2 and res["scandium_cpu_vs_collector"]["n"] == 2
    assert "| collector w=1, DTLS |" in r.stdout and "handshakes/s per worker core" in r.stdout
    assert len(doc["handshake_runs"]) == 2 * (1 if scandium.get("skipped") else 2)
