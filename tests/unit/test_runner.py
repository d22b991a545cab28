from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.health import Progress
from agent.model import ResourceType, Sample
from agent.runner import Runner


class Scripted:
    """A collector that follows a script: a number sleeps that long, an exception is raised."""

    def __init__(self, *steps: float | Exception) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.active = 0
        self.max_active = 0

    async def collect(self) -> Sequence[Sample]:
        self.calls += 1
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


async def run_for(runner: Runner, seconds: float) -> None:
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_errors_are_contained_and_counted() -> None:
    got: list[Sample] = []
    collector = Scripted(RuntimeError("disk gone"), 0.0, ValueError("bad"), 0.0)
    runner = Runner("node", collector, 0.02, got.extend, Progress())
    await run_for(runner, 0.09)
    assert runner.stats.errors == 2
    assert runner.stats.collections >= 4
    assert [s.value for s in got][:2] == [2, 4]


async def test_overruns_skip_ticks_and_never_overlap() -> None:
    collector = Scripted(0.0, 0.05, 0.0)
    runner = Runner("node", collector, 0.02, lambda _: None, Progress())
    await run_for(runner, 0.12)
    assert collector.max_active == 1
    # A 50 ms collection on a 20 ms interval misses at least two ticks.
    assert runner.stats.overruns >= 2
    assert runner.stats.max_duration_s >= 0.02


async def test_hung_collection_is_cut_after_three_intervals() -> None:
    collector = Scripted(10.0, 0.0)
    runner = Runner("node", collector, 0.03, lambda _: None, Progress())
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.07)
    assert (runner.stats.errors, collector.calls) == (0, 1)
    await asyncio.sleep(0.08)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runner.stats.errors == 1
    assert "TimeoutError" in runner.stats.last_error or runner.stats.collections >= 2
    assert collector.calls >= 2


async def test_ticks_progress_and_unregisters_on_exit() -> None:
    progress = Progress()
    runner = Runner("node", Scripted(), 0.01, lambda _: None, progress)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.05)
    assert progress.ticks("node") >= 3
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert progress.ticks("node") == 0


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


async def test_a_stop_that_meets_a_completing_collection_still_stops() -> None:
    # The collection finishes in the same loop iteration as the cancellation; the runner must
    # end all the same (asyncio.wait_for on 3.11 would swallow the cancellation here).
    collector = Gated()
    runner = Runner("node", collector, 0.01, lambda _: None, Progress())
    task = asyncio.create_task(runner.run())
    await collector.started.wait()
    await asyncio.sleep(0)  # the runner now waits on the collection
    assert collector.pending is not None
    collector.pending.set_result([])
    task.cancel()
    async with asyncio.timeout(1.0):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert collector.calls == 1


async def test_a_runner_that_ends_late_leaves_its_successors_registration() -> None:
    progress = Progress()
    old = Runner("node", Scripted(), 0.01, lambda _: None, progress)
    old_task = asyncio.create_task(old.run())
    await asyncio.sleep(0.02)
    new = Runner("node", Scripted(), 0.01, lambda _: None, progress)
    new_task = asyncio.create_task(new.run())
    await asyncio.sleep(0.02)
    old_task.cancel()
    await asyncio.gather(old_task, return_exceptions=True)
    await asyncio.sleep(0.03)
    assert progress.ticks("node") >= 2  # the successor still counts
    new_task.cancel()
    await asyncio.gather(new_task, return_exceptions=True)
    assert progress.ticks("node") == 0
