"""History rollups: per metric and time window, `{min, max, avg, count, last}`.

Windows are aligned to multiples of the window width on the wall clock, so every agent cuts the same
windows and a window's key (its start) is deterministic. A window closes when a sample of a later
window arrives for the same metric, or when `close_expired` finds its end in the past. Open windows
can be exported and imported, so a restart continues them instead of overwriting them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from agent.model import ResourceType, Sample, saturating_add

Series = tuple[ResourceType, str, str]

CLOCKS = frozenset({"uptime"})
"""Metrics that grow with the clock: a larger value says nothing new (the start time, in the status
document, gives it exactly), so only a fall (a restart) or the age limit writes them again."""

COUNTERS = frozenset(
    {
        *CLOCKS,
        "restarts",
        "error_count",
        "oom_kills",
        "cpu_throttled",
        "cpu_throttled_time",
        "pids",
    }
)
"""Counters and clocks: their history is their latest value, so they get no rollups."""


@dataclass(slots=True)
class _Window:
    start_ns: int
    minimum: float
    maximum: float
    total: float
    count: int
    last: float

    def add(self, value: float) -> None:
        if value < self.minimum:
            self.minimum = value
        elif value > self.maximum:
            self.maximum = value
        self.total = saturating_add(self.total, value)
        self.count += 1
        self.last = value


@dataclass(frozen=True, slots=True)
class Rollup:
    series: Series
    window_start_ns: int
    stats: dict[str, float | int]


class Rollups:
    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.window_s = window_s
        self._open: dict[Series, _Window] = {}

    def _close(self, series: Series, window: _Window) -> Rollup:
        stats: dict[str, float | int] = {
            "min": window.minimum,
            "max": window.maximum,
            "avg": window.total / window.count,
            "count": window.count,
            "last": window.last,
        }
        return Rollup(series, window.start_ns, stats)

    def add(self, sample: Sample, series: Series | None = None) -> Rollup | None:
        """Account a numeric sample; returns the rollup of the window it closed, if any.

        `series`, the sample's (type, id, metric) when the caller has it already, saves building it.
        """
        value: float
        if isinstance(sample.value, float):
            if not math.isfinite(sample.value):
                return None  # not a measurement: nothing to roll up
            value = sample.value
        elif isinstance(sample.value, int) and sample.value.__class__ is int:  # bool has none
            value = sample.value
        else:
            return None
        metric = sample.metric
        if metric in COUNTERS or metric.startswith("agent_"):
            return None
        if series is None:
            series = (sample.resource_type, sample.resource_id, metric)
        start = sample.ts_ns - sample.ts_ns % self.window_ns
        window = self._open.get(series)
        closed = None
        if window is not None and window.start_ns != start:
            if start < window.start_ns:
                return None  # a late sample of a window already written: ignore it
            closed = self._close(series, window)
            window = None
        if window is None:
            self._open[series] = _Window(start, value, value, value, 1, value)
        else:
            window.add(value)
        return closed

    def close_expired(self, now_ns: int) -> list[Rollup]:
        """Close every window that ended before `now_ns`."""
        done = [s for s, w in self._open.items() if w.start_ns + self.window_ns <= now_ns]
        return [self._close(series, self._open.pop(series)) for series in done]

    def export_state(self) -> bytes:
        return json.dumps(
            [
                [str(t), rid, metric, w.start_ns, w.minimum, w.maximum, w.total, w.count, w.last]
                for (t, rid, metric), w in self._open.items()
            ]
        ).encode()

    def import_state(self, data: bytes) -> None:
        for t, rid, metric, *window in json.loads(data):
            series = (ResourceType(t), rid, metric)
            self._open.setdefault(series, _Window(*window))
