"""The durable local spool: batches the primary store could not take, kept on disk.

Strategy. One SQLite file per worker (`<dir>/spool-<worker>.db`, WAL, one transaction
per operation, `synchronous` as for the sqlite sink), so workers never contend for a
write lock and a worker restarted after kill -9 reopens exactly its own backlog. Two
tables:

- `batches`: one row per spooled batch; the events are one orjson blob (the `Event`
  fields in order), `bytes` its length. Rows are read oldest first, forwarded, and
  deleted only once the store has judged every item (`settle`): what the store
  stored or already had goes, what it rejected moves to `dead_letters`, what it could
  not take now is written back as a new row. All of that is one transaction, so a
  crash at any point leaves each event either still spooled or settled, never lost;
  an event spooled twice is harmless because its id is deterministic and the store
  writes with `create`.
- `dead_letters`: events the store refused item by item (4.00-class: a mapping
  conflict), each with its reason and the time it died. Never dropped silently: an
  operator reads them with `sqlite3` and deletes them.

Byte accounting counts the event blobs of both tables (pending plus dead letters)
against `max_bytes`; `append` refuses a batch that would exceed it, and the caller
answers 5.03 as without a spool. SQLite's own overhead (pages, indices, the WAL) comes
on top, and freed pages are reused rather than returned to the filesystem.

Any SQLite error (a full disk, an I/O error) makes the operation fail as a whole
(`SpoolError`) with nothing half-written; the next operation tries again, so service
resumes by itself when space returns.

The methods named `*_sync` block; the async methods run them on the spool's own
thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Final, TypeVar

import orjson

from collector.events import Event

__all__ = ["DeadLetter", "Spool", "SpoolError", "SpoolStats", "spool_file"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    spooled_ms INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    events INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    dead_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    event BLOB NOT NULL
);
"""

T = TypeVar("T")

_SYNCHRONOUS: Final = {"full": "FULL", "normal": "NORMAL"}


class SpoolError(Exception):
    """The spool could not complete an operation (disk full, I/O error); nothing changed."""


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds: pending events and bytes, dead letters, the oldest age."""

    events: int
    bytes: int
    dead_letters: int
    dead_bytes: int
    oldest_received_ms: int | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: str
    reason: str
    dead_ms: int
    event: Event


def spool_file(directory: str, worker: int) -> str:
    """The spool database of one worker inside the spool directory."""
    return os.path.join(directory, f"spool-{worker}.db")


_FIELD_NAMES: Final = tuple(f.name for f in fields(Event))


def _encode(events: Sequence[Event]) -> bytes:
    return orjson.dumps([_fields(e) for e in events])


def _fields(e: Event) -> list[object]:
    # Every field, in declaration order: a field added to Event later (with a default)
    # still decodes from rows written before it existed.
    return [getattr(e, name) for name in _FIELD_NAMES]


def _decode(blob: bytes) -> list[Event]:
    return [Event(*row) for row in orjson.loads(blob)]


def _reason(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"spool: {name or type(exc).__name__}"


class Spool:
    """A worker's spool file. `max_bytes` bounds what it holds (see the module docstring)."""

    def __init__(self, path: str, *, max_bytes: int, synchronous: str = "full") -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.path = path
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Kept in memory, recomputed from the file at open and updated by each commit.
        self._events = 0
        self._bytes = 0
        self._dead = 0
        self._dead_bytes = 0
        self._oldest: dict[int, int] = {}  # seq -> oldest received_ms of that row

    # --- blocking operations ---------------------------------------------------------

    def open_sync(self) -> None:
        """Create or open the file, WAL, schema; load the accounting. Raises SpoolError."""
        if self._conn is not None:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.synchronous]}")
            conn.executescript(SCHEMA)
            events, size = conn.execute(
                "SELECT COALESCE(SUM(events), 0), COALESCE(SUM(bytes), 0) FROM batches"
            ).fetchone()
            dead, dead_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM dead_letters"
            ).fetchone()
            oldest = dict(conn.execute("SELECT seq, oldest_ms FROM batches").fetchall())
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        self._conn = conn
        self._events, self._bytes = int(events), int(size)
        self._dead, self._dead_bytes = int(dead), int(dead_bytes)
        self._oldest = {int(k): int(v) for k, v in oldest.items()}

    def append_sync(self, events: Sequence[Event]) -> bool:
        """Spool one batch durably. False when it would exceed `max_bytes`.

        Raises SpoolError when SQLite fails (nothing is written then).
        """
        if not events:
            return True
        body = _encode(events)
        if self._bytes + self._dead_bytes + len(body) > self.max_bytes:
            return False
        oldest = min(e.received_ms for e in events)
        conn = self._need()
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO batches (spooled_ms, oldest_ms, events, bytes, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (_now_ms(), oldest, len(events), len(body), body),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise SpoolError(_reason(exc)) from exc
        self._events += len(events)
        self._bytes += len(body)
        self._oldest[int(cur.lastrowid or 0)] = oldest
        return True

    def peek_sync(self, max_events: int) -> list[tuple[int, list[Event]]]:
        """The oldest rows, up to about `max_events` events (at least one row if any)."""
        conn = self._need()
        rows: list[tuple[int, list[Event]]] = []
        total = 0
        try:
            for seq, body in conn.execute("SELECT seq, body FROM batches ORDER BY seq"):
                events = _decode(body)
                if rows and total + len(events) > max_events:
                    break
                rows.append((int(seq), events))
                total += len(events)
                if total >= max_events:
                    break
        except sqlite3.Error as exc:
            raise SpoolError(_reason(exc)) from exc
        return rows

    def settle_sync(
        self,
        seqs: Sequence[int],
        keep: Sequence[Event],
        dead: Sequence[tuple[Event, str]],
    ) -> None:
        """One transaction: delete rows `seqs`, spool `keep` again, dead-letter `dead`.

        `keep` is what the store could not take yet (it goes back, with its original
        receive times); `dead` pairs an event with the store's reason. Raises
        SpoolError (and changes nothing) when SQLite fails.
        """
        conn = self._need()
        now = _now_ms()
        keep_body = _encode(keep) if keep else b""
        keep_oldest = min((e.received_ms for e in keep), default=0)
        dead_rows = [
            (e.id, reason[:200], now, e.received_ms, blob, len(blob))
            for e, reason in dead
            for blob in (orjson.dumps(_fields(e)),)
        ]
        try:
            conn.execute("BEGIN IMMEDIATE")
            removed_events = removed_bytes = 0
            for seq in seqs:
                row = conn.execute(
                    "SELECT events, bytes FROM batches WHERE seq = ?", (seq,)
                ).fetchone()
                if row is None:
                    continue
                removed_events += int(row[0])
                removed_bytes += int(row[1])
                conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            new_seq = None
            if keep:
                cur = conn.execute(
                    "INSERT INTO batches (spooled_ms, oldest_ms, events, bytes, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (now, keep_oldest, len(keep), len(keep_body), keep_body),
                )
                new_seq = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO dead_letters (event_id, reason, dead_ms, received_ms, event, bytes)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                dead_rows,
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise SpoolError(_reason(exc)) from exc
        self._events += len(keep) - removed_events
        self._bytes += len(keep_body) - removed_bytes
        for seq in seqs:
            self._oldest.pop(seq, None)
        if new_seq is not None:
            self._oldest[new_seq] = keep_oldest
        self._dead += len(dead_rows)
        self._dead_bytes += sum(r[5] for r in dead_rows)

    def dead_letters_sync(self, limit: int = 1000) -> list[DeadLetter]:
        """The oldest dead letters (for operators and tests)."""
        conn = self._need()
        try:
            rows = conn.execute(
                "SELECT event_id, reason, dead_ms, event FROM dead_letters ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(_reason(exc)) from exc
        return [
            DeadLetter(str(i), str(r), int(ms), Event(*orjson.loads(blob)))
            for i, r, ms, blob in rows
        ]

    def close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _need(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError("spool: not open")
        return self._conn

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection stays usable; the next BEGIN tells

    # --- accounting (no I/O) -----------------------------------------------------------

    def stats(self) -> SpoolStats:
        return SpoolStats(
            events=self._events,
            bytes=self._bytes,
            dead_letters=self._dead,
            dead_bytes=self._dead_bytes,
            oldest_received_ms=min(self._oldest.values()) if self._oldest else None,
        )

    @property
    def empty(self) -> bool:
        return self._events == 0

    # --- the same on the spool's own thread -------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor was shut down by close()
            raise SpoolError("spool: closed") from exc

    async def open(self) -> None:
        await self._run(self.open_sync)

    async def append(self, events: Sequence[Event]) -> bool:
        return await self._run(self.append_sync, events)

    async def peek(self, max_events: int) -> list[tuple[int, list[Event]]]:
        return await self._run(self.peek_sync, max_events)

    async def settle(
        self, seqs: Sequence[int], keep: Sequence[Event], dead: Sequence[tuple[Event, str]]
    ) -> None:
        await self._run(self.settle_sync, seqs, keep, dead)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            self.close_sync()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.close_sync)
        finally:
            executor.shutdown(wait=True)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
