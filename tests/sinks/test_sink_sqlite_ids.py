"""The sqlite sink and client ids: a reused key with other content is a CONFLICT, the
same event again a DUPLICATE (issue 11); identity and client id are stored (issue 15);
a file made by an older collector gains the new columns."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson

from collector.events import DEFAULT_LIMITS, Event, decode_events
from collector.identity import Identity
from collector.sinks.base import Outcome
from collector.sinks.sqlite import SqliteSink

NOW_MS = 1_764_079_704_771
BASE: dict[str, Any] = {
    "sender": "dev-17",
    "origin": "probe1",
    "payload": {"type": "temperature", "value": 21.5, "unit": "Cel"},
    "id": "reading-1",
}


def decoded(body: dict[str, Any], received_ms: int = NOW_MS, **kw: Any) -> Event:
    [event] = decode_events(
        orjson.dumps(body),
        None,
        source="127.0.0.1:1",
        mid=1,
        received_ms=received_ms,
        worker=0,
        limits=DEFAULT_LIMITS,
        **kw,
    )
    return event


def write_batches(path: Path, *batches: Sequence[Event]) -> list[list[Outcome]]:
    async def main() -> list[list[Outcome]]:
        sink = SqliteSink(str(path))
        await sink.start()
        try:
            return [[r.outcome for r in await sink.write(b)] for b in batches]
        finally:
            await sink.close()

    return asyncio.run(main())


def stored(path: Path, where: str = "1") -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM events WHERE {where}")]


def test_reused_client_id_with_other_content_is_a_conflict_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e.db"
    first = decoded(BASE)
    squat = decoded({**BASE, "payload": {"type": "temperature", "value": 999.0, "unit": "Cel"}})
    same = decoded(BASE, received_ms=NOW_MS + 60_000)  # a retry, a minute later
    assert write_batches(path, [first], [squat, same]) == [
        [Outcome.STORED],
        [Outcome.CONFLICT, Outcome.DUPLICATE],
    ]
    [row] = stored(path)
    assert (row["value"], row["client_id"], row["id"]) == (21.5, "reading-1", first.id)


def test_every_difference_in_content_is_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    ts = NOW_MS - 1000
    first = decoded({**BASE, "timestamp": ts / 1000})
    variants = [
        {**BASE, "origin": "probe2"},
        {**BASE, "payload": {"type": "humidity", "value": 21.5, "unit": "Cel"}},
        {**BASE, "payload": {"type": "temperature", "value": "21.5", "unit": "Cel"}},
        {**BASE, "payload": {"type": "temperature", "value": True, "unit": "Cel"}},
        {**BASE, "payload": {"type": "temperature", "value": 21.5}},
        {**BASE, "timestamp": (ts - 1000) / 1000},
    ]
    same = [{**BASE, "timestamp": ts / 1000}, BASE]  # no timestamp: any stored time agrees
    batch = [first, *(decoded(v) for v in variants), *(decoded(v) for v in same)]
    assert write_batches(path, batch) == [
        [Outcome.STORED, *[Outcome.CONFLICT] * len(variants), *[Outcome.DUPLICATE] * 2]
    ]


def test_boolean_and_string_values_compare_by_kind(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    batch = []
    for n, value in enumerate([False, "open", 0.0]):
        body = {**BASE, "id": f"k{n}", "payload": {"type": "t", "value": value}}
        batch += [decoded(body), decoded(body)]
    batch.append(decoded({**BASE, "id": "k2", "payload": {"type": "t", "value": -0.0}}))
    assert write_batches(path, batch) == [
        [Outcome.STORED, Outcome.DUPLICATE] * 3 + [Outcome.DUPLICATE]
    ]


def test_one_devices_client_id_never_occupies_anothers(tmp_path: Path) -> None:
    # issue 15: an attacker posting the victim's id first made the victim's reading vanish.
    path = tmp_path / "e.db"
    attacker = decoded({**BASE, "sender": "attacker", "payload": {"type": "t", "value": 999}})
    victim = decoded(BASE)
    assert write_batches(path, [attacker], [victim]) == [[Outcome.STORED], [Outcome.STORED]]
    values = {r["sender"]: r["value"] for r in stored(path, "client_id = 'reading-1'")}
    assert values == {"attacker": 999.0, "dev-17": 21.5}


def test_identity_is_stored_and_null_on_plain_coap(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    dev17 = Identity("dev-17-psk", "lab", "dev-17")
    authed = decoded({**BASE, "id": "a"}, identity=dev17)
    plain = decoded({**BASE, "id": "p"})
    assert write_batches(path, [authed, plain]) == [[Outcome.STORED] * 2]
    got = {r["client_id"]: (r["identity"], r["namespace"]) for r in stored(path)}
    assert got == {"a": ("dev-17-psk", "lab"), "p": (None, "default")}


OLD_SCHEMA = """
CREATE TABLE events (
    id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    namespace TEXT NOT NULL, sender TEXT NOT NULL, origin TEXT NOT NULL, type TEXT NOT NULL,
    value REAL, value_text TEXT, value_bool INTEGER, unit TEXT, source TEXT NOT NULL,
    worker INTEGER NOT NULL
);
INSERT INTO events VALUES ('reading-1', 1, 2, 'default', 'dev-17', 'probe1', 'temperature',
    21.5, NULL, NULL, 'Cel', 'h:1', 0);
"""


def test_a_file_from_an_older_collector_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA)
    event = decoded(BASE)
    assert write_batches(path, [event], [event]) == [[Outcome.STORED], [Outcome.DUPLICATE]]
    rows = {r["id"]: (r["client_id"], r["identity"]) for r in stored(path)}
    assert rows == {"reading-1": (None, None), event.id: ("reading-1", None)}
    with closing(sqlite3.connect(path)) as conn:
        indices = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
    assert "events_client_id" in indices


def test_a_conflict_found_while_draining_the_spool_is_dead_lettered_not_dropped(
    tmp_path: Path,
) -> None:
    # Write-ahead acks from the spool first; the reuse shows only when the forwarder
    # writes to the store: that event must stay findable, with its client id and identity.
    from collector.sinks.spooling import SpoolingSink
    from collector.spool import Spool

    path = tmp_path / "e.db"
    first = decoded(BASE)
    assert write_batches(path, [first]) == [[Outcome.STORED]]
    dev17 = Identity("psk-17", "default", "dev-17")
    reused = decoded({**BASE, "id": "r", "payload": {"type": "t", "value": 1}}, identity=dev17)
    taken = decoded({**BASE, "id": "r"}, identity=dev17)
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=10**6)

    async def main() -> None:
        primary = SqliteSink(str(path))
        sink = SpoolingSink(primary, spool, ack_delay=0.5, write_ahead=True)
        await sink.start()
        try:
            await primary.write([taken])
            results = await sink.write([reused, first])
            assert [r.outcome for r in results] == [Outcome.STORED] * 2  # acked: spooled
            for _ in range(200):
                if spool.empty:
                    break
                await asyncio.sleep(0.05)
            assert spool.empty
            (letter,) = spool.dead_letters_sync()
            assert letter.event == reused and letter.event.client_id == "r"
            assert letter.event.identity == "psk-17" and letter.reason.startswith("id:")
        finally:
            await sink.close()

    asyncio.run(main())
