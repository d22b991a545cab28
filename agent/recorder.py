"""Turns samples into etcd records and writes them to the buffer in batches.

Producers call `submit` (synchronous, never blocks): samples feed the history rollups, and become
latest-value metric records when they moved past the deadband or their last write is old. The
recorder task writes whatever has queued up as one buffer transaction, so the buffer sees one
commit per burst, not one per sample. A full queue (the buffer cannot keep up) drops the newest
submission and counts it, rather than blocking a collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.evaluate.rollup import CLOCKS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.evaluate.rollup import Rollup, Rollups, Series
    from agent.health import Progress
    from agent.model import Record, Sample
    from agent.store.buffer import AsyncBuffer
    from agent.store.keys import KeyMaker

_log = logging.getLogger(__name__)

ROLLUP_STATE = "rollups"
QUIET = frozenset(
    {
        "agent_records_pushed",
        "agent_cpu_time",
        "agent_since_last_push",
        *(
            f"agent_collector_{kind}_collections"
            for kind in ("node", "container", "process", "gpu", "agent", "reports", "states")
        ),
    }
)
"""The agent's own counts that grow by its own work (pushing, running, collecting): like a clock,
a larger value is no news, so they are written at `max_age_s` only (or when they fall, a
restart). Written at every push they had every push make the next one (each push changed
agent_records_pushed). Counts of what others send (reports), and those that matter when they
move (drops, losses, rejections, errors), are written at once."""
TICK_S = 1.0


@dataclass(slots=True)
class RecorderStats:
    samples: int = 0
    records: int = 0
    overflow: int = 0
    writes: int = 0
    invalid: int = 0
    unchanged: int = 0
    """Samples whose latest value did not move past the deadband: not written again."""


def _number(value: object) -> float | None:
    """A measurement the deadband applies to: floats only. Counts are integers, and every new
    count is written, so a running total such as a drop counter never hides a change."""
    return value if isinstance(value, float) else None


class Recorder:
    name = "recorder"

    def __init__(
        self,
        buffer: AsyncBuffer,
        keys: KeyMaker,
        rollups: Rollups,
        progress: Progress,
        *,
        queue_size: int = 4096,
        deadband_percent: float = 0.0,
        deadband_points: float = 0.0,
        max_age_s: float = 60.0,
        on_records: Callable[[list[Record]], None] | None = None,
    ) -> None:
        """`on_records(batch)`: told of every batch of records accepted (the event log)."""
        self.stats = RecorderStats()
        self._on_records = on_records
        self._buffer = buffer
        self._keys = keys
        self._rollups = rollups
        self._progress = progress
        self._queue: asyncio.Queue[list[Record]] = asyncio.Queue(queue_size)
        self._deadband = deadband_percent / 100
        self._points = deadband_points
        self._max_age_s = max_age_s
        self._published: dict[tuple[str, str, str], tuple[object, float]] = {}
        self.latest: dict[tuple[str, str, str], Sample] = {}
        """(type, id, metric) -> its newest sample, published or held back by the deadband: the
        read side's live values (it shows only the resources of the current inventory)."""
        self._resumed = False

    def _rollup_record(self, rollup: Rollup) -> Record:
        resource_type, resource_id, metric = rollup.series
        return self._keys.rollup(
            resource_type,
            resource_id,
            name=metric,
            window_start_ns=rollup.window_start_ns,
            window_s=self._rollups.window_s,
            stats=rollup.stats,
        )

    def _unchanged(self, sample: Sample, now: float, series: Series) -> bool:
        """Whether the latest value of this metric need not be written again yet."""
        last = self._published.get(series)
        value = sample.value
        if last is not None and now - last[1] < self._max_age_s:
            before = last[0]
            if value == before:
                return True
            if (
                sample.metric in QUIET
                and isinstance(value, int | float)
                and isinstance(before, int | float)
                and value >= before
            ):
                return True  # a count of normal work that grew: no news before max_age_s
            new, old = _number(value), _number(before)
            if new is not None and old is not None:
                moved = abs(new - old)
                if moved <= self._deadband * abs(old):
                    return True
                if sample.unit == "%" and moved <= self._points:
                    return True  # a percentage: at most `deadband_points` points
                if sample.metric in CLOCKS and new >= old:
                    return True
        self._published[series] = (value, now)
        return False

    def submit(self, samples: Sequence[Sample]) -> None:
        records: list[Record] = []
        now = time.monotonic()
        latest = self.latest
        for sample in samples:
            series = (sample.resource_type, sample.resource_id, sample.metric)
            latest[series] = sample
            if (closed := self._rollups.add(sample, series)) is not None:
                records.append(self._rollup_record(closed))
            if self._unchanged(sample, now, series):
                self.stats.unchanged += 1
                continue
            try:
                records.append(
                    self._keys.metric(
                        sample.resource_type,
                        sample.resource_id,
                        name=sample.metric,
                        value=sample.value,
                        unit=sample.unit,
                        ts_ns=sample.ts_ns,
                    )
                )
            except ValueError as exc:
                self.stats.invalid += 1
                _log.warning("sample not recorded: %s", exc)
        self.stats.samples += len(samples)
        self.submit_records(records)

    def submit_records(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self._queue.put_nowait(records)
        except asyncio.QueueFull:
            self.stats.overflow += len(records)
            if self.stats.overflow == len(records):
                _log.error("recorder queue full: the buffer cannot keep up; dropping new records")
            return
        if self._on_records is not None:
            self._on_records(records)

    async def _write_queued(self, batch: list[Record] | None = None) -> None:
        batch = list(batch or ())
        while not self._queue.empty():
            batch += self._queue.get_nowait()
        if batch:
            await self._buffer.put(batch)
            self.stats.records += len(batch)
            self.stats.writes += 1

    async def run(self) -> None:
        self._progress.register(self.name, TICK_S * 3 + 30.0)
        try:
            if not self._resumed:
                # Once: a restart after a failure keeps the windows it has.
                self._resumed = True
                state = await self._buffer.load_state(ROLLUP_STATE)
                if state:
                    self._rollups.import_state(state)
            while True:
                first: list[Record] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_S):
                        first = await self._queue.get()
                closed = self._rollups.close_expired(time.time_ns())
                await self._write_queued(first + [self._rollup_record(r) for r in closed])
                self._progress.tick(self.name)
        finally:
            self._progress.unregister(self.name)

    async def drain(self) -> None:
        """Write what is queued and keep the open rollup windows for the next start."""
        await self._write_queued()
        await self._buffer.save_state(ROLLUP_STATE, self._rollups.export_state())
