"""bench/loadtest.py end to end: real collector replicas, real peers, the JSON it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "bench" / "loadtest.py"
COLLECTOR = Path(sys.executable).parent / "iot-collector"

RUN_FIELDS = {
    "label": str,
    "server": str,
    "replicas": int,
    "rate": float,
    "duration": float,
    "sent": int,
    "sent_rate": float,
    "answered": int,
    "ok": int,
    "ok_rate": float,
    "codes": dict,
    "timeouts": int,
    "retransmissions": int,
    "latency_ms": dict,
    "send_lag_ms": dict,
    "generator_kept_up": bool,
    "generator_cpu_us_per_request": float,
    "histogram_us": dict,
}


def loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOADTEST), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def check_run(run: dict[str, Any]) -> None:
    for key, kind in RUN_FIELDS.items():
        assert key in run, key
        if kind is float:
            assert isinstance(run[key], int | float), key
        else:
            assert isinstance(run[key], kind), key
    lat = run["latency_ms"]
    order = [lat["min"], lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]]
    assert all(v is not None and v >= 0 for v in order), lat
    assert order == sorted(order), lat
    assert run["ok_rate"] > 0 and run["sent_rate"] > 0
    assert set(run["codes"]) == {"2.01"}, run["codes"]
    assert run["ok"] == run["answered"] == run["sent"]
    assert run["timeouts"] == 0


def check_document(doc: dict[str, Any]) -> None:
    assert doc["schema"] == "iot-collector-loadtest/1"
    assert doc["argv"][1].endswith("loadtest.py")
    for key in ("cpu_model", "cpu_count", "kernel", "python"):
        assert doc["machine"][key], key
    assert doc["versions"]["uvloop"]


def test_help_documents_every_mode_and_flag() -> None:
    r = loadtest("--help")
    assert r.returncode == 0
    for flag in (
        "--target", "--rate", "--rates", "--duration", "--devices", "--format",
        "--events-per-request", "--non", "--warmup", "--json", "--plot", "--server",
        "--compare", "--replicas", "--replicas-mode", "--cpu-limit", "--sink", "--es-url",
        "--timeout", "--procs", "--p99-bound", "--startup-runs", "--dtls-compare",
        "--psk-identity", "--psk-key", "--psk-key-hex", "--handshake-duration",
        "--handshake-window", "--engine",
    ):  # fmt: skip
        assert flag in r.stdout, flag


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--target", "nonsense"),
        ("--target", "127.0.0.1:5683", "--server", "echo"),
        ("--server", "echo", "--rate", "-5"),
        ("--replicas", "1,x"),
        ("--replicas-mode", "netns", "--server", "echo"),
        ("--sink", "elasticsearch", "--es-url", "", "--server", "collector"),
        # coaps
        ("--server", "collector", "--psk-key", "k"),
        ("--server", "collector", "--psk-identity", "dev"),
        ("--server", "collector", "--psk-identity", "dev", "--psk-key", "k", "--psk-key-hex", "00"),
        ("--server", "collector", "--psk-identity", "dev", "--psk-key-hex", "zz"),
        ("--server", "collector", "--psk-identity", "", "--psk-key", "k"),
        ("--server", "scandium"),
        ("--server", "echo", "--psk-identity", "dev", "--psk-key", "k"),
        ("--compare", "--psk-identity", "dev", "--psk-key", "k"),
        ("--replicas", "1", "--psk-identity", "dev", "--psk-key", "k"),
        ("--dtls-compare", "--server", "echo"),
        ("--dtls-compare", "--handshake-window", "0"),
        ("--servers", "scandium", "--compare"),
        ("--server", "collector", "--engine", "c", "--psk-identity", "d", "--psk-key", "k"),
        ("--server", "echo", "--engine", "rust"),
        ("--dtls-compare", "--engine", "c"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    r = loadtest(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadtest: "), r.stderr


@pytest.mark.integration
def test_target_mode_against_the_echo_peer(tmp_path: Path) -> None:
    out = tmp_path / "echo.json"
    r = loadtest(
        "--server", "echo", "--rate", "300", "--duration", "1", "--warmup", "0.3",
        "--devices", "16", "--quiet", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    check_document(doc)
    assert len(doc["runs"]) == 1
    check_run(doc["runs"][0])
    assert "| echo |" in r.stdout


@pytest.mark.integration
@pytest.mark.skipif(not COLLECTOR.exists(), reason="iot-collector not installed")
def test_one_vs_three_replicas_on_the_null_sink(tmp_path: Path) -> None:
    out, png = tmp_path / "replicas.json", tmp_path / "replicas.png"
    r = loadtest(
        "--replicas", "1,3", "--rate", "400", "--duration", "3", "--warmup", "0.5",
        "--sink", "null", "--devices", "32", "--quiet", "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    check_document(doc)
    runs = doc["runs"]
    assert [run["replicas"] for run in runs] == [1, 3]
    for run in runs:
        check_run(run)
        assert run["server"] == "collector"
    assert "| latency (ms) | 1 replica | 3 replicas |" in r.stdout
    assert png.stat().st_size > 10_000


@pytest.mark.integration
@pytest.mark.skipif(
    not COLLECTOR.exists()
    or os.geteuid() != 0
    or not shutil.which("nft")
    or not shutil.which("ip"),
    reason="netns mode needs root, nft, ip and the collector",
)
def test_netns_replicas_spread_flows_and_clean_up(tmp_path: Path) -> None:
    out = tmp_path / "netns.json"
    r = loadtest(
        "--replicas", "2", "--replicas-mode", "netns", "--rate", "300", "--duration", "1",
        "--warmup", "0.3", "--devices", "16", "--quiet", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads(out.read_text())["runs"][0]
    check_run(run)
    per_replica = run["replica_datagrams"]
    assert len(per_replica) == 2 and all(n > 0 for n in per_replica), per_replica
    pid_tag = "iotbench-"
    assert (
        pid_tag
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    assert (
        "iotbench_"
        not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    )


@pytest.mark.integration
def test_compare_reports_max_capacity_and_the_generator_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    r = loadtest(
        "--compare", "--servers", "echo", "--repeats", "2", "--duration", "0.4",
        "--warmup", "0.1", "--server-warmup", "0.2", "--grow", "2", "--refine", "1",
        "--retries", "0", "--startup-runs", "0", "--max-devices", "8", "--quiet",
        "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    doc = json.loads(out.read_text())
    echo = doc["compare"]["servers"][0]
    assert len(echo["reps"]) == 2
    assert echo["max"]["n"] == 2 and echo["max"]["median"] > 0
    assert echo["capacity"]["n"] == 2
    for rep in echo["reps"]:
        assert rep["max"]["mode"] == "closed"
        assert rep["trail"] and rep["capacity"] >= 0
        assert rep["max"]["generator_cpu_us_per_request"] > 0
    assert doc["generator_ceiling"]["echo_max"] == echo["max"]["median"]
    assert "| echo |" in r.stdout and "Generator:" in r.stdout
