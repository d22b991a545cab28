"""The rule of each stage when it fails: started again with backoff, or a clean stop."""

from __future__ import annotations

import asyncio

import pytest

from agent import stages
from agent.stages import RULES, Rule, StageFailures, supervised


async def test_a_restartable_stage_is_started_again_after_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stages, "BACKOFF_S", (0.01, 0.04))
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise RuntimeError(f"failure {runs}")

    failures = StageFailures()
    fatal: list[str] = []
    await asyncio.wait_for(supervised("recorder", run, failures, fatal.append), 2)
    assert runs == 4
    assert failures.counts == {"recorder": 3}
    assert fatal == []
    assert failures.fatal is None


async def test_a_stage_whose_rule_is_stop_stops_the_agent_once() -> None:
    async def run() -> None:
        raise RuntimeError("no watchdog")

    failures = StageFailures()
    fatal: list[str] = []
    await asyncio.wait_for(supervised("watchdog", run, failures, fatal.append), 2)
    assert fatal == ["watchdog"]
    assert failures.fatal == "watchdog"
    assert failures.counts == {"watchdog": 1}


async def test_cancellation_is_not_a_failure() -> None:
    failures = StageFailures()

    async def forever() -> None:
        await asyncio.Event().wait()

    task = asyncio.ensure_future(supervised("pusher", forever, failures, print))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures.counts == {}


def test_every_rule_is_one_of_the_two() -> None:
    assert set(RULES.values()) <= {Rule.RESTART, Rule.STOP}
    assert RULES["watchdog"] is Rule.STOP
