"""The `sqlite` sink: the embedded default store, one database file on local disk.

Several worker processes share one file; each opens its own connection. The file is
in WAL mode, so writers serialise on SQLite's write lock (waiting up to
`busy_timeout_ms`) while readers, such as the `sqlite3` CLI run by an operator, read
the last committed state at any time without blocking or being blocked. SQLite's lock
is unfair between processes, so the workers take turns through a turnstile of their
own (collector/sinks/turns.py, a `<db>-turns` sidecar file) before each transaction.

Each `write` is one transaction (`BEGIN IMMEDIATE` … `COMMIT`) on a thread of its
own (one per sink), so the event loop never blocks on disk. Every event is inserted
with `ON CONFLICT(id) DO NOTHING` and judged by its own row count: a row written is
STORED, an id already present (from an earlier batch, another worker or earlier in
the same batch) is DUPLICATE and never a second row. An id present under a client
`id` is first compared with the stored row (`Event.reading`, `Event.same_time`): other
content is CONFLICT (4.09), and the stored row stays. Results are returned only after
`COMMIT` has returned. Any SQLite error (disk full, I/O error, lock held beyond the
busy timeout) rolls the batch back and reports FAILED for all its events, with a
short reason; `write` never raises.

What an ack then promises depends on `synchronous` (SQLite's PRAGMA, in WAL mode):

- ``"full"`` (default): the WAL is fsynced at every commit, so an acknowledged event
  survives a crash of the collector, of the operating system and a power loss.
- ``"normal"``: the WAL is fsynced only at checkpoints. An acknowledged event
  survives a crash (or kill -9) of the collector, but the last commits before an
  operating-system crash or power loss may be lost; the file stays consistent.
  Commits are cheaper, so throughput is higher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from collector.events import reading
from collector.sinks.base import CONFLICT, DUPLICATE, STORED, Outcome, Result, StoreUnavailable
from collector.sinks.turns import Turns, TurnTimeout

if TYPE_CHECKING:
    from collector.events import Event

__all__ = ["SYNCHRONOUS_MODES", "SqliteSink"]

#: The accepted `synchronous` values and their SQLite PRAGMA spelling.
SYNCHRONOUS_MODES: Final = {"full": "FULL", "normal": "NORMAL"}

#: After a failed write, `healthy()` answers False for this long even if a probe
#: would pass: a full disk lets `BEGIN IMMEDIATE` through but not a commit.
FAILURE_HOLD_S: Final = 5.0

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    sender TEXT NOT NULL,
    origin TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    value_text TEXT,
    value_bool INTEGER,
    unit TEXT,
    source TEXT NOT NULL,
    worker INTEGER NOT NULL,
    client_id TEXT,
    identity TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
CREATE INDEX IF NOT EXISTS events_sender ON events (sender, ts_ms);
CREATE INDEX IF NOT EXISTS events_origin ON events (origin, ts_ms);
CREATE INDEX IF NOT EXISTS events_type ON events (type, ts_ms);
"""

#: Columns later versions added, with their declarations: a file made by an older
#: collector gets them (NULL in its old rows) when it is opened, before the indices
#: that use them. Its rows keep their ids (an older version stored a client `id` as
#: is, now it is scoped by namespace and sender: `collector.events.scoped_id`).
ADDED_COLUMNS: Final = (("client_id", "TEXT"), ("identity", "TEXT"))
LATE_INDICES: Final = (
    "CREATE INDEX IF NOT EXISTS events_client_id ON events (client_id) WHERE client_id IS NOT NULL",
)

_INSERT: Final = (
    "INSERT INTO events (id, ts_ms, received_ms, namespace, sender, origin, type, value,"
    " value_text, value_bool, unit, source, worker, client_id, identity)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_STORED_READING: Final = (
    "SELECT namespace, sender, origin, type, value, value_text, value_bool, unit, ts_ms"
    " FROM events WHERE id = ?"
)


def _reason(exc: BaseException) -> str:
    """A short, bounded reason: SQLite's error name (SQLITE_FULL, SQLITE_BUSY …)."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"sqlite: {name or type(exc).__name__}"


def _row(event: Event) -> tuple[Any, ...]:
    value = event.value
    number: float | None = None
    text: str | None = None
    flag: int | None = None
    if isinstance(value, bool):
        flag = int(value)
    elif isinstance(value, str):
        text = value
    else:
        number = value
    return (
        event.id,
        event.timestamp_ms,
        event.received_ms,
        event.namespace,
        event.sender,
        event.origin,
        event.type,
        number,
        text,
        flag,
        event.unit,
        event.source,
        event.worker,
        event.client_id,
        event.identity,
    )


def _judge_present(cursor: sqlite3.Cursor, event: Event) -> Result:
    """An id already stored: DUPLICATE when it holds this event, else CONFLICT."""
    if event.client_id is None:
        return DUPLICATE  # a content id: the same id is the same content
    row = cursor.execute(_STORED_READING, (event.id,)).fetchone()
    if row is None:  # cannot happen inside the transaction; retrying is harmless
        return Result(Outcome.FAILED, "sqlite: stored row vanished")
    namespace, sender, origin, type_, number, text, flag, unit, ts_ms = row
    value = bool(flag) if flag is not None else text if text is not None else number
    same = reading(namespace, sender, origin, type_, value, unit) == event.reading()
    return DUPLICATE if same and event.same_time(ts_ms) else CONFLICT


class SqliteSink:
    """Events stored in one SQLite file (WAL), one transaction per batch.

    `path` is the database file (its directory is created); `synchronous` is
    "full" or "normal" (see the module docstring for what an ack promises with
    each); `worker` names the executor thread; `busy_timeout_ms` is how long a
    write waits for another process's write lock before the batch fails.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "full",
        worker: int = 0,
        busy_timeout_ms: int = 5000,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        self.path = path
        self.synchronous = synchronous
        self.worker = worker
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._turns: Turns | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failed_at: float | None = None

    # --- blocking parts, run on the sink's own thread ----------------------------

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # opened and used on the one executor thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            # Switching a fresh file to WAL needs an exclusive lock; workers starting
            # together may race for it and SQLite does not always wait: retry.
            deadline = time.monotonic() + self.busy_timeout_ms / 1000
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS_MODES[self.synchronous]}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
                for column, declaration in ADDED_COLUMNS:
                    if column not in have:
                        conn.execute(f"ALTER TABLE events ADD COLUMN {column} {declaration}")
                for statement in LATE_INDICES:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._turns = Turns(self.path + "-turns", self.busy_timeout_ms / 1000)
        return conn

    def _write(self, events: Sequence[Event]) -> list[Result]:
        conn = self._conn
        if conn is None:
            return [Result(Outcome.FAILED, "sqlite: closed")] * len(events)
        try:
            if conn.in_transaction:  # a previous failure left one open
                conn.execute("ROLLBACK")
            with self._turn():
                cursor = conn.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    results = []
                    for event in events:
                        cursor.execute(_INSERT, _row(event))
                        results.append(
                            STORED if cursor.rowcount == 1 else _judge_present(cursor, event)
                        )
                    cursor.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except TurnTimeout:
            self._failed_at = time.monotonic()
            return [Result(Outcome.FAILED, "sqlite: SQLITE_BUSY (no write turn)")] * len(events)
        except Exception as exc:  # sqlite3.Error, or a value SQLite cannot bind
            self._failed_at = time.monotonic()
            return [Result(Outcome.FAILED, _reason(exc))] * len(events)
        self._failed_at = None
        return results

    def _probe(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._turn():  # a fair turn, or busy workers would starve the probe
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock: proves we could write
                conn.execute("ROLLBACK")
        except (sqlite3.Error, TurnTimeout, OSError):
            return False
        return True

    def _turn(self) -> Turns | contextlib.nullcontext[None]:
        """This process's turn at the file's write lock (fair between workers)."""
        return self._turns if self._turns is not None else contextlib.nullcontext()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        turns, self._turns = self._turns, None
        if turns is not None:
            turns.close()

    # --- the Sink interface ------------------------------------------------------

    async def start(self) -> None:
        """Open the file, switch it to WAL and create the schema (idempotent).

        Raises StoreUnavailable when the file cannot be created or opened.
        """
        if self._conn is not None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-sink-{self.worker}")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._open)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    async def write(self, events: Sequence[Event]) -> list[Result]:
        """Store a batch in one transaction; one Result per event, in order."""
        if not events:
            return []
        executor = self._executor
        if self._conn is None or executor is None:
            return [Result(Outcome.FAILED, "sqlite: not started")] * len(events)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, self._write, events)
        except RuntimeError:  # the executor was shut down by close()
            return [Result(Outcome.FAILED, "sqlite: closed")] * len(events)

    async def healthy(self) -> bool:
        """True when a write would be accepted now and none failed in the last 5 s."""
        executor = self._executor
        if self._conn is None or executor is None:
            return False
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < FAILURE_HOLD_S:
            return False
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self._probe)
        except RuntimeError:
            return False

    async def close(self) -> None:
        """Wait for writes in progress, then close the connection and the thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=True)
