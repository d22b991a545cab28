"""Runs one collector on its interval: no overlap, overruns skipped and counted, errors contained.

Ticks are scheduled on the monotonic clock from the first start, so the cadence does not drift; a
collection that runs past the next tick skips the missed ticks (counted as overruns) instead of
running back to back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.collectors import Collector
    from agent.health import Progress
    from agent.model import Sample

_log = logging.getLogger(__name__)

HUNG_AFTER_INTERVALS = 3


@dataclass(slots=True)
class RunnerStats:
    collections: int = 0
    errors: int = 0
    overruns: int = 0
    last_duration_s: float = 0.0
    max_duration_s: float = 0.0
    last_error: str = ""


class Runner:
    def __init__(
        self,
        name: str,
        collector: Collector,
        interval_s: float,
        sink: Callable[[Sequence[Sample]], None],
        progress: Progress,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`clock` schedules the ticks and times the collections; `sleep` waits for the next tick.

        A hung collection is cut off by asyncio's timeout, on the event loop's clock: a test that
        brings its own time gives the loop's clock here (tests/unit/test_runner.py).
        """
        self.name = name
        self.interval_s = interval_s
        self.stats = RunnerStats()
        self._collector = collector
        self._sink = sink
        self._progress = progress
        self._clock = clock
        self._sleep = sleep

    @property
    def timeout_s(self) -> float:
        """A slow collection may overrun (skipping ticks); a hung one is cut off after this."""
        return HUNG_AFTER_INTERVALS * self.interval_s

    @property
    def max_gap_s(self) -> float:
        """How long without a completed cycle means this runner is stuck."""
        return self.timeout_s + self.interval_s + 5.0

    async def run_once(self) -> None:
        start = self._clock()
        try:
            # Not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as the
            # collection completes, and a runner being stopped would then run on for ever.
            async with asyncio.timeout(self.timeout_s):
                samples = await self._collector.collect()
        except Exception as exc:  # noqa: BLE001 - a failing collector is contained and counted
            self.stats.errors += 1
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if message != self.stats.last_error:
                _log.warning("collector %s failed: %s", self.name, message)
            self.stats.last_error = message
        else:
            if self.stats.last_error:
                _log.info("collector %s recovered", self.name)
                self.stats.last_error = ""
            self._sink(samples)
        duration = self._clock() - start
        self.stats.collections += 1
        self.stats.last_duration_s = duration
        self.stats.max_duration_s = max(self.stats.max_duration_s, duration)
        self._progress.tick(self.name)

    async def run(self) -> None:
        beat = self._progress.register(self.name, self.max_gap_s)
        try:
            next_tick = self._clock()
            while True:
                await self.run_once()
                next_tick += self.interval_s
                now = self._clock()
                if now > next_tick:
                    missed = math.floor((now - next_tick) / self.interval_s) + 1
                    self.stats.overruns += missed
                    next_tick += missed * self.interval_s
                    _log.debug("collector %s overran; skipped %d tick(s)", self.name, missed)
                await self._sleep(next_tick - now)
        finally:
            self._progress.unregister(self.name, beat)
