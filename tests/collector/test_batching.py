"""The pure batcher (no clock, no I/O) and its asyncio driver against a real sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.batching import BatchDriver, Batcher, Item, OnResults
from collector.events import Event
from collector.sinks.base import STORED, Outcome, Result, Sink
from collector.sinks.null import NullSink


def test_feed_returns_batch_exactly_at_max_items() -> None:
    b: Batcher[int] = Batcher(3)
    assert b.feed(1) is None
    assert b.feed(2) is None
    assert b.feed(3) == [1, 2, 3]
    assert len(b) == 0
    assert b.flush() is None


def test_flush_returns_open_batch_once() -> None:
    b: Batcher[str] = Batcher(10)
    b.feed("a")
    assert b.flush() == ["a"]
    assert b.flush() is None


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(0)


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=20))
def test_batches_preserve_every_item_in_order(items: list[int], size: int) -> None:
    b: Batcher[int] = Batcher(size)
    out: list[int] = []
    for item in items:
        batch = b.feed(item)
        if batch is not None:
            assert len(batch) == size
            out.extend(batch)
    rest = b.flush()
    if rest is not None:
        assert 0 < len(rest) < size
        out.extend(rest)
    assert out == items


def per_item(fn: object) -> OnResults:
    """An on_results callback that hands each item's (owner, position, result) to fn."""

    def on_results(items: list[Item], results: list[Result]) -> None:
        for (_e, owner, position), result in zip(items, results, strict=True):
            fn(owner, position, result)  # type: ignore[operator]

    return on_results


class AsyncOnly(NullSink):
    """A real null sink without the synchronous fast path: every write is a task."""

    write_now = None  # type: ignore[assignment]


def write_one(sink: Sink, *, from_callback: bool = False) -> Result:
    """One event through a driver of one-event batches; its result. `from_callback`:
    added from a plain loop callback (no current task), as the worker's reader adds."""

    async def scenario() -> list[Result]:
        got: list[Result] = []
        driver = BatchDriver(
            sink, per_item(lambda o, p, r: got.append(r)), batch_max=1, batch_ms=1, max_flushes=1
        )
        if from_callback:
            asyncio.get_running_loop().call_soon(driver.add, _event(1), None, 0)
            await asyncio.sleep(0)
        else:
            driver.add(_event(1), None, 0)
        await asyncio.wait_for(driver.wait_idle(), 1.0)
        return got

    (result,) = asyncio.run(scenario())
    return result


def _event(i: int) -> Event:
    return Event(
        id=f"id-{i}",
        timestamp_ms=1_700_000_000_000 + i,
        received_ms=1_700_000_000_000,
        namespace="default",
        sender="s",
        origin="o",
        type="t",
        value=float(i),
        unit=None,
        source="127.0.0.1:1",
        worker=0,
    )


class RecordingSink(AsyncOnly):
    """A real null sink that also remembers batch sizes and concurrency."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.delay = delay
        self.active = 0
        self.max_active = 0

    async def write(self, events: Sequence[Event]) -> list[Result]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(self.delay)
        self.batches.append(len(events))
        self.active -= 1
        return await super().write(events)


def test_driver_flushes_on_count_and_on_timer() -> None:
    async def scenario() -> tuple[list[int], list[tuple[object, int, Result]]]:
        sink = RecordingSink()
        results: list[tuple[object, int, Result]] = []
        driver = BatchDriver(
            sink,
            per_item(lambda owner, pos, res: results.append((owner, pos, res))),
            batch_max=4,
            batch_ms=20,
            max_flushes=2,
        )
        for i in range(6):
            driver.add(_event(i), "req", i)
        await asyncio.sleep(0)  # the full batch of 4 is written at once
        await asyncio.sleep(0)
        assert sink.batches == [4]
        await asyncio.wait_for(driver.wait_idle(), 1.0)  # the 2 left go on the timer
        return sink.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [4, 2]
    assert sorted(pos for _owner, pos, _res in results) == list(range(6))
    assert all(res is STORED for _o, _p, res in results)


def test_driver_bounds_writes_in_flight() -> None:
    async def scenario() -> RecordingSink:
        sink = RecordingSink(delay=0.01)
        driver = BatchDriver(sink, lambda *a: None, batch_max=1, batch_ms=1, max_flushes=2)
        for i in range(10):
            driver.add(_event(i), None, 0)
        await asyncio.wait_for(driver.wait_idle(), 2.0)
        assert driver.pending == 0
        return sink

    sink = asyncio.run(scenario())
    assert sink.max_active == 2
    assert sum(sink.batches) == 10


def test_a_sink_that_raises_fails_its_events_instead_of_hanging() -> None:
    class Broken(AsyncOnly):
        async def write(self, events: Sequence[Event]) -> list[Result]:
            raise RuntimeError("boom")

    async def scenario() -> list[Result]:
        got: list[Result] = []
        driver = BatchDriver(
            Broken(),
            per_item(lambda o, p, r: got.append(r)),
            batch_max=2,
            batch_ms=1,
            max_flushes=1,
        )
        driver.add(_event(1), None, 0)
        driver.add(_event(2), None, 1)
        await asyncio.wait_for(driver.wait_idle(), 1.0)
        return got

    got = asyncio.run(scenario())
    assert [r.outcome for r in got] == [Outcome.FAILED, Outcome.FAILED]
    assert "RuntimeError" in got[0].reason


def test_a_write_that_finishes_at_once_answers_inside_close_idle() -> None:
    """The null sink's write_now never waits, so its results are delivered in the
    call that closed the batch, with no task and no loop iteration."""

    async def scenario() -> None:
        got: list[tuple[object, int]] = []
        driver = BatchDriver(
            NullSink(),
            per_item(lambda o, p, r: got.append((o, p))),
            batch_max=10,
            batch_ms=5,
            max_flushes=1,
        )
        driver.add(_event(1), "a", 0)
        driver.add(_event(2), "b", 0)
        assert got == []  # the batch is open until the burst ends
        driver.close_idle()
        assert got == [("a", 0), ("b", 0)]
        assert driver.pending == 0
        assert not driver._in_flight
        await asyncio.wait_for(driver.wait_idle(), 0.1)
        driver.close_idle()  # nothing open: nothing written
        assert got == [("a", 0), ("b", 0)]

    asyncio.run(scenario())


def test_a_write_that_waits_finishes_as_a_task_with_its_future_outcome() -> None:
    """A write that waits is a task; the future's result, or its exception, reaches
    the sink's coroutine, and each batch is judged by its own outcome."""

    class Gated(AsyncOnly):
        def __init__(self) -> None:
            self.gates: list[asyncio.Future[int]] = []

        async def write(self, events: Sequence[Event]) -> list[Result]:
            gate = asyncio.get_running_loop().create_future()
            self.gates.append(gate)
            value = await gate  # raises when the gate is failed
            return [Result(Outcome.REJECTED, f"gate {value}")] * len(events)

    async def scenario() -> list[Result]:
        sink = Gated()
        got: list[Result] = []
        driver = BatchDriver(
            sink, per_item(lambda o, p, r: got.append(r)), batch_max=1, batch_ms=5, max_flushes=2
        )
        driver.add(_event(1), None, 0)
        driver.add(_event(2), None, 0)
        await asyncio.sleep(0)  # the tasks start
        assert len(sink.gates) == 2 and len(driver._in_flight) == 2 and got == []
        sink.gates[0].set_result(7)
        sink.gates[1].set_exception(RuntimeError("store fell over"))
        await asyncio.wait_for(driver.wait_idle(), 1.0)
        return got

    got = asyncio.run(scenario())
    assert [r.outcome for r in got] == [Outcome.REJECTED, Outcome.FAILED]
    assert got[0].reason == "gate 7"
    assert "RuntimeError" in got[1].reason


def test_cancelling_a_waiting_write_cancels_the_sink_coroutine() -> None:
    cancelled: list[bool] = []

    class Hung(AsyncOnly):
        async def write(self, events: Sequence[Event]) -> list[Result]:
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return []

    async def scenario() -> None:
        driver = BatchDriver(Hung(), lambda *a: None, batch_max=1, batch_ms=5, max_flushes=1)
        driver.add(_event(1), None, 0)
        (task,) = driver._in_flight
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert cancelled == [True]


def test_on_results_takes_each_written_batch_whole() -> None:
    async def scenario() -> list[tuple[list[object], list[Result]]]:
        got: list[tuple[list[object], list[Result]]] = []
        driver = BatchDriver(
            NullSink(),
            lambda items, results: got.append(([o for _e, o, _p in items], results)),
            batch_max=2,
            batch_ms=5,
            max_flushes=1,
        )
        for owner in "abc":
            driver.add(_event(1), owner, 0)
        driver.close_idle()
        await asyncio.wait_for(driver.wait_idle(), 1.0)
        return got

    got = asyncio.run(scenario())
    assert got == [(["a", "b"], [STORED, STORED]), (["c"], [STORED])]


def test_a_write_now_that_cannot_finish_falls_back_to_a_task() -> None:
    """write_now returning None means "I would wait": the driver awaits write() in a
    task, so what needs a current task (asyncio.timeout, aiohttp's timeouts, which
    the Elasticsearch client uses) works, even when the batch closed in a plain loop
    callback such as the worker's reader."""

    class Sometimes(NullSink):
        def write_now(self, events: Sequence[Event]) -> list[Result] | None:
            return None

        async def write(self, events: Sequence[Event]) -> list[Result]:
            async with asyncio.timeout(1):
                await asyncio.sleep(0)
            return [Result(Outcome.DUPLICATE)] * len(events)

    result = write_one(Sometimes(), from_callback=True)
    assert result.outcome is Outcome.DUPLICATE


def test_a_write_now_that_raises_fails_its_events() -> None:
    class Broken(NullSink):
        def write_now(self, events: Sequence[Event]) -> list[Result]:
            raise RuntimeError("boom")

    result = write_one(Broken())
    assert result.outcome is Outcome.FAILED and "RuntimeError" in result.reason


def test_many_queued_batches_finishing_at_once_do_not_recurse() -> None:
    """One write waits; 1500 batches queue behind it. When it finishes, the queued
    ones start in a loop, not by recursion: every result arrives, none is stranded."""

    class FirstWaits(AsyncOnly):
        def __init__(self) -> None:
            self.gate: asyncio.Future[None] | None = None

        async def write(self, events: Sequence[Event]) -> list[Result]:
            if self.gate is None:
                self.gate = asyncio.get_running_loop().create_future()
                await self.gate
            return [STORED] * len(events)

    async def scenario() -> int:
        sink = FirstWaits()
        got: list[Result] = []
        driver = BatchDriver(
            sink, per_item(lambda o, p, r: got.append(r)), batch_max=1, batch_ms=1, max_flushes=1
        )
        for i in range(1500):
            driver.add(_event(i), None, 0)
        await asyncio.sleep(0)  # the first write starts and waits
        assert sink.gate is not None
        sink.gate.set_result(None)
        await asyncio.wait_for(driver.wait_idle(), 5.0)
        assert driver.pending == 0
        return len(got)

    assert asyncio.run(scenario()) == 1500


def test_a_raising_result_callback_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    """A write_now delivers results inside `add`: a bug in the owner's callback is
    logged there and does not escape into the caller or stall the driver."""

    def explode(items: list[Item], results: list[Result]) -> None:
        raise ValueError("boom")

    async def scenario() -> int:
        driver = BatchDriver(NullSink(), explode, batch_max=1, batch_ms=1, max_flushes=1)
        for i in range(3):
            driver.add(_event(i), None, i)  # each fills a batch, written at once
        await asyncio.wait_for(driver.wait_idle(), 1.0)
        return driver.pending

    assert asyncio.run(scenario()) == 0
    assert sum("delivering a batch's results failed" in r.message for r in caplog.records) == 3


def test_a_write_that_yields_something_odd_fails_its_events() -> None:
    class Odd:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield 42

    class OddSink(AsyncOnly):
        async def write(self, events: Sequence[Event]) -> list[Result]:
            await Odd()
            return [STORED] * len(events)

    result = write_one(OddSink())
    assert result.outcome is Outcome.FAILED and "RuntimeError" in result.reason
