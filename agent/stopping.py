"""The staged stop: what runs in which stage, each step bounded, and a last resort.

```
 SIGTERM ──► StopPlan.run: stop_intake → drain_pipeline → flush_outputs → close
             each step its own task, bounded by what is left of its stage (at least MIN_HOOK_S);
             a step that overruns is cancelled and abandoned, never awaited
         ──► leave: what is left is cancelled; a task that ignores it ends with the process
         ──► deadline (a thread): stop_budget_s() + 1 s after the request, the process exits 1
```
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StopStage:
    name: str
    timeout_s: float
    purpose: str


STOP_STAGES: tuple[StopStage, ...] = (
    StopStage("stop_intake", 2.0, "collectors, ingest and tracer stop producing"),
    StopStage("drain_pipeline", 3.0, "queued samples and reports are evaluated into the buffer"),
    StopStage("flush_outputs", 5.0, "a last bounded push to etcd and the MQTT outbox"),
    StopStage("close", 2.0, "connections and the buffer are closed"),
)

StopHook = Callable[[], Awaitable[None]]
MIN_HOOK_S = 0.25
"""The least time a stop step gets, even when an earlier one used its stage's budget."""


class StopPlan:
    """What runs in each stop stage, in the order it was registered (data-flow order).

    Each hook runs as a task of its own with what is left of its stage's budget (at least
    `MIN_HOOK_S`): a hook that overruns is cancelled and abandoned, never awaited, so that no
    third-party client that ignores its cancellation can hold the stop. `abandoned` names them.
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[StopHook]] = {stage.name: [] for stage in STOP_STAGES}
        self.abandoned: list[str] = []

    def on(self, stage: str, hook: StopHook) -> None:
        self._hooks[stage].append(hook)

    async def run(self, status: Callable[[str], object]) -> None:
        for stage in STOP_STAGES:
            status(f"stopping: {stage.name}")
            started = time.monotonic()
            deadline = started + stage.timeout_s
            for index, hook in enumerate(self._hooks[stage.name]):
                step = asyncio.ensure_future(hook())
                budget = max(MIN_HOOK_S, deadline - time.monotonic())
                done, _ = await asyncio.wait({step}, timeout=budget)
                if step in done:
                    if not step.cancelled() and (exc := step.exception()) is not None:
                        _log.error("stop stage %s, step %d failed: %r", stage.name, index, exc)
                    continue
                step.cancel()
                name = f"{stage.name}[{index}]"
                self.abandoned.append(name)
                _log.error(
                    "stop stage %s exceeded %.1fs: step %d abandoned", stage.name, budget, index
                )
            _log.debug("stop stage %s took %.3fs", stage.name, time.monotonic() - started)


def stop_budget_s() -> float:
    """The longest a stop may take: every stage's budget, plus what abandoned steps may add."""
    return sum(stage.timeout_s for stage in STOP_STAGES) + MIN_HOOK_S * len(STOP_STAGES)


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def unless_stopped(stop: asyncio.Event, step: Awaitable[None]) -> bool:
    """Await `step` unless `stop` is set first (then `step` is cancelled): False."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    _log.warning("stop requested while starting: not waiting for the start-up to finish")
    return False


def start_deadline() -> threading.Timer:
    """Whatever hangs (a client that ignores cancellation, a stuck start-up, a blocked loop),
    the process ends within the stop budget: exit 1, after the logs are flushed."""
    timer = threading.Timer(stop_budget_s() + 1.0, abandon, ("did not stop in time",))
    timer.daemon = True
    timer.start()
    return timer


async def leave(abandoned: list[str]) -> None:
    """Cancel what is left in the group; a task that does not end within a second is abandoned
    with the process (the TaskGroup, and asyncio.run after it, would wait for it forever)."""
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    for task in left:
        task.cancel()
    if left:
        _, pending = await asyncio.wait(left, timeout=1.0)
        if pending:
            names = ", ".join(sorted(t.get_name() for t in pending))
            abandon(f"tasks that ignore their cancellation: {names}")
    if abandoned:
        _log.warning("stopped; abandoned stop steps: %s", ", ".join(abandoned))


def abandon(why: str) -> None:
    """End the process now, exit 1, after the logs are flushed."""
    _log.critical("stop abandoned (%s): exiting with 1", why)
    logging.shutdown()
    os._exit(1)
