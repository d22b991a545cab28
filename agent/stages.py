"""Supervision of the pipeline's long-lived tasks: what happens when one fails.

An exception that escapes a stage is logged with the stage's name and counted
(`agent_stage_failures_<stage>`); then, by the stage's rule in `RULES`, the stage is started again
after a backoff (`restart`: it keeps no state that a restart loses, and the agent is better off
without it for a moment than stopped), or the agent stops cleanly and exits 1 (`stop`: a stage
whose loss would make the agent lie about its health).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


class Rule(enum.Enum):
    RESTART = "restart"
    STOP = "stop"


RULES: Mapping[str, Rule] = {
    # intake: a failed reader loses at most what it would have read meanwhile
    "manifests": Rule.RESTART,
    "timing": Rule.RESTART,
    "tracer": Rule.RESTART,
    # evaluation into the buffer: the queue outlives the task, so nothing queued is lost
    "recorder": Rule.RESTART,
    # outputs: each one resumes from the buffer or the outbox, which outlive it
    "pusher": Rule.RESTART,
    "election": Rule.RESTART,
    "mqtt": Rule.RESTART,
    # read side: it holds nothing; a listener that failed (its port taken) binds again
    "api": Rule.RESTART,
    # lifecycle (agent.app): without reloads the agent still runs; without its watchdog feed
    # systemd would kill it blind, so it stops with exit 1 and says why
    "control": Rule.RESTART,
    "manifest_watch": Rule.RESTART,
    "watchdog": Rule.STOP,
}
BACKOFF_S = (0.5, 30.0)
"""First and longest pause before a failed stage starts again (doubling in between)."""
HEALTHY_S = 60.0
"""A stage that ran this long before it failed starts again after the first pause."""


@dataclass(slots=True)
class StageFailures:
    counts: Counter[str] = field(default_factory=Counter)
    fatal: str | None = None
    """The stage whose failure stops the agent (exit 1), if one did."""


async def supervised(
    stage: str,
    run: Callable[[], Awaitable[None]],
    failures: StageFailures,
    on_fatal: Callable[[str], None],
) -> None:
    """Run `run()` until it returns or is cancelled, under the stage's rule (`RULES`)."""
    rule = RULES[stage]
    pause = BACKOFF_S[0]
    while True:
        started = time.monotonic()
        try:
            await run()
        except Exception:  # noqa: BLE001 - the rule decides; the traceback is logged
            failures.counts[stage] += 1
            if rule is Rule.STOP:
                _log.critical("stage %s failed; stopping the agent (exit 1)", stage, exc_info=True)
                failures.fatal = stage
                on_fatal(stage)
                return
            if time.monotonic() - started >= HEALTHY_S:
                pause = BACKOFF_S[0]
            _log.error("stage %s failed; starting it again in %.1fs", stage, pause, exc_info=True)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_S[1])
        else:
            return
