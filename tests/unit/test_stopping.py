"""The staged stop: every step bounded, one that overruns abandoned, the next stages still run."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent import stopping
from agent.stopping import STOP_STAGES, StopPlan, unless_stopped


async def test_a_step_that_ignores_its_cancellation_is_abandoned_and_the_stop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        stopping,
        "STOP_STAGES",
        tuple(stopping.StopStage(s.name, 0.2, s.purpose) for s in STOP_STAGES),
    )
    plan = StopPlan()
    ran: list[str] = []

    release = asyncio.Event()

    async def stubborn() -> None:
        # Ignores its cancellation, as a client that waits for its peer without a bound does,
        # until the test releases it (the loop must be able to close).
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                ran.append("ignored a cancel")

    async def step(name: str) -> None:
        ran.append(name)

    plan.on("flush_outputs", stubborn)
    plan.on("flush_outputs", lambda: step("after it, same stage"))
    plan.on("close", lambda: step("close"))
    started = time.monotonic()
    statuses: list[str] = []
    await plan.run(statuses.append)
    elapsed = time.monotonic() - started
    assert ran[-2:] == ["after it, same stage", "close"]
    assert plan.abandoned == ["flush_outputs[0]"]
    assert statuses == [f"stopping: {s.name}" for s in STOP_STAGES]
    assert elapsed < 0.2 + stopping.MIN_HOOK_S * 4 + 0.3
    release.set()
    await asyncio.sleep(0)


async def test_a_failing_step_does_not_stop_the_others() -> None:
    plan = StopPlan()
    ran: list[str] = []

    async def broken() -> None:
        raise RuntimeError("boom")

    async def step() -> None:
        ran.append("next")

    plan.on("drain_pipeline", broken)
    plan.on("drain_pipeline", step)
    await plan.run(lambda _status: None)
    assert ran == ["next"]
    assert plan.abandoned == []


async def test_a_stop_during_start_up_cancels_the_step() -> None:
    stop = asyncio.Event()
    hung = asyncio.Event()

    async def start_up() -> None:
        await hung.wait()

    asyncio.get_running_loop().call_later(0.02, stop.set)
    assert not await asyncio.wait_for(unless_stopped(stop, start_up()), 2)
    done = asyncio.Event()

    async def quick() -> None:
        done.set()

    assert await unless_stopped(asyncio.Event(), quick())
    assert done.is_set()


def test_the_budget_fits_in_the_units_stop_timeout() -> None:
    assert stopping.stop_budget_s() + 1.0 < 20.0  # TimeoutStopSec in systemd/piccolo-agent.service
