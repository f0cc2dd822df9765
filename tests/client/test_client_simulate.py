"""The simulator's pure parts: plausible weather, bounded latency memory, and the
schedule against a scripted peer (open loop, round-robin over own source ports)."""

from __future__ import annotations

import asyncio
import io
import random
import re
import statistics

import pytest

import coap
from coap import Code, Message, Type
from coap.transmission import TransmissionParameters
from collector.client import simulate
from collector.client.commands import ClientConfig
from collector.client.simulate import Fleet, WeatherStation, run_simulate


def test_temperature_follows_a_daily_cycle() -> None:
    station = WeatherStation(random.Random(3))
    day = 86400 * 20_000
    afternoon = [station.temperature(day + 15 * 3600 + i) for i in range(50)]
    night = [station.temperature(day + 3 * 3600 + i) for i in range(50)]
    assert statistics.mean(afternoon) - statistics.mean(night) > 4  # swing >= 3 each way
    assert abs(statistics.mean(afternoon) - (station.mean_temp + station.swing)) < 0.5


def test_readings_cycle_types_and_stay_in_range() -> None:
    station = WeatherStation(random.Random(5))
    readings = [station.reading(1_764_000_000 + i * 60) for i in range(3000)]
    kinds = [kind for kind, _, _ in readings]
    assert kinds[:3] in (
        ["temperature", "humidity", "pressure"],
        ["humidity", "pressure", "temperature"],
        ["pressure", "temperature", "humidity"],
    )
    by_kind: dict[str, list[float]] = {}
    for kind, value, unit in readings:
        by_kind.setdefault(kind, []).append(value)
        assert unit == {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}[kind]
    assert all(5 <= v <= 100 for v in by_kind["humidity"])
    assert all(960 <= v <= 1045 for v in by_kind["pressure"])
    assert all(-20 < v < 45 for v in by_kind["temperature"])


def test_same_seed_same_readings() -> None:
    a, b = WeatherStation(random.Random(9)), WeatherStation(random.Random(9))
    assert [a.reading(1e9) for _ in range(10)] == [b.reading(1e9) for _ in range(10)]


def test_latency_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "LATENCY_SAMPLES", 100)
    fleet = Fleet(config=ClientConfig(), devices=[], rate=1, duration=1, max_in_flight=1)
    for i in range(10_000):
        fleet._record_latency(float(i))
    assert len(fleet.latencies) == 100
    assert fleet.answered == 10_000
    # A uniform sample of 0..9999: most of it comes from beyond the first 100.
    assert sum(v >= 100 for v in fleet.latencies) > 80


@pytest.mark.integration
def test_fleet_spreads_over_devices_and_counts_outcomes() -> None:
    """A scripted peer answers 2.01 except every 5th request (4.00): the summary
    and exit code must say so; each device uses its own source port."""

    class Peer(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.sources: list[int] = []
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            msg = coap.decode(data)
            if msg.code != Code.POST or self.transport is None:
                return
            self.sources.append(addr[1])
            code = Code.BAD_REQUEST if len(self.sources) % 5 == 0 else Code.CREATED
            self.transport.sendto(coap.encode(Message(Type.ACK, code, msg.mid, msg.token)), addr)

    async def scenario() -> tuple[int, str, Peer]:
        peer = Peer()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: peer, local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        config = ClientConfig(
            port=port, origin="st", batch=2, timeout=5, params=TransmissionParameters()
        )
        out, progress = io.StringIO(), io.StringIO()
        code = await run_simulate(
            config,
            devices=4,
            rate=40,
            duration=1,
            seed=1,
            max_in_flight=100,
            out=out,
            progress=progress,
        )
        transport.close()
        assert "\r" in progress.getvalue()
        return code, out.getvalue(), peer

    code, summary, peer = asyncio.run(scenario())
    assert code == 1  # some 4.00 answers
    assert "requests sent 20 (40 events), answered 20" in summary
    assert re.search(r"codes 2\.01=16 4\.00=4\b", summary)
    assert "events acked 32" in summary
    assert len(set(peer.sources)) == 4
    # Round-robin: each device sends every 4th request.
    assert [peer.sources.count(p) for p in set(peer.sources)] == [5, 5, 5, 5]
