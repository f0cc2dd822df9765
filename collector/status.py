"""The status board: one byte per worker in shared memory, written by the worker,
read by the supervisor for /readyz. Created before the workers are forked."""

from __future__ import annotations

import mmap

STARTING = 0
SERVING = 1
STORE_DOWN = 2
DRAINING = 3
STOPPED = 4


class StatusBoard:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._mem = mmap.mmap(-1, max(1, workers))

    def set(self, worker: int, state: int) -> None:
        self._mem[worker] = state

    def get(self, worker: int) -> int:
        return self._mem[worker]

    def all(self, state: int) -> bool:
        return all(self._mem[i] == state for i in range(self.workers))
