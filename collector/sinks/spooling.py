"""The spooling sink: the primary store when it can, the local spool when it cannot.

`SpoolingSink` wraps another sink (Elasticsearch in production) and a `Spool`
(collector/spool.py). A batch goes to the primary first; the events it could not take
(FAILED: down, 429/5xx past its retries) and every event of a write that did not finish
within `ack_delay` are appended to the spool in one transaction and reported STORED:
an acknowledgement then means "in the primary store, or durably in the spool". What
the primary stored, already had or rejected (4.00) is reported as the primary said.
Only when the spool cannot take them (full, or the disk fails) are they FAILED, so
the device gets the old 5.03 with Max-Age.

Spooling only on failure, not every batch ahead of the store (write-ahead): measured
in README "When Elasticsearch is down", write-ahead costs an fsync'd local commit per
batch plus a second write of every event on the healthy path, for no gain in what an
ack promises (Elasticsearch acknowledges only after its translog fsync).

After a failure or a timeout the primary is bypassed (batches go straight to the
spool) until the forwarder has written to it again, so a slow store does not make
every batch wait `ack_delay` first.

The forwarder (one task, started by `start`, stopped by `close`) drains the spool
oldest first with the primary's own `write`, hence the same deterministic ids and
`create`: a batch forwarded twice (a kill -9 between the store's answer and the
spool's delete) is stored once. Rows are settled only after the items are judged:
stored and duplicate events are deleted, rejected ones (and conflicts: a client id
reused with other content) move to the dead-letter table with their reason, the rest
stay. On `close` the forwarder keeps draining while the
primary takes batches, for up to `drain_timeout` seconds; whatever is left stays on
disk for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from collector.sinks.base import STORED, Outcome, Result, Sink, StoreUnavailable
from collector.spool import Spool, SpoolError

if TYPE_CHECKING:
    from collector.events import Event
    from collector.metrics import SpoolMetrics

__all__ = ["SpoolingSink"]

log = logging.getLogger(__name__)

#: Pause between forward attempts while the primary refuses, doubling up to the max.
RETRY_FIRST: Final = 0.25
RETRY_MAX: Final = 5.0
#: On close, how long the drain keeps trying while the primary takes nothing.
DRAIN_PATIENCE: Final = 2.0
#: How long start() waits for the primary before serving from the spool alone.
START_WAIT: Final = 2.0
#: healthy() is False this long after the spool itself failed or was full.
FAILURE_HOLD_S: Final = 5.0
#: Seconds between metric publishes.
PUBLISH_EVERY: Final = 1.0


class SpoolingSink:
    """A primary sink backed by a durable spool; see the module docstring."""

    eager = False

    def __init__(
        self,
        primary: Sink,
        spool: Spool,
        *,
        ack_delay: float,
        forward_max: int = 1000,
        drain_timeout: float = 10.0,
        metrics: SpoolMetrics | None = None,
        worker: int = 0,
        write_ahead: bool = False,
    ) -> None:
        self.primary = primary
        self.spool = spool
        self.name = f"{primary.name}+spool"
        self._timeout = ack_delay if ack_delay > 0 else None
        self._forward_max = forward_max
        self._drain_timeout = drain_timeout
        self._metrics = metrics
        self._worker = worker
        # Write-ahead mode (every batch through the spool): kept for the measurement
        # in bench/spool_bench.py, not offered as a flag (see the module docstring).
        self._write_ahead = write_ahead
        self._primary_ready = False
        self._bypass = True  # until the primary has started and taken a write
        self._spool_failed_at: float | None = None
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.forwarded = 0
        self.dead_lettered = 0
        self.spooled = 0
        self.refused = 0

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (raises StoreUnavailable when it cannot), then the primary.

        A primary that is not reachable within START_WAIT seconds does not stop the
        worker from serving: batches go to the spool and the primary keeps being
        started in the background.
        """
        try:
            await self.spool.open()
        except SpoolError as exc:
            raise StoreUnavailable(str(exc)) from exc
        loop = asyncio.get_running_loop()
        starter = loop.create_task(self._start_primary())
        self._tasks.append(starter)
        await asyncio.wait({starter}, timeout=START_WAIT)
        if not self._primary_ready:
            log.warning(
                "primary store not ready: serving into the spool", extra={"worker": self._worker}
            )
        self._tasks.append(loop.create_task(self._forward_loop()))
        if self._metrics is not None:
            self._tasks.append(loop.create_task(self._publish_loop()))

    async def _start_primary(self) -> None:
        while True:
            try:
                await self.primary.start()
            except StoreUnavailable as exc:
                log.warning(
                    "primary store unavailable",
                    extra={"worker": self._worker, "reason": str(exc)},
                )
                await asyncio.sleep(RETRY_MAX)
                continue
            self._primary_ready = True
            self._bypass = False
            self._wakeup.set()
            return

    async def close(self) -> None:
        """Stop the forwarder, drain what the primary takes (bounded), close both."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._primary_ready and not self.spool.empty:
            deadline = time.monotonic() + self._drain_timeout
            stalled_since: float | None = None
            while not self.spool.empty and time.monotonic() < deadline:
                try:
                    moved = await asyncio.wait_for(
                        self.forward_once(), max(0.1, deadline - time.monotonic())
                    )
                except (TimeoutError, SpoolError):
                    break
                if moved:
                    stalled_since = None
                    continue
                # The store may have just come back (its sink notices within a probe
                # interval): a little patience, not the whole drain timeout.
                now = time.monotonic()
                stalled_since = now if stalled_since is None else stalled_since
                if now - stalled_since >= DRAIN_PATIENCE:
                    break
                await asyncio.sleep(RETRY_FIRST)
            if not self.spool.empty:
                log.warning(
                    "spool kept on disk for the next start",
                    extra={"worker": self._worker, "events": self.spool.stats().events},
                )
        self._publish()
        await self.spool.close()
        await self.primary.close()

    # -- writing ---------------------------------------------------------------------

    async def write(self, events: Sequence[Event]) -> list[Result]:
        """Primary first, spool for what it could not take; one Result per event."""
        if not events:
            return []
        if self._write_ahead:
            return await self._to_spool(events, [None] * len(events))
        results: list[Result | None]
        if self._bypass:
            results = [None] * len(events)
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    results = list(await self.primary.write(events))
            except TimeoutError:
                results = [None] * len(events)
            if any(r is None or r.outcome is Outcome.FAILED for r in results):
                self._bypass = True
                self._wakeup.set()
        return await self._to_spool(events, results)

    async def _to_spool(
        self, events: Sequence[Event], results: list[Result | None]
    ) -> list[Result]:
        """Spool the events whose result is missing or FAILED; STORED once durable."""
        todo = [i for i, r in enumerate(results) if r is None or r.outcome is Outcome.FAILED]
        if not todo:
            return results  # type: ignore[return-value]  # no None left
        try:
            taken = await self.spool.append([events[i] for i in todo])
            why = "spool full"
        except SpoolError as exc:
            taken, why = False, str(exc)
        if taken:
            self.spooled += len(todo)
            self._spool_failed_at = None
            self._wakeup.set()
            for i in todo:
                results[i] = STORED
        else:
            self.refused += len(todo)
            self._spool_failed_at = time.monotonic()
            failed = Result(Outcome.FAILED, why)
            for i in todo:
                results[i] = failed
        return results  # type: ignore[return-value]

    # -- forwarding ------------------------------------------------------------------

    async def forward_once(self) -> int:
        """Forward the oldest spooled events once; returns how many were settled.

        0 means the primary took none of them (down or refusing): try again later.
        Raises SpoolError when the spool cannot be read or updated.
        """
        rows = await self.spool.peek(self._forward_max)
        if not rows:
            return 0
        events = [e for _seq, batch in rows for e in batch]
        results = await self.primary.write(events)
        keep: list[Event] = []
        dead: list[tuple[Event, str]] = []
        for event, result in zip(events, results, strict=True):
            if result.outcome is Outcome.FAILED:
                keep.append(event)
            elif result.outcome is Outcome.REJECTED or result.outcome is Outcome.CONFLICT:
                # A conflict found only now (the ack came from the spool): kept, not lost.
                dead.append((event, result.reason or "rejected"))
        if len(keep) == len(events):
            return 0  # nothing changes: leave the rows as they are
        await self.spool.settle([seq for seq, _ in rows], keep, dead)
        settled = len(events) - len(keep)
        self.forwarded += settled - len(dead)
        self.dead_lettered += len(dead)
        if dead:
            log.warning(
                "events dead-lettered",
                extra={"worker": self._worker, "events": len(dead), "reason": dead[0][1]},
            )
        if not keep:
            self._bypass = False  # the primary takes whole batches again
        return settled

    async def _forward_loop(self) -> None:
        pause = RETRY_FIRST
        while True:
            if self.spool.empty or not self._primary_ready:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), 1.0)
                if self._bypass and self.spool.empty and self._primary_ready:
                    # Bypassed with nothing to forward (the spool could not take the
                    # batch either): a probe decides when the primary is back.
                    with contextlib.suppress(Exception):
                        if await self.primary.healthy():
                            self._bypass = False
                continue
            try:
                moved = await self.forward_once()
            except SpoolError as exc:
                log.warning("spool read failed", extra={"worker": self._worker, "reason": str(exc)})
                moved = 0
            except Exception:  # a sink bug must not end forwarding for good
                log.exception("forwarding failed", extra={"worker": self._worker})
                moved = 0
            if moved:
                pause = RETRY_FIRST
                continue
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    # -- health and metrics ----------------------------------------------------------

    async def healthy(self) -> bool:
        """True when events can be stored now: by the primary, or else by the spool."""
        if self._primary_ready and not self._bypass and await self.primary.healthy():
            return True
        failed = self._spool_failed_at
        return failed is None or time.monotonic() - failed >= FAILURE_HOLD_S

    @property
    def degraded(self) -> str | None:
        """ "spooling" while batches go to, or wait in, the spool; None otherwise."""
        if self._bypass or not self.spool.empty:
            return "spooling"
        return None

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.publish(self)

    async def _publish_loop(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(PUBLISH_EVERY)

    def snapshot(self) -> dict[str, Any]:
        """Counters and the spool's accounting, for metrics and tests."""
        stats = self.spool.stats()
        oldest = stats.oldest_received_ms
        return {
            "events": stats.events,
            "bytes": stats.bytes,
            "dead_letters": stats.dead_letters,
            "oldest_age_s": 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000),
            "forwarded": self.forwarded,
            "dead_lettered": self.dead_lettered,
            "spooled": self.spooled,
            "refused": self.refused,
        }
