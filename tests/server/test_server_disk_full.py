"""A full filesystem under the sqlite sink and under the spool: requests get 5.03 and
never 2.01, nothing acknowledged is damaged, and service resumes without a restart
when space returns. Each test mounts a small tmpfs of its own (root only; CI is root)
and unmounts it in teardown."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from coap import Code
from collector.events import Event

from .conftest import Collector, event, start_collector

_EVENT_FIELDS = [f.name for f in fields(Event)]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; returns it (delete it to free)."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):
            while f.write(b"\0" * 512):
                pass
    return filler


def post(server: Collector, n: int) -> tuple[list[str], list[int]]:
    acked, codes = [], []
    with server.client() as client:
        for _ in range(n):
            e = event()
            reply = client.post_events(e, timeout=10)
            codes.append(reply.code)
            if reply.code == Code.CREATED:
                acked.append(e["id"])
    return acked, codes


def until_created(server: Collector, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        acked, _ = post(server, 1)
        if acked:
            return acked
        time.sleep(0.5)
    raise AssertionError("no 2.01 after space returned")


def check_db(path: Path, table: str, ids: list[str], column: str) -> None:
    """The file passes integrity_check and holds every id in `ids`."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found = set()
        for row in conn.execute(f"SELECT {column} FROM {table}"):
            found.add(row[0])
    missing = set(ids) - found
    assert not missing, f"{len(missing)} acknowledged events damaged or missing"


def test_sqlite_sink_on_a_full_disk_answers_5_03_and_resumes(tmp_path: Path, small_disk: Path):
    db = small_disk / "events.db"
    server = start_collector(tmp_path / "c", sqlite_path=str(db))
    try:
        before, _ = post(server, 50)
        assert len(before) == 50
        filler = fill(small_disk)
        # Enough to grow the WAL past what is left; what is still acknowledged then
        # (pages SQLite had in hand) must be intact like the rest.
        during, codes = post(server, 60)
        assert Code.CREATED not in codes[-20:], "2.01 on a full disk"
        assert Code.SERVICE_UNAVAILABLE in codes
        filler.unlink()
        after = until_created(server, 30)
        assert server.proc.poll() is None  # no restart
        more, codes = post(server, 20)
        assert codes == [Code.CREATED] * 20
    finally:
        server.terminate()
    check_db(db, "events", before + during + after + more, "client_id")


def test_spool_on_a_full_disk_answers_5_03_and_resumes(tmp_path: Path, small_disk: Path):
    # The store is an Elasticsearch that is not there (nothing listens on port 9):
    # every batch goes to the spool, which lives on the small disk.
    spool = small_disk / "spool"
    server = start_collector(
        tmp_path / "c",
        sink="elasticsearch",
        es_url="http://127.0.0.1:9",
        store_wait=0,
        spool_path=str(spool),
        start_timeout=60,
    )
    try:
        before, _ = post(server, 50)
        assert len(before) == 50
        filler = fill(small_disk)
        during, codes = post(server, 60)
        assert Code.CREATED not in codes[-20:], "2.01 on a full disk"
        assert Code.SERVICE_UNAVAILABLE in codes
        filler.unlink()
        after = until_created(server, 30)
        assert server.proc.poll() is None
        more, codes = post(server, 20)
        assert codes == [Code.CREATED] * 20
    finally:
        server.terminate()
    (path,) = spool.glob("spool-*.db")
    ids: list[Any] = before + during + after + more
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        import orjson

        # Spooled rows hold whole events; the client's id is the `client_id` field.
        found = {
            dict(zip(_EVENT_FIELDS, row, strict=False))["client_id"]
            for (body,) in conn.execute("SELECT body FROM batches")
            for row in orjson.loads(body)
        }
    assert set(ids) <= found
