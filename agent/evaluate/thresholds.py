"""Performance thresholds (seed 3.2 `performance_monitoring`): warning and critical levels of a
measured series, judged at every sample.

Which series a threshold name means (`SERIES`): a percentage of a model's memory is of its limit
(`memory_usage_percent`); durations are compared in the series' milliseconds. Application-reported
metrics (`inference_time`, `latency`, `response_time`) are judged on their mean over windows of
`performance_monitoring.collection_interval` (`Window`), so one slow request does not fire.

The rule, per (threshold, resource), with `h` its hysteresis (a share of the level):
- A level is reached when the value is at or above it; it holds while the value stays at or above
  the level * (1 - h). The state is the highest level reached or held.
- Rising (quiet → warning → critical) waits for `hold` (`for:`): the level must be reached at every
  sample for that long; until then nothing fires. Escalation keeps the episode (the same alert id,
  severity raised); a value falling back below a held level lowers it at once (critical →
  warning, or resolved).
- A firing level counts each sample that confirms it (the alert's `count`).

`Thresholds.judge` is pure: samples in, `Verdict`s out; agent.evaluate.alerting turns them into
alerts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from agent.config import PerformanceMetric

Level = Literal["warning", "critical"]
_ORDER: dict[Level | None, int] = {None: 0, "warning": 1, "critical": 2}

SERIES: dict[str, tuple[tuple[ResourceType, str], ...]] = {
    "memory_usage": (
        (ResourceType.MODEL, "memory_usage_percent"),
        (ResourceType.NODE, "memory_usage_percent"),
    ),
    "cpu_usage": ((ResourceType.MODEL, "cpu_usage"), (ResourceType.NODE, "cpu_usage")),
    "gpu_usage": ((ResourceType.MODEL, "gpu_usage"), (ResourceType.NODE, "gpu_usage")),
    "disk_usage": ((ResourceType.NODE, "disk_usage_percent"),),
    "failure_rate": ((ResourceType.SCENARIO, "failure_rate"),),
    "execution_time": (
        (ResourceType.SCENARIO, "last_execution_time"),
        (ResourceType.MODEL, "average_execution_time"),
    ),
    "response_time": ((ResourceType.MODEL, "response_time"),),
    "inference_time": ((ResourceType.MODEL, "inference_time"),),
    "latency": ((ResourceType.MODEL, "latency"),),
    "error_count": ((ResourceType.MODEL, "error_count"),),
}
"""Threshold name -> the series (resource type, metric) it judges."""

WINDOWED = frozenset({"inference_time", "latency", "response_time"})
"""Application-reported: judged on the mean of each `collection_interval` window."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    warning: float | None
    critical: float | None
    hold_ns: int
    hysteresis: float
    """A share (0.05 for 5 %)."""
    unit: str

    def level_of(self, value: float, current: Level | None) -> Level | None:
        """The level `value` reaches, or holds from `current` (hysteresis)."""
        keep = 1.0 - self.hysteresis
        if self.critical is not None and (
            value >= self.critical or (current == "critical" and value >= self.critical * keep)
        ):
            return "critical"
        if self.warning is not None and (
            value >= self.warning or (current is not None and value >= self.warning * keep)
        ):
            return "warning"
        return None

    def threshold(self, level: Level) -> float:
        value = self.critical if level == "critical" else self.warning
        return 0.0 if value is None else value


def rules(metrics: Iterable[PerformanceMetric]) -> dict[tuple[ResourceType, str], list[Rule]]:
    """The rules of the config, by the series they judge."""
    out: dict[tuple[ResourceType, str], list[Rule]] = {}
    for metric in metrics:
        # Durations are written in seconds (Quantity) and measured in milliseconds.
        scale = 1000.0 if metric.name in {"execution_time", *WINDOWED} else 1.0
        warning, critical = metric.threshold_warning, metric.threshold_critical
        unit = "ms" if scale == 1000.0 else ("%" if warning and warning.unit == "%" else "")
        for resource_type, series in SERIES[metric.name]:
            rule = Rule(
                name=metric.name,
                metric=series,
                warning=None if warning is None else warning.value * scale,
                critical=None if critical is None else critical.value * scale,
                hold_ns=round((metric.hold or 0.0) * 1e9),
                hysteresis=metric.hysteresis / 100,
                unit=unit,
            )
            out.setdefault((resource_type, series), []).append(rule)
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """A change of a threshold's state for one resource: `level` None means resolved."""

    rule: Rule
    resource_type: ResourceType
    resource_id: str
    level: Level | None
    value: float
    at_ns: int

    @property
    def message(self) -> str:
        unit = self.rule.unit
        if self.level is None:
            return f"{self.rule.metric} back to {self.value:g}{unit}"
        return (
            f"{self.rule.metric} {self.value:g}{unit} at or above its {self.level} threshold "
            f"{self.rule.threshold(self.level):g}{unit}"
        )


@dataclass(slots=True)
class _State:
    level: Level | None = None
    pending: Level | None = None
    pending_since_ns: int = 0


@dataclass(slots=True)
class Window:
    """The mean of an application-reported series over one window."""

    start_ns: int
    total: float = 0.0
    count: int = 0


class Thresholds:
    def __init__(
        self,
        by_series: dict[tuple[ResourceType, str], list[Rule]],
        *,
        window_s: float,
    ) -> None:
        self._rules = by_series
        self._state: dict[tuple[Rule, str], _State] = {}
        self._window_ns = round(window_s * 1e9)
        self._windows: dict[tuple[ResourceType, str, str], Window] = {}

    def watches(self, resource_type: ResourceType, metric: str) -> bool:
        return (resource_type, metric) in self._rules

    def judge(self, samples: Sequence[Sample], now_ns: int) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for sample in samples:
            rules_ = self._rules.get((sample.resource_type, sample.metric))
            if rules_ is None:
                continue
            value = sample.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            if sample.metric in WINDOWED:
                mean = self._windowed(sample, float(value), now_ns)
                if mean is None:
                    continue
                value = mean
            for rule in rules_:
                verdict = self._step(rule, sample, float(value), now_ns)
                if verdict is not None:
                    verdicts.append(verdict)
        return verdicts

    def _windowed(self, sample: Sample, value: float, now_ns: int) -> float | None:
        """The mean of the window that `now_ns` closed, if it closed one; `value` joins the next."""
        key = (sample.resource_type, sample.resource_id, sample.metric)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(now_ns)
        mean = None
        if now_ns - window.start_ns >= self._window_ns and window.count:
            mean = window.total / window.count
            window = self._windows[key] = Window(now_ns)
        window.total += value
        window.count += 1
        return mean

    def _step(self, rule: Rule, sample: Sample, value: float, now_ns: int) -> Verdict | None:
        key = (rule, sample.resource_id)
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _State()
        reached = rule.level_of(value, state.level)
        if _ORDER[reached] > _ORDER[state.level]:
            # Rising: only once the level has been reached for `hold`.
            if state.pending != reached:
                state.pending, state.pending_since_ns = reached, now_ns
            if now_ns - state.pending_since_ns < rule.hold_ns:
                return None
            state.level, state.pending = reached, None
        elif reached != state.level:
            # Falling (hysteresis already applied): at once.
            state.level, state.pending = reached, None
            if reached is None:
                del self._state[key]
        else:
            state.pending = None
            if reached is None:
                return None
        return Verdict(rule, sample.resource_type, sample.resource_id, reached, value, now_ns)

    def forget(self, resource_type: ResourceType, resource_id: str) -> None:
        """A resource left the node: its states and windows go (no resolution is sent)."""
        for key in [k for k in self._state if k[1] == resource_id]:
            del self._state[key]
        for wkey in [k for k in self._windows if k[:2] == (resource_type, resource_id)]:
            del self._windows[wkey]
