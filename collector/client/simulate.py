"""A fleet of virtual weather stations driving open-loop traffic at a fixed rate.

Strategy. Each device owns a :class:`ClientEndpoint`, hence its own UDP socket and
source port, so the collector sees D distinct peers (and SO_REUSEPORT spreads
them over its workers). Requests are scheduled open-loop: request ``j`` is due at
``start + j / request_rate`` whatever happened to earlier ones, so a slow server
sees the offered load rather than a load that backs off with it (the
coordinated-omission trap). Requests go to devices round-robin.

Bounded: nothing is sent after ``duration``; at most ``max_in_flight`` requests
are outstanding (a due request beyond that is counted as skipped, not queued);
after the duration, outstanding requests get at most their own deadline.

Readings (:class:`WeatherStation`): temperature follows a daily sine (coolest
around 03:00 UTC, warmest around 15:00) plus noise; relative humidity moves
against temperature; pressure is a slow bounded random walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from . import payloads
from .commands import ClientConfig, StopFlag, connect, post_events
from .endpoint import ClientEndpoint, Response
from .outcomes import Tally, emit

__all__ = ["Fleet", "WeatherStation", "run_simulate"]

_READINGS = (("temperature", "Cel"), ("humidity", "%RH"), ("pressure", "hPa"))
_PROGRESS_EVERY = 0.25  # seconds between progress line updates
#: Latencies kept for the percentiles; beyond it, a uniform sample (bounded memory).
LATENCY_SAMPLES = 200_000


@dataclass(slots=True)
class WeatherStation:
    """Plausible readings for one device; deterministic for a given ``rng``."""

    rng: random.Random
    mean_temp: float = 0.0
    swing: float = 0.0
    pressure: float = 0.0
    next_reading: int = 0

    def __post_init__(self) -> None:
        self.mean_temp = self.rng.uniform(5.0, 22.0)
        self.swing = self.rng.uniform(3.0, 8.0)
        self.pressure = self.rng.uniform(1000.0, 1025.0)
        self.next_reading = self.rng.randrange(len(_READINGS))

    def temperature(self, epoch: float) -> float:
        hours = (epoch % 86400.0) / 3600.0
        daily = math.sin(2 * math.pi * (hours - 9.0) / 24.0)  # peak at 15:00
        return self.mean_temp + self.swing * daily + self.rng.gauss(0.0, 0.3)

    def humidity(self, epoch: float) -> float:
        relative = (self.temperature(epoch) - self.mean_temp) / max(self.swing, 1e-9)
        value = 65.0 - 20.0 * relative + self.rng.gauss(0.0, 2.0)
        return min(100.0, max(5.0, value))

    def step_pressure(self) -> float:
        self.pressure += self.rng.gauss(0.0, 0.05)
        self.pressure = min(1045.0, max(960.0, self.pressure))
        return self.pressure

    def reading(self, epoch: float) -> tuple[str, float, str]:
        """The next (type, value, unit), cycling temperature, humidity, pressure."""
        kind, unit = _READINGS[self.next_reading]
        self.next_reading = (self.next_reading + 1) % len(_READINGS)
        if kind == "temperature":
            value = self.temperature(epoch)
        elif kind == "humidity":
            value = self.humidity(epoch)
        else:
            value = self.step_pressure()
        return kind, round(value, 2), unit


@dataclass(slots=True)
class _Device:
    name: str
    endpoint: ClientEndpoint
    station: WeatherStation


@dataclass(slots=True)
class Fleet:
    """Runs the schedule and keeps the counts the progress line and summary show."""

    config: ClientConfig
    devices: list[_Device]
    rate: float
    duration: float
    max_in_flight: int
    tally: Tally = field(default_factory=Tally)
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    sample_rng: random.Random = field(default_factory=lambda: random.Random(0))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    started: float = 0.0
    finished_sending: float = 0.0
    progress_width: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    def _events(self, device: _Device, epoch: float) -> list[payloads.Event]:
        events = []
        for _ in range(self.config.batch):
            kind, value, unit = device.station.reading(epoch)
            events.append(
                self.config.event(kind, value, unit=unit, origin=device.name, timestamp=epoch)
            )
        return events

    async def _one(self, device: _Device, events: Sequence[payloads.Event]) -> None:
        request = payloads.encode_request(events, self.config.format)
        outcome = await post_events(device.endpoint, self.config, *request)
        self.tally.add(outcome, len(events))
        if isinstance(outcome, Response):
            self._record_latency(outcome.rtt)

    def _record_latency(self, rtt: float) -> None:
        """Reservoir sampling (Algorithm R): exact percentiles up to LATENCY_SAMPLES
        answers, an unbiased sample of them beyond, in bounded memory."""
        self.answered += 1
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(rtt)
            return
        slot = self.sample_rng.randrange(self.answered)
        if slot < LATENCY_SAMPLES:
            self.latencies[slot] = rtt

    async def run(self, stop: StopFlag, progress: TextIO | None) -> None:
        loop = asyncio.get_running_loop()
        request_rate = self.rate / self.config.batch
        total = max(1, math.floor(request_rate * self.duration + 1e-9))
        self.started = loop.time()
        next_progress = self.started
        j = 0
        while j < total and not stop.stopped:
            now = loop.time()
            if progress is not None and now >= next_progress:
                self._progress(progress, now)
                next_progress = now + _PROGRESS_EVERY
            due = self.started + j / request_rate
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.event.wait(), min(due - now, _PROGRESS_EVERY))
                continue
            # Everything due by now goes out now (open loop: no waiting on answers).
            while j < total and self.started + j / request_rate <= now:
                device = self.devices[j % len(self.devices)]
                j += 1
                if self.in_flight >= self.max_in_flight:
                    self.skipped += 1
                    continue
                events = self._events(device, time.time())
                self.tally.requests_sent += 1
                self.tally.events_sent += len(events)
                task = asyncio.create_task(self._one(device, events))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(0)  # let answers in between bursts
        self.finished_sending = loop.time()
        while self.tasks:
            if progress is not None:
                self._progress(progress, loop.time())
            _, _pending = await asyncio.wait(list(self.tasks), timeout=_PROGRESS_EVERY)
        if progress is not None:
            self._progress(progress, loop.time())
            progress.write("\n")
            progress.flush()

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def _progress(self, stream: TextIO, now: float) -> None:
        # The rate is over the sending phase; it stays put while answers drain.
        end = self.finished_sending or now
        elapsed = max(min(now, end) - self.started, 1e-9)
        tally = self.tally
        line = (
            f"\rsimulate {min(elapsed, self.duration):6.1f}/{self.duration:g} s"
            f"  sent {tally.requests_sent}  acked {tally.events_acked}"
            f"  in flight {self.in_flight}  codes {tally.codes_text()}"
            f"  {tally.requests_sent / elapsed:8.1f} req/s "
        )
        # Pad to the longest line so far: \r does not erase a longer previous line.
        self.progress_width = max(self.progress_width, len(line))
        stream.write(line.ljust(self.progress_width))
        stream.flush()

    def summary(self) -> list[str]:
        tally = self.tally
        sending = max(self.finished_sending - self.started, 1e-9)
        lines = [
            f"simulate: {len(self.devices)} devices, {sending:.2f} s of sending, "
            f"asked {self.rate:g} events/s ({self.config.format}, "
            f"{'CON' if self.config.confirmable else 'NON'}, batch {self.config.batch})",
            f"requests sent {tally.requests_sent} ({tally.events_sent} events), "
            f"answered {tally.answered}, timeouts {tally.timeouts}, resets {tally.resets}, "
            f"skipped {self.skipped}",
            f"codes {tally.codes_text()}",
            f"events acked {tally.events_acked}, "
            f"sent rate {tally.events_sent / sending:.1f} events/s",
        ]
        if self.latencies:
            ordered = sorted(self.latencies)

            def pct(p: float) -> float:
                index = min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))
                return ordered[index] * 1000.0

            lines.append(
                f"latency ms p50 {pct(0.50):.2f} p90 {pct(0.90):.2f} "
                f"p99 {pct(0.99):.2f} max {ordered[-1] * 1000.0:.2f}"
            )
        retransmissions = sum(d.endpoint.retransmissions for d in self.devices)
        lines.append(f"retransmissions {retransmissions}")
        if sending > self.duration * 1.05 + 0.1:
            # Open loop fell behind its own schedule: the numbers above describe this
            # machine's limit as a load generator, not only the server's.
            lines.append(
                f"warning: sending took {sending:.2f} s for a {self.duration:g} s schedule; "
                "this client could not generate the asked rate"
            )
        return lines


async def run_simulate(
    config: ClientConfig,
    *,
    devices: int,
    rate: float,
    duration: float,
    seed: int | None,
    max_in_flight: int,
    out: TextIO,
    progress: TextIO | None = None,
) -> int:
    """Simulate ``devices`` stations sending ``rate`` events/s for ``duration`` s.

    Prints a live progress line on stderr (unless silent) and a summary on
    ``out``; returns the exit code of all outcomes.
    """
    rng = random.Random(seed)
    width = len(str(devices))
    fleet_devices: list[_Device] = []
    try:
        for index in range(1, devices + 1):
            # One endpoint (and, over coaps, one DTLS session) per simulated device.
            endpoint = await connect(config, random.Random(rng.random()), refused_is_final=False)
            fleet_devices.append(
                _Device(
                    name=f"{config.origin}-{index:0{width}d}",
                    endpoint=endpoint,
                    station=WeatherStation(random.Random(rng.random())),
                )
            )
        fleet = Fleet(
            config=config,
            devices=fleet_devices,
            rate=rate,
            duration=duration,
            max_in_flight=max_in_flight,
        )
        stop = StopFlag()
        stop.install()
        stop.on_second = fleet.cancel
        try:
            shown = None if config.silent else (progress or sys.stderr)
            await fleet.run(stop, shown)
        finally:
            stop.uninstall()
    finally:
        for device in fleet_devices:
            device.endpoint.close()
    if not config.silent:
        for line in fleet.summary():
            emit(line, out)
    return fleet.tally.exit_code
