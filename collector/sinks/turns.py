"""Fair turns at a resource shared by processes: a turnstile of two fcntl locks.

SQLite's own write lock is unfair between processes: a writer that finds it taken
sleeps in growing steps (up to 100 ms), while the holder commits and begins its next
transaction within microseconds, so one worker could write hundreds of batches in a
row while another's requests waited seconds and then failed on `busy_timeout`.

The turnstile: to write, take the GATE, then the TURN, then let go of the GATE;
write; let go of the TURN. A waiter holds the GATE while it waits for the TURN, so the
writer that just finished cannot take the TURN again before that waiter had it:
with two workers, writers strictly alternate; with more, a writer waits behind at most
the writers that reached the gate before it came round again. The TURN has a single
contender at a time (the gate holder), which waits for it in the kernel; the locks
are byte ranges of one sidecar file (`<db>-turns`) and vanish with a process that
dies.

Waiting at the gate is bounded by `timeout` (non-blocking attempts with short
sleeps, since fcntl's blocking wait cannot time out on a thread): past it,
`TurnTimeout`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from types import TracebackType

_GATE = 0  # byte offsets of the two locks
_TURN = 1
_POLL_S = 0.0005  # between attempts; a turn is a whole SQLite transaction (ms)
_POLL_MAX_S = 0.002


class TurnTimeout(Exception):
    """The turn did not come within the timeout."""


class Turns:
    """A process's handle on the turnstile in `path` (created if missing).

    fcntl locks belong to the process: use one Turns per process and per file, from
    one thread at a time (the sink's own thread).
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def _take(self, offset: int, deadline: float) -> None:
        pause = _POLL_S
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise TurnTimeout(f"no write turn within {self.timeout:g} s")
            time.sleep(pause)
            pause = min(_POLL_MAX_S, pause * 1.5)

    def _give(self, offset: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def __enter__(self) -> Turns:
        deadline = time.monotonic() + self.timeout
        self._take(_GATE, deadline)
        try:
            # The gate holder is the TURN's only contender and the holder lets go at
            # the end of one transaction (itself bounded by SQLite's busy timeout), so
            # wait in the kernel: woken the moment it is free, no polling gap.
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, _TURN)
        finally:
            self._give(_GATE)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._give(_TURN)

    def close(self) -> None:
        os.close(self._fd)
