"""The sqlite sink against real files, real processes and the real sqlite3 CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest

from collector.events import Event
from collector.sinks.base import Outcome, Result, StoreUnavailable
from collector.sinks.sqlite import SqliteSink

REPO = Path(__file__).resolve().parents[2]


def event(event_id: str, value: float | str | bool = 1.5, unit: str | None = "Cel") -> Event:
    return Event(
        id=event_id,
        timestamp_ms=1_700_000_000_000,
        received_ms=1_700_000_000_500,
        namespace="default",
        sender="demo",
        origin="probe1",
        type="temperature",
        value=value,
        unit=unit,
        source="127.0.0.1:40000",
        worker=3,
    )


def rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def outcomes(results: Sequence[Result]) -> list[Outcome]:
    return [r.outcome for r in results]


def test_batch_is_stored_with_every_column(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "events.db"  # parents are created

    async def main() -> list[Result]:
        sink = SqliteSink(str(path))
        await sink.start()
        try:
            batch = [event("a"), event("b", "open", None), event("c", True), event("d", False)]
            return list(await sink.write(batch))
        finally:
            await sink.close()

    assert outcomes(asyncio.run(main())) == [Outcome.STORED] * 4
    common = ("default", "demo", "probe1", "temperature")
    tail = ("127.0.0.1:40000", 3, None, None)  # no client id, no identity
    ts = (1_700_000_000_000, 1_700_000_000_500)
    assert rows(path) == [
        ("a", *ts, *common, 1.5, None, None, "Cel", *tail),
        ("b", *ts, *common, None, "open", None, None, *tail),
        ("c", *ts, *common, None, None, 1, "Cel", *tail),
        ("d", *ts, *common, None, None, 0, "Cel", *tail),
    ]


def test_schema_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def main() -> None:
        for _ in range(2):  # start is idempotent on an existing file
            sink = SqliteSink(str(path))
            await sink.start()
            await sink.close()

    asyncio.run(main())
    with closing(sqlite3.connect(path)) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        indexes = {r[1]: r for r in conn.execute("PRAGMA index_list(events)")}
        indexed = {
            name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")] for name in indexes
        }
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert columns == [
        "id",
        "ts_ms",
        "received_ms",
        "namespace",
        "sender",
        "origin",
        "type",
        "value",
        "value_text",
        "value_bool",
        "unit",
        "source",
        "worker",
        "client_id",
        "identity",
    ]
    leading = {cols[0] for cols in indexed.values()}
    assert {"id", "ts_ms", "sender", "origin", "type"} <= leading
    assert mode == "wal"


def test_duplicates_are_reported_and_never_stored_twice(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def main() -> tuple[list[Result], list[Result]]:
        sink = SqliteSink(str(path))
        await sink.start()
        try:
            first = await sink.write([event("a"), event("b"), event("a", 9.0)])
            second = await sink.write([event("b"), event("c")])
            return list(first), list(second)
        finally:
            await sink.close()

    first, second = asyncio.run(main())
    assert outcomes(first) == [Outcome.STORED, Outcome.STORED, Outcome.DUPLICATE]
    assert outcomes(second) == [Outcome.DUPLICATE, Outcome.STORED]
    stored = rows(path)
    assert [r[0] for r in stored] == ["a", "b", "c"]
    assert stored[0][7] == 1.5  # the first "a" won; the duplicate changed nothing


def test_concurrent_writes_on_one_sink(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def main() -> list[list[Result]]:
        sink = SqliteSink(str(path))
        await sink.start()
        try:
            batches = [[event(f"{b}-{i}") for i in range(20)] for b in range(10)]
            return [list(r) for r in await asyncio.gather(*(sink.write(b) for b in batches))]
        finally:
            await sink.close()

    results = asyncio.run(main())
    assert all(outcomes(r) == [Outcome.STORED] * 20 for r in results)
    assert len(rows(path)) == 200


@pytest.mark.parametrize(("mode", "pragma"), [("full", 2), ("normal", 1)])
def test_synchronous_mode_is_applied(tmp_path: Path, mode: str, pragma: int) -> None:
    async def main() -> int:
        sink = SqliteSink(str(tmp_path / "events.db"), synchronous=mode)
        await sink.start()
        try:
            assert sink._conn is not None
            return int(sink._conn.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            await sink.close()

    assert asyncio.run(main()) == pragma


def test_unknown_synchronous_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteSink("x.db", synchronous="off")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 CLI")
def test_sqlite3_cli_reads_while_the_collector_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    def cli(sql: str) -> str:
        done = subprocess.run(
            ["sqlite3", "-bail", "-batch", str(path), sql],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout.strip()

    async def main() -> None:
        sink = SqliteSink(str(path))
        await sink.start()
        try:
            results = await sink.write([event("a"), event("b")])
            assert outcomes(list(results)) == [Outcome.STORED] * 2
            # Committed before write() returned: another process sees the rows.
            assert cli("SELECT id FROM events ORDER BY id") == "a\nb"
            # A writer mid-transaction (another worker) does not block the reader,
            # and the reader sees only committed rows.
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute(
                    "INSERT INTO events (id, ts_ms, received_ms, namespace, sender, origin,"
                    " type, source, worker) VALUES ('z', 0, 0, 'n', 's', 'o', 't', 'x', 0)"
                )
                assert cli("SELECT count(*) FROM events") == "2"
                assert cli("PRAGMA quick_check") == "ok"
                other.execute("COMMIT")
            finally:
                other.close()
            assert cli("SELECT count(*) FROM events") == "3"
            # The sink still writes after the CLI came and went.
            results = await sink.write([event("c")])
            assert outcomes(list(results)) == [Outcome.STORED]
        finally:
            await sink.close()

    asyncio.run(main())
    assert [r[0] for r in rows(path)] == ["a", "b", "c", "z"]


WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    from collector.events import Event
    from collector.sinks.sqlite import SqliteSink

    path, worker, batches, size, span = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])

    def event(i):
        return Event(f"id-{i}", i, i, "default", "s", "o", "t", float(i), None, "h:1", worker)

    async def main():
        sink = SqliteSink(path, worker=worker)
        await sink.start()
        counts = {"stored": 0, "duplicate": 0, "rejected": 0, "failed": 0}
        try:
            for b in range(batches):
                # Each writer walks the same id space from a different offset.
                start = (worker * 37 + b * size) % span
                batch = [event((start + k) % span) for k in range(size)]
                for result in await sink.write(batch):
                    counts[result.outcome.value] += 1
        finally:
            await sink.close()
        print(json.dumps(counts))

    asyncio.run(main())
    """
)


@pytest.mark.integration
def test_several_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"  # fresh: the writers also race to create the schema
    writers, batches, size, span = 4, 15, 20, 400
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(batches), str(size), str(span)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(writers)
    ]
    totals = {"stored": 0, "duplicate": 0, "rejected": 0, "failed": 0}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        for key, count in json.loads(out).items():
            totals[key] += count
    stored_ids = [r[0] for r in rows(path)]
    assert len(stored_ids) == len(set(stored_ids))  # no id twice
    assert totals["failed"] == 0 and totals["rejected"] == 0
    assert totals["stored"] == len(stored_ids)  # each row reported STORED exactly once
    assert totals["stored"] + totals["duplicate"] == writers * batches * size
    expected = {
        f"id-{(w * 37 + b * size + k) % span}"
        for w in range(writers)
        for b in range(batches)
        for k in range(size)
    }
    assert set(stored_ids) == expected


def test_lock_held_beyond_the_timeout_fails_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def main() -> None:
        sink = SqliteSink(str(path), busy_timeout_ms=50)
        await sink.start()
        try:
            assert await sink.healthy()
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            try:
                results = list(await sink.write([event("a"), event("b")]))
                assert outcomes(results) == [Outcome.FAILED] * 2
                assert results[0].reason == "sqlite: SQLITE_BUSY"
                assert not await sink.healthy()
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            # The lock is gone: the same batch now goes in, and health recovers.
            assert (
                outcomes(list(await sink.write([event("a"), event("b")]))) == [Outcome.STORED] * 2
            )
            assert await sink.healthy()
        finally:
            await sink.close()

    asyncio.run(main())
    assert [r[0] for r in rows(path)] == ["a", "b"]


DISK_FULL = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys
    from collector.events import Event
    from collector.sinks.sqlite import SqliteSink

    path = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit get EFBIG

    def event(i):
        return Event(f"id-{i:06d}", i, i, "default", "s", "o", "t", "x" * 1000, None, "h:1", 0)

    async def main():
        sink = SqliteSink(path)
        await sink.start()
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # a full disk
        report = []
        try:
            for b in range(100):
                results = await sink.write([event(b * 10 + k) for k in range(10)])
                report.append([[r.outcome.value, r.reason] for r in results])
                if results[0].outcome.value == "failed":
                    report.append(["healthy", await sink.healthy()])
                    break
        finally:
            await sink.close()
        print(json.dumps(report))

    asyncio.run(main())
    """
)


@pytest.mark.integration
def test_full_disk_fails_the_batch_and_keeps_what_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr  # the sink never raised
    report = json.loads(done.stdout)
    assert report[-1] == ["healthy", False]
    *stored_batches, failed_batch = report[:-1]
    assert stored_batches, "some batches fit before the limit"
    assert all(r == ["stored", ""] for batch in stored_batches for r in batch)
    assert all(r[0] == "failed" and r[1].startswith("sqlite: SQLITE_") for r in failed_batch)
    # Every acknowledged event is in the file, and nothing of the failed batch is.
    assert len(rows(path)) == 10 * len(stored_batches)


def test_unusable_path_raises_store_unavailable_and_writes_fail(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")  # root ignores permissions, so use a file as the parent

    async def main() -> None:
        sink = SqliteSink(str(not_a_dir / "events.db"))
        with pytest.raises(StoreUnavailable, match="sqlite"):
            await sink.start()
        results = list(await sink.write([event("a")]))
        assert outcomes(results) == [Outcome.FAILED]
        assert results[0].reason == "sqlite: not started"
        assert not await sink.healthy()
        await sink.close()

    asyncio.run(main())


def test_a_file_that_is_not_a_database_raises_store_unavailable(tmp_path: Path) -> None:
    garbage = tmp_path / "events.db"
    garbage.write_bytes(b"not a database" * 512)

    async def main() -> None:
        sink = SqliteSink(str(garbage))
        with pytest.raises(StoreUnavailable, match="sqlite"):
            await sink.start()
        await sink.close()

    asyncio.run(main())
    assert garbage.read_bytes() == b"not a database" * 512  # left as it was


def test_write_after_close_fails_without_raising(tmp_path: Path) -> None:
    async def main() -> None:
        sink = SqliteSink(str(tmp_path / "events.db"))
        await sink.start()
        assert await sink.write([]) == []
        await sink.close()
        await sink.close()  # twice is harmless
        assert outcomes(list(await sink.write([event("a")]))) == [Outcome.FAILED]
        assert not await sink.healthy()

    asyncio.run(main())
