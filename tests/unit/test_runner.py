"""The runner on virtual time: an event loop whose clock moves only when every task waits.

Nothing here waits on the wall clock, so each count and duration is exact: a "2.5 s" collection
takes 2.5 s of the loop's time and no real time. The runner is given the loop's clock, and a sleep
that records what it was asked for; asyncio's own timeout (the cut-off of a hung collection) runs
on the same clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from agent.collectors import Collector
from agent.health import Progress
from agent.model import ResourceType, Sample
from agent.runner import Runner


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: where the loop would wait `timeout` seconds for I/O, time moves on instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("every task waits and no timer is set: this would hang for ever")
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, from 0.0: timers fire in order, without real waiting."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def on_virtual_time(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())


def now() -> float:
    return asyncio.get_running_loop().time()


class Sleeps:
    """The runner's sleep: records each wait it is asked for, then waits that long."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(seconds)


def runner_for(
    collector: Collector,
    interval_s: float,
    progress: Progress | None = None,
    *,
    sink: Callable[[Sequence[Sample]], None] = lambda _: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Runner:
    """A runner named "node" on the running loop's clock."""
    clock = asyncio.get_running_loop().time
    return Runner(
        "node", collector, interval_s, sink, progress or Progress(), clock=clock, sleep=sleep
    )


class Scripted:
    """A collector that follows a script: a number takes that long, an exception is raised."""

    def __init__(self, *steps: float | Exception) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.started: list[float] = []

    async def collect(self) -> Sequence[Sample]:
        self.calls += 1
        self.started.append(now())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            step = self.steps.pop(0) if self.steps else 0.0
            if isinstance(step, Exception):
                raise step
            await asyncio.sleep(step)
            return [Sample(ResourceType.NODE, "n", "x", self.calls, "", 0)]
        finally:
            self.active -= 1


async def run_until(runner: Runner, stop_at: float) -> None:
    """Run `runner` from now until the loop's clock reads `stop_at`, then stop it."""
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(stop_at - now())
    await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_errors_are_contained_and_counted() -> None:
    async def main() -> None:
        got: list[Sample] = []
        collector = Scripted(RuntimeError("disk gone"), 0.0, ValueError("bad"), 0.0)
        runner = runner_for(collector, 1.0, sink=got.extend)
        await run_until(runner, 4.5)
        assert runner.stats.errors == 2
        assert runner.stats.collections == 5
        assert collector.started == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert [s.value for s in got] == [2, 4, 5]

    on_virtual_time(main)


def test_overruns_skip_ticks_and_never_overlap() -> None:
    async def main() -> None:
        collector = Scripted(0.0, 2.5, 0.0)
        sleeps = Sleeps()
        runner = runner_for(collector, 1.0, sleep=sleeps)
        await run_until(runner, 5.5)
        assert collector.max_active == 1
        # A 2.5 s collection from t=1 on a 1 s interval misses the ticks at 2 and 3; the next
        # collection starts on the original grid, at 4.
        assert runner.stats.overruns == 2
        assert collector.started == [0.0, 1.0, 4.0, 5.0]
        assert sleeps.asked == [1.0, 0.5, 1.0, 1.0]
        assert runner.stats.max_duration_s == 2.5
        assert runner.stats.last_duration_s == 0.0

    on_virtual_time(main)


def test_hung_collection_is_cut_after_three_intervals() -> None:
    async def main() -> None:
        collector = Scripted(100.0, 0.0)
        runner = runner_for(collector, 1.0)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(2.5)
        assert (runner.stats.errors, collector.calls) == (0, 1)
        await asyncio.sleep(1.0)  # t=3.5: cut at t=3, three intervals after it started
        assert (runner.stats.errors, collector.calls) == (1, 1)
        assert runner.stats.last_error == "TimeoutError"
        assert runner.stats.last_duration_s == 3.0
        assert runner.stats.overruns == 3  # the ticks at 1, 2 and 3
        await asyncio.sleep(1.0)  # t=4.5: the next tick, at 4, collected again
        await stop(task)
        assert collector.calls == 2
        assert collector.started == [0.0, 4.0]
        assert runner.stats.errors == 1
        assert runner.stats.last_error == "", "recovered"

    on_virtual_time(main)


def test_ticks_progress_and_unregisters_on_exit() -> None:
    async def main() -> None:
        progress = Progress()
        runner = runner_for(Scripted(), 1.0, progress)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(4.5)
        assert progress.ticks("node") == 5
        await stop(task)
        assert progress.ticks("node") == 0

    on_virtual_time(main)


class Gated:
    """A collector whose collection completes only when the test sets its result."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[Sequence[Sample]] | None = None
        self.started = asyncio.Event()
        self.calls = 0

    async def collect(self) -> Sequence[Sample]:
        self.calls += 1
        self.pending = asyncio.get_running_loop().create_future()
        self.started.set()
        return await self.pending


def test_a_stop_that_meets_a_completing_collection_still_stops() -> None:
    # The collection finishes in the same loop iteration as the cancellation; the runner must
    # end all the same (asyncio.wait_for on 3.11 would swallow the cancellation here).
    async def main() -> None:
        collector = Gated()
        task = asyncio.create_task(runner_for(collector, 1.0).run())
        await collector.started.wait()
        await asyncio.sleep(0)  # the runner now waits on the collection
        assert collector.pending is not None
        collector.pending.set_result([])
        task.cancel()
        # A runner that did not stop would go on ticking, and so reach this timeout.
        async with asyncio.timeout(10.0):
            await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert collector.calls == 1

    on_virtual_time(main)


def test_a_runner_that_ends_late_leaves_its_successors_registration() -> None:
    async def main() -> None:
        progress = Progress()
        old = asyncio.create_task(runner_for(Scripted(), 1.0, progress).run())
        await asyncio.sleep(1.5)
        new = asyncio.create_task(runner_for(Scripted(), 1.0, progress).run())
        await asyncio.sleep(0.75)
        await stop(old)  # at t=2.25, after the successor registered
        before = progress.ticks("node")
        await asyncio.sleep(2.0)  # t=4.25: the successor ticked at 2.5 and 3.5
        assert progress.ticks("node") == before + 2, "the successor still counts"
        await stop(new)
        assert progress.ticks("node") == 0

    on_virtual_time(main)
