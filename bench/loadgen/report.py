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
# The generator "kept up" when it sent at least this share of the schedule and its
# send lag stayed this small at p99; otherwise figures measure the generator.
KEPT_UP_SHARE = 0.98
KEPT_UP_LAG_P99_MS = 10.0


# The generator is taken to be the limit when its busiest process spent at least this
# share of the run on a CPU (no idle time left to wait for answers in). Time spent
# waiting in the run queue is reported on its own: a large share of it means the
# machine was oversubscribed, and every figure of the run is the machine's.
SATURATED_SHARE = 0.85
STARVED_SHARE = 0.25
_COUNTERS = (
    "sent",
    "sent_total",
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
    "dtls_errors",
)


def merge(raw: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The processes' raw results of one run as one: counters and codes added,
    histograms merged, timelines added slot by slot (the processes share one start),
    CPU added, and the busiest process's shares of the run on a CPU and in the run
    queue."""
    lat = LogHistogram()
    lag = LogHistogram()
    codes: dict[str, int] = {}
    totals = dict.fromkeys(_COUNTERS, 0)
    timeline: list[int] = []
    cpu = 0.0
    cpu_share = runq_share = 0.0
    last_send = 0.0
    for r in raw:
        lat.merge(LogHistogram.from_dict(r["latency"]))
        lag.merge(LogHistogram.from_dict(r["lag"]))
        for c, n in r["codes"].items():
            codes[c] = codes.get(c, 0) + n
        for k in totals:
            totals[k] += int(r.get(k, 0))
        cpu += float(r["cpu_s"])
        wall = float(r.get("wall_s") or 0.0)
        if wall > 0:
            cpu_share = max(cpu_share, float(r["cpu_s"]) / wall)
            runq_share = max(runq_share, float(r.get("runq_wait_s", 0.0)) / wall)
        last_send = max(last_send, float(r["last_send"]))
        tl = r.get("timeline") or []
        if len(tl) > len(timeline):
            timeline += [0] * (len(tl) - len(timeline))
        for i, n in enumerate(tl):
            timeline[i] += n
    return {
        **totals,
        "codes": dict(sorted(codes.items())),
        "latency": lat,
        "lag": lag,
        "cpu_s": cpu,
        "cpu_share": cpu_share,
        "runq_share": runq_share,
        "last_send": last_send,
        "measured_from": min((r["measured_from"] for r in raw), default=0.0),
        "start": min((r.get("start", 0.0) for r in raw), default=0.0),
        "timeline": timeline,
        "timeline_hz": int(raw[0].get("timeline_hz", 10)) if raw else 10,
        "batched": all(r.get("batched", False) for r in raw),
        "dtls": any(r.get("dtls", False) for r in raw),
        "engine": "+".join(sorted({str(r.get("engine", "python")) for r in raw})) or "python",
    }


def stalls(
    timeline: Sequence[int], hz: int, first: int, last: int, min_slots: int = 2
) -> dict[str, Any]:
    """Answer-rate stalls in ``timeline[first:last]`` (answers per 1/hz s).

    A stall is a run of at least ``min_slots`` slots answering under a tenth of the
    median slot. Returns the overall rate, the rate between stalls, and the stalls
    (count, seconds in all, longest), so a server that pauses (GC) shows as such
    rather than as one low number.
    """
    window = list(timeline[first:last])
    if not window:
        return {"overall_rate": 0.0, "between_rate": 0.0, "count": 0, "stalled_s": 0.0,
                "longest_s": 0.0}  # fmt: skip
    median = sorted(window)[len(window) // 2]
    low = [n < 0.1 * median for n in window] if median > 0 else [False] * len(window)
    runs: list[int] = []
    i = 0
    while i < len(low):
        if low[i]:
            j = i
            while j < len(low) and low[j]:
                j += 1
            if j - i >= min_slots:
                runs.append(j - i)
                for s in range(i, j):
                    low[s] = True
            else:
                for s in range(i, j):
                    low[s] = False
            i = j
        else:
            i += 1
    stalled = sum(runs)
    between = [n for n, is_low in zip(window, low, strict=True) if not is_low]
    return {
        "overall_rate": round(sum(window) * hz / len(window), 1),
        "between_rate": round(sum(between) * hz / len(between), 1) if between else 0.0,
        "count": len(runs),
        "stalled_s": round(stalled / hz, 2),
        "longest_s": round(max(runs, default=0) / hz, 2),
    }


def summarize(
    raw: Sequence[dict[str, Any]], spec: LoadSpec, label: str, server: str, replicas: int
) -> dict[str, Any]:
    """One run's summary (see the module docstring) from its processes' raw results."""
    m = merge(raw)
    lat, lag = m["latency"], m["lag"]
    closed = spec.window > 0
    span = spec.duration if closed else max(spec.duration, m["last_send"] - m["measured_from"])
    scheduled = m["sent"] if closed else spec.total - spec.first_measured

    def ms(v: int | None) -> float | None:
        return None if v is None else round(v / 1000.0, 3)

    latency = {k: ms(v) for k, v in lat.percentiles(PERCENTILES).items()}
    latency["max"] = ms(lat.max) if lat.count else None
    latency["min"] = ms(lat.min)
    lag_ms = {k: ms(v) for k, v in lag.percentiles((50.0, 99.0)).items()}
    lag_ms["max"] = ms(lag.max) if lag.count else None
    on_schedule = m["sent"] >= KEPT_UP_SHARE * scheduled and (lag_ms["p99"] or 0.0) <= (
        KEPT_UP_LAG_P99_MS
    )
    saturated = m["cpu_share"] >= SATURATED_SHARE
    hz = m["timeline_hz"]
    first = max(0, int((m["measured_from"] - m["start"]) * hz) + 1)
    stall = stalls(m["timeline"], hz, first, first + int(spec.duration * hz) - 1)
    totals = {k: m[k] for k in _COUNTERS if k != "sent_total"}
    return {
        "label": label,
        "server": server,
        "replicas": replicas,
        "mode": "closed" if closed else "open",
        "window": spec.window,
        "target": f"{spec.host}:{spec.port}",
        "rate": spec.rate if not closed else None,
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
        "sent_rate": round(m["sent"] / span, 1),
        "answered_rate": round(m["answered"] / span, 1),
        "ok_rate": round(m["ok"] / span, 1),
        "codes": m["codes"],
        "latency_ms": latency,
        "send_lag_ms": lag_ms,
        "generator_kept_up": on_schedule if not closed else not saturated,
        "generator_saturated": saturated,
        "generator_cpu_share": round(m["cpu_share"], 2),
        "generator_runq_share": round(m["runq_share"], 2),
        "machine_busy": m["runq_share"] >= STARVED_SHARE,
        "generator_batched": m["batched"],
        "generator_engine": m["engine"],
        "dtls": m["dtls"],
        "generator_cpu_s": round(m["cpu_s"], 3),
        "generator_cpu_us_per_request": (
            round(m["cpu_s"] / m["sent_total"] * 1e6, 2) if m["sent_total"] else None
        ),
        "stalls": stall,
        "histogram_us": lat.to_dict(),
    }


def summarize_handshakes(
    raw: Sequence[dict[str, Any]], spec: LoadSpec, label: str, server: str
) -> dict[str, Any]:
    """One handshake-rate run (:func:`loadgen.dtls.handshake_share` results) as one:
    handshakes completed per second, failures, and the generator's CPU per handshake."""
    done = sum(int(r["handshakes"]) for r in raw)
    cpu = sum(float(r["cpu_s"]) for r in raw)
    share = max((float(r["cpu_s"]) / float(r["wall_s"]) for r in raw if r["wall_s"]), default=0)
    return {
        "label": label,
        "server": server,
        "target": f"{spec.host}:{spec.port}",
        "duration": spec.duration,
        "procs": spec.procs,
        "window": spec.window,
        "handshakes": done,
        "failed": sum(int(r["failed"]) for r in raw),
        "handshake_rate": round(done / spec.duration, 1),
        "generator_cpu_s": round(cpu, 3),
        "generator_cpu_us_per_handshake": round(cpu / done * 1e6, 1) if done else None,
        "generator_cpu_share": round(share, 2),
        "generator_saturated": share >= SATURATED_SHARE,
    }


def generator_limited(run: dict[str, Any]) -> bool:
    """Whether the generator, not the server, set this run's figures: it fell behind
    its schedule (open loop) or had no CPU left (either loop)."""
    return not run["generator_kept_up"] or bool(run.get("generator_saturated"))


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
        "handshake_runs": [],
        "dtls_compare": None,
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


def _offered(r: dict[str, Any]) -> str:
    return f"{r['rate']:.0f}" if r.get("rate") else f"closed w={r.get('window', 0)}"


def _stall_text(st: dict[str, Any] | None) -> str:
    if not st or not st.get("count"):
        return "-"
    return (
        f"{st['count']} ({st['stalled_s']:.1f} s, longest {st['longest_s']:.1f} s;"
        f" {st['between_rate']:.0f}/s between)"
    )


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per run."""
    head = (
        "| configuration | offered/s | sent/s | ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms |"
        " max ms | codes | timeouts | retrans | gen lag p99 ms | stalls | server CPU us/req |"
        " gen CPU us/req (engine) |"
    )
    rows = [head, "|" + "---|" * 16]
    for r in runs:
        lat = r["latency_ms"]
        behind = ""
        if r.get("generator_saturated"):
            behind = " (generator saturated)"
        elif not r["generator_kept_up"]:
            behind = " (generator behind)"
        rows.append(
            f"| {r['label']} | {_offered(r)} | {r['sent_rate']:.0f} | {r['ok_rate']:.0f} |"
            f" {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p99'])} | {_f(lat['p99.9'])} |"
            f" {_f(lat['max'])} | {_codes(r['codes'])} | {r['timeouts']} |"
            f" {r['retransmissions']} | {_f(r['send_lag_ms']['p99'])}{behind} |"
            f" {_stall_text(r.get('stalls'))} |"
            f" {_f(r.get('server_cpu_us_per_request'), 1)} |"
            f" {_f(r.get('generator_cpu_us_per_request'), 1)}"
            f" ({r.get('generator_engine', 'python')}) |"
        )
    return "\n".join(rows)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of repeated measurements (None when there are none)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    n = len(vals)
    mid = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return {"median": mid, "min": vals[0], "max": vals[-1], "n": n}


def _rate_text(sp: dict[str, Any], limited: bool = False, why: str = "") -> str:
    if sp.get("median") is None:
        return "-"
    text = f"{sp['median']:.0f} [{sp['min']:.0f}-{sp['max']:.0f}]"
    if limited:
        return f">= {text} ({why or 'generator limit'})"
    return f"{text} ({why})" if why else text


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
    """Per server: max (closed loop) and capacity (open loop, the rule), each the median
    of the repetitions with [min-max], their ratio, the ratio to the echo peer's max,
    stalls seen in the max runs, and CPU per request of the server and the generator.
    A capacity says what ended its search (losses, p99, or the generator: then it is a
    lower bound, marked >=)."""
    rows = [
        "| server | max req/s (closed loop) | capacity req/s (p99 <="
        f" {compare['p99_bound_ms']:g} ms, no losses) | capacity / max | max / echo max |"
        " stalls (max runs) | server CPU us/req | generator CPU us/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    echo = compare.get("echo_max")
    for s in compare["servers"]:
        if s.get("skipped"):
            rows.append(f"| {s['name']} | {s['skipped']} | - | - | - | - | - | - |")
            continue
        mx, cap = s["max"], s["capacity"]
        ratio = f"{cap['median'] / mx['median']:.2f}" if cap["median"] and mx["median"] else "-"
        vs_echo = f"{mx['median'] / echo:.2f}" if echo and mx["median"] else "-"
        rows.append(
            f"| {s['name']} | {_rate_text(mx, s.get('max_generator_limited', False))} |"
            f" {_rate_text(cap, s.get('capacity_generator_limited', False), s.get('capacity_bound_by', ''))}"
            f" | {ratio} |"
            f" {vs_echo} | {_stall_text(s.get('stalls'))} |"
            f" {_f(s.get('server_cpu_us'), 1)} | {_f(s.get('generator_cpu_us'), 1)} |"
        )
    return "\n".join(rows)


def handshakes_table(runs: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per handshake-rate run."""
    rows = [
        "| configuration (handshakes) | completed/s | failed | server CPU us/handshake |"
        " generator CPU us/handshake |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        behind = " (generator saturated)" if r["generator_saturated"] else ""
        rows.append(
            f"| {r['label']} | {r['handshake_rate']:.0f}{behind} | {r['failed']} |"
            f" {_f(r.get('server_cpu_us_per_handshake'), 0)} |"
            f" {_f(r.get('generator_cpu_us_per_handshake'), 0)} |"
        )
    return "\n".join(rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def dtls_summary(result: dict[str, Any]) -> None:
    """Fill ``result`` (``--dtls-compare``'s, its reps already run) with the spreads:
    per row requests/s, p50, p99, server and generator CPU per request; per DTLS row
    its ratios to plain CoAP of the same repetition; per handshake row the completed
    rate, the server's CPU per handshake, and the rate per server core that implies."""
    rows = {r["key"]: r for r in result["rows"]}
    plain = rows["plain"]["reps"]
    for row in result["rows"]:
        reps = row["reps"]
        if not reps:
            continue
        row["req_s"] = spread([r["ok_rate"] for r in reps])
        row["p50_ms"] = spread([r["latency_ms"]["p50"] for r in reps])
        row["p99_ms"] = spread([r["latency_ms"]["p99"] for r in reps])
        row["server_cpu_us"] = spread([r.get("server_cpu_us_per_request") for r in reps])
        row["generator_cpu_us"] = spread([r.get("generator_cpu_us_per_request") for r in reps])
        row["generator_limited"] = sum(generator_limited(r) for r in reps) > len(reps) / 2
        if row["key"] != "plain" and len(plain) == len(reps):
            pairs = list(zip(reps, plain, strict=True))
            row["req_s_vs_plain"] = spread([_ratio(r["ok_rate"], p["ok_rate"]) for r, p in pairs])
            # capacity of the same CPU: plain's CPU per request over this one's
            row["capacity_vs_plain"] = spread(
                [
                    _ratio(p.get("server_cpu_us_per_request"), r.get("server_cpu_us_per_request"))
                    for r, p in pairs
                ]
            )
    dtls, sc = rows["dtls"]["reps"], rows["scandium"]["reps"]
    if dtls and len(sc) == len(dtls):
        # how many times the CPU per request Scandium spends, against the collector's
        result["scandium_cpu_vs_collector"] = spread(
            [
                _ratio(s.get("server_cpu_us_per_request"), d.get("server_cpu_us_per_request"))
                for s, d in zip(sc, dtls, strict=True)
            ]
        )
    for row in result["handshakes"]:
        reps = row["reps"]
        if not reps:
            continue
        row["rate"] = spread([r["handshake_rate"] for r in reps])
        row["server_cpu_us"] = spread([r.get("server_cpu_us_per_handshake") for r in reps])
        us = row["server_cpu_us"]["median"]
        row["per_core"] = round(1e6 / us) if us else None
        row["generator_limited"] = sum(r["generator_saturated"] for r in reps) > len(reps) / 2


def _sp(sp: dict[str, Any] | None, digits: int = 0) -> str:
    if not sp or sp.get("median") is None:
        return "-"
    return f"{sp['median']:.{digits}f} [{sp['min']:.{digits}f}-{sp['max']:.{digits}f}]"


def dtls_table(result: dict[str, Any]) -> str:
    """``--dtls-compare``'s table: one row per configuration (see :func:`dtls_summary`)."""
    head = (
        "| configuration | req/s (closed loop) | p50 ms | p99 ms | server CPU us/req |"
        " req/s vs plain | capacity vs plain (CPU/req) | PSK handshakes/s completed |"
        " server CPU us/handshake | handshakes/s per server core | generator CPU us/req |"
    )
    rows = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    shakes = {r["key"]: r for r in result["handshakes"]}
    for row in result["rows"]:
        if row.get("skipped") or not row.get("req_s"):
            rows.append(f"| {row['name']} | {row.get('skipped', 'no run')} |" + " - |" * 10)
            continue
        hs = shakes.get(row["key"], {})
        limited = " (generator limit)" if row["generator_limited"] else ""
        hs_limited = " (generator limit)" if hs.get("generator_limited") else ""
        per_core = hs.get("per_core")
        rows.append(
            f"| {row['name']} | {_sp(row['req_s'])}{limited} | {_sp(row['p50_ms'], 2)} |"
            f" {_sp(row['p99_ms'], 2)} | {_sp(row['server_cpu_us'], 1)} |"
            f" {_sp(row.get('req_s_vs_plain'), 2)} | {_sp(row.get('capacity_vs_plain'), 2)} |"
            f" {_sp(hs.get('rate')) if hs.get('rate') else '-'}{hs_limited} |"
            f" {_sp(hs.get('server_cpu_us')) if hs.get('server_cpu_us') else '-'} |"
            f" {per_core if per_core else '-'} |"
            f" {_sp(row['generator_cpu_us'], 1)} |"
        )
    return "\n".join(rows)


def dtls_text(result: dict[str, Any]) -> str:
    """The issue's three targets, each with its figure from ``result``."""
    rows = {r["key"]: r for r in result["rows"]}
    shakes = {r["key"]: r for r in result["handshakes"]}
    dtls = rows["dtls"]
    lines = []
    rq, cap = dtls.get("req_s_vs_plain"), dtls.get("capacity_vs_plain")
    if rq and rq.get("median") is not None:
        lines.append(
            f"- DTLS / plain CoAP on the same {result['workers']}-worker collector:"
            f" {rq['median']:.2f}x the requests/s"
            + (" (the generator's limit)" if dtls["generator_limited"] else "")
            + (f", {cap['median']:.2f}x the requests per CPU second" if cap["median"] else "")
            + " (target >= 0.5)."
        )
    hs = shakes["dtls"]
    if hs.get("per_core"):
        lines.append(
            f"- PSK handshakes: {hs['rate']['median']:.0f}/s completed"
            + (" (the generator's limit)" if hs["generator_limited"] else "")
            + f"; {hs['server_cpu_us']['median']:.0f} us of server CPU each, so"
            f" {hs['per_core']} handshakes/s per worker core (target >= 1000)."
        )
    sc = result.get("scandium_cpu_vs_collector")
    if sc and sc.get("median") is not None:
        lines.append(
            f"- Per core: Scandium spends {sc['median']:.2f}x the collector's server CPU per"
            f" DTLS request [{sc['min']:.2f}-{sc['max']:.2f}] (target: above 1)."
        )
    elif rows["scandium"].get("skipped"):
        lines.append(f"- Scandium: {rows['scandium']['skipped']}.")
    return "\n".join(lines)


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
