"""The durable spool (collector/spool.py) on real SQLite files, and its config flags."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from collector.config import ConfigError, add_serve_arguments, build_config
from collector.events import Event
from collector.sinks.base import Outcome
from collector.sinks.null import NullSink
from collector.sinks.spooling import SpoolingSink
from collector.spool import Spool, SpoolError, spool_file

REPO = Path(__file__).resolve().parents[2]


def event(event_id: str, value: float | str | bool = 1.5, received_ms: int = 1_700_000_000_500):
    return Event(
        id=event_id,
        timestamp_ms=1_700_000_000_000,
        received_ms=received_ms,
        namespace="default",
        sender="demo",
        origin="probe1",
        type="temperature",
        value=value,
        unit="Cel",
        source="127.0.0.1:40000",
        worker=0,
    )


def test_append_peek_settle_round_trip_keeps_every_field_and_the_accounting(tmp_path: Path):
    spool = Spool(str(tmp_path / "s" / "spool-0.db"), max_bytes=1_000_000)
    spool.open_sync()
    batch = [event("a"), event("b", "open", received_ms=5), event("c", True), event("d", False)]
    assert spool.append_sync(batch)
    assert spool.append_sync([event("e")])
    stats = spool.stats()
    assert (stats.events, stats.oldest_received_ms) == (5, 5)
    rows = spool.peek_sync(1000)
    assert [e for _, b in rows for e in b] == [*batch, event("e")]  # values keep their types
    seqs = [seq for seq, _ in rows]
    spool.settle_sync(seqs, keep=[event("d", False)], dead=[(event("c", True), "value: conflict")])
    assert spool.stats().events == 1
    assert [e.id for _, b in spool.peek_sync(10) for e in b] == ["d"]
    (letter,) = spool.dead_letters_sync()
    assert (letter.event_id, letter.reason, letter.event) == (
        "c",
        "value: conflict",
        event("c", True),
    )
    spool.close_sync()
    # Reopened, the accounting is recomputed from the file.
    again = Spool(spool.path, max_bytes=1_000_000)
    again.open_sync()
    assert again.stats() == spool.stats()
    again.close_sync()


def test_every_event_field_survives_the_spool(tmp_path: Path):
    from dataclasses import fields, replace

    spool = Spool(str(tmp_path / "spool.db"), max_bytes=1_000_000)
    spool.open_sync()
    full = event("a")
    for f in fields(Event):  # optional fields set too, whatever they are
        if getattr(full, f.name) is None:
            full = replace(full, **{f.name: f"set-{f.name}"})
    spool.append_sync([full])
    ((_, (back,)),) = spool.peek_sync(10)
    assert back == full
    spool.close_sync()


def test_peek_returns_whole_rows_up_to_the_limit(tmp_path: Path):
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=10_000_000)
    spool.open_sync()
    for n in range(5):
        spool.append_sync([event(f"{n}-{i}") for i in range(400)])
    assert [len(b) for _, b in spool.peek_sync(1000)] == [400, 400]
    assert [len(b) for _, b in spool.peek_sync(10)] == [400]  # at least one row
    spool.close_sync()


def test_a_batch_over_the_limit_is_refused_and_nothing_is_written(tmp_path: Path):
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=2000)
    spool.open_sync()
    assert spool.append_sync([event("a")])
    used = spool.stats().bytes
    assert not spool.append_sync([event(f"x{i}") for i in range(50)])
    assert spool.stats().bytes == used
    with closing(sqlite3.connect(spool.path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 1
    spool.close_sync()


def test_dead_letters_count_against_the_limit(tmp_path: Path):
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=1500)  # one batch of 8, not two
    spool.open_sync()
    assert spool.append_sync([event(f"a{i}") for i in range(8)])
    ((seq, batch),) = spool.peek_sync(100)
    spool.settle_sync([seq], keep=[], dead=[(e, "mapping") for e in batch])
    stats = spool.stats()
    assert stats.events == 0 and stats.dead_letters == 8 and stats.dead_bytes > 0
    assert not spool.append_sync([event(f"b{i}") for i in range(8)])
    spool.close_sync()


def test_an_unopened_spool_raises_its_own_error(tmp_path: Path):
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=1000)
    with pytest.raises(SpoolError):
        spool.append_sync([event("a")])


def test_spool_file_is_per_worker():
    assert spool_file("/var/spool/iot", 3) == "/var/spool/iot/spool-3.db"


def test_a_committed_append_survives_kill_9(tmp_path: Path):
    """A child appends, prints, and is killed -9 at once: the batch is in the file."""
    path = tmp_path / "spool.db"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.sinks.test_spool import event
        from collector.spool import Spool
        spool = Spool({str(path)!r}, max_bytes=10**7)
        spool.open_sync()
        spool.append_sync([event(f"k{{i}}") for i in range(100)])
        print("committed", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    spool = Spool(str(path), max_bytes=10**7)
    spool.open_sync()
    assert spool.stats().events == 100
    spool.close_sync()


def test_spooling_sink_on_a_store_that_takes_everything_never_spools(tmp_path: Path):
    async def main() -> None:
        sink = SpoolingSink(
            NullSink(), Spool(str(tmp_path / "s.db"), max_bytes=10**6), ack_delay=0.5
        )
        await sink.start()
        try:
            results = await sink.write([event("a"), event("b")])
            assert [r.outcome for r in results] == [Outcome.STORED] * 2
            assert sink.spool.empty and sink.degraded is None
            assert await sink.healthy()
        finally:
            await sink.close()

    asyncio.run(main())


def test_spooling_sink_write_ahead_spools_then_forwards(tmp_path: Path):
    async def main() -> None:
        spool = Spool(str(tmp_path / "s.db"), max_bytes=10**6)
        sink = SpoolingSink(NullSink(), spool, ack_delay=0.5, write_ahead=True)
        await sink.start()
        try:
            results = await sink.write([event("a"), event("b")])
            assert [r.outcome for r in results] == [Outcome.STORED] * 2
            for _ in range(100):
                if spool.empty:
                    break
                await asyncio.sleep(0.05)
            assert spool.empty and sink.forwarded == 2
        finally:
            await sink.close()

    asyncio.run(main())


def config(*argv: str, **environ: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return build_config(parser.parse_args(list(argv)), environ)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1000", 1000), ("512M", 512 * 1024**2), ("1G", 1024**3), ("1.5GiB", 3 * 1024**3 // 2),
     ("64k", 65536), ("2MB", 2 * 1024**2)],
)  # fmt: skip
def test_spool_max_bytes_takes_binary_suffixes(text: str, expected: int):
    assert config("--spool-max-bytes", text).spool_max_bytes == expected


@pytest.mark.parametrize("text", ["0", "-5M", "lots", "1X", "nanG"])
def test_spool_max_bytes_refuses_nonsense_with_one_line(text: str):
    with pytest.raises(ConfigError, match="--spool-max-bytes"):
        config(f"--spool-max-bytes={text}")


def test_spool_flags_have_env_twins():
    c = config(COLLECTOR_SPOOL_PATH="/tmp/sp", COLLECTOR_SPOOL_MAX_BYTES="10M")
    assert (c.spool_path, c.spool_max_bytes) == ("/tmp/sp", 10 * 1024**2)
    assert config().spool_path is None
