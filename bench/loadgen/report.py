"""Turning raw generator results into numbers, tables, JSON and pictures.

A *run* is one constant-rate load against one configuration; its summary holds the
achieved rates, latency percentiles (ms) from the merged histograms, response codes,
timeouts and retransmissions, the generator's send lag and CPU cost, and the merged
histogram itself so that percentiles can be recomputed later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .generator import LoadSpec
from .histogram import LogHistogram

SCHEMA = "iot-collector-loadtest/1"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
RUN_KEYS = (
    "label",
    "server",
    "replicas",
    "rate",
    "duration",
    "sent",
    "sent_rate",
    "answered",
    "ok",
    "ok_rate",
    "codes",
    "timeouts",
    "retransmissions",
    "latency_ms",
    "send_lag_ms",
    "generator_kept_up",
)
# The generator "kept up" when it sent at least this share of the schedule and its
# send lag stayed this small at p99; otherwise figures measure the generator.
KEPT_UP_SHARE = 0.98
KEPT_UP_LAG_P99_MS = 10.0


def summarize(
    raw: Sequence[dict[str, Any]], spec: LoadSpec, label: str, server: str, replicas: int
) -> dict[str, Any]:
    """One run's summary (see the module docstring) from its processes' raw results."""
    lat = LogHistogram()
    lag = LogHistogram()
    codes: dict[str, int] = {}
    totals = {
        k: 0
        for k in (
            "sent",
            "answered",
            "ok",
            "timeouts",
            "retransmissions",
            "send_errors",
            "icmp_errors",
            "late_responses",
            "separate_responses",
            "rst",
            "stale",
        )
    }
    cpu = 0.0
    sent_total = 0
    last_send = 0.0
    measured_from = min((r["measured_from"] for r in raw), default=0.0)
    for r in raw:
        lat.merge(LogHistogram.from_dict(r["latency"]))
        lag.merge(LogHistogram.from_dict(r["lag"]))
        for c, n in r["codes"].items():
            codes[c] = codes.get(c, 0) + n
        for k in totals:
            totals[k] += int(r[k])
        cpu += float(r["cpu_s"])
        sent_total += int(r["sent_total"])
        last_send = max(last_send, float(r["last_send"]))
    span = max(spec.duration, last_send - measured_from)
    scheduled = spec.total - spec.first_measured

    def ms(v: int | None) -> float | None:
        return None if v is None else round(v / 1000.0, 3)

    latency = {k: ms(v) for k, v in lat.percentiles(PERCENTILES).items()}
    latency["max"] = ms(lat.max) if lat.count else None
    latency["min"] = ms(lat.min)
    lag_ms = {k: ms(v) for k, v in lag.percentiles((50.0, 99.0)).items()}
    lag_ms["max"] = ms(lag.max) if lag.count else None
    kept_up = totals["sent"] >= KEPT_UP_SHARE * scheduled and (lag_ms["p99"] or 0.0) <= (
        KEPT_UP_LAG_P99_MS
    )
    return {
        "label": label,
        "server": server,
        "replicas": replicas,
        "target": f"{spec.host}:{spec.port}",
        "rate": spec.rate,
        "duration": spec.duration,
        "warmup": spec.warmup,
        "devices": spec.devices,
        "procs": spec.procs,
        "format": spec.fmt,
        "events_per_request": spec.events,
        "non": spec.non,
        "timeout": spec.timeout,
        "scheduled": scheduled,
        **totals,
        "sent_rate": round(totals["sent"] / span, 1),
        "answered_rate": round(totals["answered"] / span, 1),
        "ok_rate": round(totals["ok"] / span, 1),
        "codes": dict(sorted(codes.items())),
        "latency_ms": latency,
        "send_lag_ms": lag_ms,
        "generator_kept_up": kept_up,
        "generator_cpu_s": round(cpu, 3),
        "generator_cpu_us_per_request": round(cpu / sent_total * 1e6, 2) if sent_total else None,
        "histogram_us": lat.to_dict(),
    }


def passes(run: dict[str, Any], p99_bound_ms: float) -> bool:
    """Capacity rule: the generator offered the whole load, every request was answered
    2.xx, and p99 is within the bound. (Send lag needs no rule of its own: latency runs
    from the scheduled time, so a late generator already shows in p99.)"""
    lat = run["latency_ms"]
    return (
        run["sent"] >= KEPT_UP_SHARE * run["scheduled"]
        and run["timeouts"] == 0
        and run["answered"] == run["sent"] > 0
        and run["ok"] == run["answered"]
        and lat["p99"] is not None
        and lat["p99"] <= p99_bound_ms
    )


# --- machine and versions ----------------------------------------------------------------


def _cmd_version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(list(argv), capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else None


def machine() -> dict[str, Any]:
    """CPU model and count, affinity, memory, kernel, Python."""
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    load = None
    with contextlib.suppress(OSError):
        load = os.getloadavg()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "system": platform.system(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "loadavg_at_start": load,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("iot-collector", "uvloop", "aiocoap", "orjson", "cbor2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["node"] = _cmd_version(["node", "--version"])
    out["java"] = _cmd_version(["java", "-version"])
    return out


def document(argv: Sequence[str], config: dict[str, Any], started: dt.datetime) -> dict[str, Any]:
    """The top level of the --json output; runs and experiments are added by the caller."""
    return {
        "schema": SCHEMA,
        "argv": [sys.executable, *argv],
        "started_at": started.isoformat(),
        "machine": machine(),
        "versions": versions(),
        "config": config,
        "runs": [],
        "sweeps": {},
        "compare": None,
        "startup": [],
        "generator_ceiling": None,
        "warnings": [],
    }


# --- tables ----------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _codes(codes: dict[str, int]) -> str:
    return " ".join(f"{c}:{n}" for c, n in codes.items()) or "-"


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per run."""
    head = (
        "| configuration | offered/s | sent/s | ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms |"
        " max ms | codes | timeouts | retrans | gen lag p99 ms | server CPU us/req |"
        " gen CPU us/req |"
    )
    rows = [head, "|" + "---|" * 15]
    for r in runs:
        lat = r["latency_ms"]
        rows.append(
            f"| {r['label']} | {r['rate']:.0f} | {r['sent_rate']:.0f} | {r['ok_rate']:.0f} |"
            f" {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p99'])} | {_f(lat['p99.9'])} |"
            f" {_f(lat['max'])} | {_codes(r['codes'])} | {r['timeouts']} |"
            f" {r['retransmissions']} | {_f(r['send_lag_ms']['p99'])}"
            f"{'' if r['generator_kept_up'] else ' (generator behind)'} |"
            f" {_f(r.get('server_cpu_us_per_request'), 1)} |"
            f" {_f(r.get('generator_cpu_us_per_request'), 1)} |"
        )
    return "\n".join(rows)


def side_by_side(runs: Sequence[dict[str, Any]]) -> str:
    """Percentiles as rows, configurations as columns (the thesis' Fig 34/35, side by side)."""
    labels = [r["label"] for r in runs]
    rows = ["| latency (ms) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(runs)]
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        rows.append(f"| {key} | " + " | ".join(_f(r["latency_ms"][key]) for r in runs) + " |")
    rows.append("| ok/s | " + " | ".join(f"{r['ok_rate']:.0f}" for r in runs) + " |")
    rows.append("| timeouts | " + " | ".join(str(r["timeouts"]) for r in runs) + " |")
    return "\n".join(rows)


def compare_table(compare: dict[str, Any]) -> str:
    """Capacity and p99 at the common rate per server, with ratios to the collector."""
    common = compare.get("common_rate")
    common_text = f"{common:g}" if common else "-"
    rows = [
        f"| server | capacity req/s (p99 <= {compare['p99_bound_ms']:g} ms, no errors) |"
        f" p99 ms at {common_text} req/s | p50 ms at common | capacity / collector |"
        " collector / server | server CPU us/req at common | startup s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = compare.get("reference_capacity") or 0
    for s in compare["servers"]:
        cap = s.get("capacity")
        ratio = f"{cap / ref:.2f}" if cap and ref else "-"
        inv = f"{ref / cap:.1f}x" if cap and ref else "-"
        rows.append(
            f"| {s['name']} | {_g(cap) if cap is not None else s.get('skipped', '-')} |"
            f" {_f(s.get('p99_at_common_ms'))} | {_f(s.get('p50_at_common_ms'))} |"
            f" {ratio} | {inv} | {_f(s.get('cpu_us_at_common'), 1)} |"
            f" {_f(s.get('startup_s'), 3)} |"
        )
    return "\n".join(rows)


# --- plot --------------------------------------------------------------------------------------


def plot(runs: Sequence[dict[str, Any]], path: str, title: str) -> None:
    """Percentile curves per run (x: percentile on a 1/(1-p) log axis, y: latency ms)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = [0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99]
    ticks = [0, 50, 90, 99, 99.9, 99.99]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        h = LogHistogram.from_dict(r["histogram_us"])
        if not h.count:
            continue
        xs, ys = [], []
        for p in ps:
            v = h.percentile(p)
            if v is not None:
                xs.append(1.0 / (1.0 - p / 100.0))
                ys.append(v / 1000.0)
        ax.plot(xs, ys, marker="o", label=f"{r['label']} ({r['ok_rate']:.0f} ok/s)")
    ax.set_xscale("log")
    ax.set_xticks([1.0 / (1.0 - p / 100.0) for p in ticks])
    ax.set_xticklabels([f"p{p:g}" for p in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
