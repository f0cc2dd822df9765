"""Batching: many devices' events into few store writes.

`Batcher` is a pure object with no clock (the shape of elasticsearch-py's action
chunker): `feed` returns a full batch when the count limit is reached, `flush` returns
whatever is open. `BatchDriver` owns the time, as group commit does: while the store
is idle, a batch closes at the end of the current loop iteration (so a lone request
is not held `batch_ms` for nothing, and a burst read in one wake-up still goes in one
write); while writes are in flight, it closes at `batch_max` events or `batch_ms`
after its first event, or as soon as the store is idle again, whichever comes first.
At most `max_flushes` writes are in flight (later batches queue, bounded by the
caller's max-pending check). When a write
returns, every event's result is handed to its waiter, so each request is judged by
its own events only.

A sink that can finish a write without waiting says so through its synchronous
method (`Sink.write_now`, the null sink's): the driver calls it where the batch
closes, so such a write costs no task and no loop iteration and its answers leave
with the same read burst. Every other write (`Sink.write`) is a task.
The owner may also close an idle batch itself (`close_idle`) at the end of a burst of
`add` calls, instead of one loop iteration later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from collector.events import Event
from collector.sinks.base import Outcome, Result, Sink

T = TypeVar("T")

log = logging.getLogger("collector.batching")


class Batcher(Generic[T]):
    """Collects items; closes a batch at `max_items`. No clock, no I/O."""

    __slots__ = ("items", "max_items")

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        # The open batch. A driver on a hot path may append to it itself and `take`
        # it once it holds `max_items`: `feed` without the call.
        self.items: list[T] = []

    def feed(self, item: T) -> list[T] | None:
        """Add one item; return the batch when this item filled it."""
        self.items.append(item)
        if len(self.items) >= self.max_items:
            return self.take()
        return None

    def take(self) -> list[T]:
        """The open batch, closed (possibly empty); a new one opens."""
        batch, self.items = self.items, []
        return batch

    def flush(self) -> list[T] | None:
        """Close the open batch; None when it is empty."""
        if not self.items:
            return None
        return self.take()

    def __len__(self) -> int:
        return len(self.items)


# An item is (event, owner, position); `owner` is opaque (the core's request). When a
# batch is written the driver hands it whole to `on_results(items, results)`.
Item = tuple[Event, Any, int]
OnResults = Callable[[list[Item], list[Result]], None]


class BatchDriver:
    """Drives a Batcher with a timer and a sink; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        on_results: OnResults,
        *,
        batch_max: int,
        batch_ms: float,
        max_flushes: int,
        on_flushed: Callable[[int, float], None] | None = None,
    ) -> None:
        self._sink = sink
        # The synchronous fast path, for a sink that has one (see Sink.write_now).
        self._write_now: Callable[[Sequence[Event]], list[Result] | None] | None = getattr(
            sink, "write_now", None
        )
        self._on_results = on_results
        self._batcher: Batcher[Item] = Batcher(batch_max)
        self._delay = batch_ms / 1000.0
        self._max_flushes = max_flushes
        self._timer: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: deque[list[Item]] = deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._on_flushed = on_flushed
        self.pending = 0  # events fed and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, event: Event, owner: Any, position: int) -> None:
        if not self.pending:
            self._idle.clear()
        self.pending += 1
        batcher = self._batcher
        items = batcher.items  # Batcher.feed, inlined: this runs for every event
        items.append((event, owner, position))
        if len(items) >= batcher.max_items:
            self._cancel_timer()
            self._submit(batcher.take())
        elif self._timer is None:
            loop = self._loop or self._get_loop()
            if self._in_flight:
                self._timer = loop.call_later(self._delay, self._on_timer)
            else:
                self._timer = loop.call_soon(self._on_timer)

    def flush(self) -> None:
        """Close the open batch now (drain)."""
        self._cancel_timer()
        batch = self._batcher.flush()
        if batch is not None:
            self._submit(batch)

    def close_idle(self) -> None:
        """Close the open batch now if the store is idle (what the end of this loop
        iteration would do): for an owner that has just fed a burst."""
        if not self._in_flight and len(self._batcher):
            self.flush()

    async def wait_idle(self) -> None:
        """Return when every event fed so far has its result."""
        await self._idle.wait()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # Cached: asyncio.get_running_loop() costs a getpid() system call in 3.11.
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        batch = self._batcher.flush()
        if batch is not None:
            self._submit(batch)

    def _submit(self, batch: list[Item]) -> None:
        if len(self._in_flight) >= self._max_flushes:
            self._queued.append(batch)
        elif self._start(batch):
            self._next()

    def _start(self, batch: list[Item]) -> bool:
        """Write a batch; True when it finished at once (through `write_now`)."""
        write_now = self._write_now
        if write_now is not None:
            loop = self._loop or self._get_loop()
            started = loop.time()
            try:
                results = write_now([item[0] for item in batch])
            except Exception as exc:  # a sink bug must not leave devices unanswered
                results = _failed(batch, exc)
            if results is not None:
                self._deliver(batch, results, loop.time() - started)
                return True
        task = (self._loop or self._get_loop()).create_task(self._write(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._done)
        return False

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._next()

    def _next(self) -> None:
        """A write ended: start queued batches while there is room (a loop, not
        recursion: writes that finish at once would otherwise nest one call per
        queued batch), then close the open batch if the store is idle."""
        while self._queued and len(self._in_flight) < self._max_flushes:
            self._start(self._queued.popleft())
        if not self._in_flight and self._timer is not None:
            self._on_timer()  # the store is idle: don't wait out batch_ms

    async def _write(self, batch: list[Item]) -> None:
        loop = self._loop or self._get_loop()
        started = loop.time()
        events: Sequence[Event] = [item[0] for item in batch]
        try:
            results = await self._sink.write(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sink bug must not leave devices unanswered
            results = _failed(batch, exc)
        self._deliver(batch, results, loop.time() - started)

    def _deliver(self, batch: list[Item], results: list[Result], seconds: float) -> None:
        if len(results) != len(batch):
            results = _failed(batch, RuntimeError(f"{len(results)} results for {len(batch)}"))
        self.pending -= len(batch)
        # The owner's callback is guarded here, as a task would contain it: a write
        # that finishes at once runs inside `add`/`close_idle`, and a bug in answering
        # must not escape into the caller (half-way through adding another request).
        try:
            if self._on_flushed is not None:
                self._on_flushed(len(batch), seconds)
            self._on_results(batch, results)
        except Exception:
            log.exception("delivering a batch's results failed")
        finally:
            if self.pending == 0:
                self._idle.set()


def _failed(batch: list[Item], exc: Exception) -> list[Result]:
    return [Result(Outcome.FAILED, f"store error: {type(exc).__name__}")] * len(batch)
