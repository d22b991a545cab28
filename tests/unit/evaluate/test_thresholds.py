"""The threshold rule: levels, hysteresis, hold (`for:`), escalation, and what each series is."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config import PerformanceMetric, PerformanceMonitoring
from agent.evaluate.thresholds import Thresholds, rules
from agent.model import ResourceType, Sample

S = 1_000_000_000
MODEL = ResourceType.MODEL


def memory(**extra: object) -> Thresholds:
    metric = PerformanceMetric.model_validate(
        {"name": "memory_usage", "threshold_warning": "80%", "threshold_critical": "95%", **extra}
    )
    return Thresholds(rules([metric]), window_s=10)


def run(thresholds: Thresholds, values: list[float], every_s: float = 1.0) -> list[str | None]:
    """The level after each value, or '-' where nothing changed (no verdict)."""
    out: list[str | None] = []
    for i, value in enumerate(values):
        sample = Sample(MODEL, "m", "memory_usage_percent", value, "%", 0)
        verdicts = thresholds.judge([sample], round(i * every_s * S))
        out.append(verdicts[0].level if verdicts else "-")
    return out


@pytest.mark.parametrize(
    ("values", "levels"),
    [
        # Quiet below the level; fires at it; confirmed while it stays; resolved below 76.
        ([50, 79.9, 80, 85, 77, 76.1, 75.9, 79], ["-", "-", "warning", "warning", "warning",
                                                   "warning", None, "-"]),
        # Hovering around 80 (between 76 and 80) after it fired does not flap.
        ([80, 79, 80.5, 78, 80, 77], ["warning"] * 6),
        # Escalation and back: critical holds down to 90.25, then warning, then resolved.
        ([81, 96, 94, 91, 90, 60], ["warning", "critical", "critical", "critical", "warning",
                                    None]),
        # Straight to critical.
        ([99, 10], ["critical", None]),
    ],
)  # fmt: skip
def test_levels_with_five_percent_hysteresis(values: list[float], levels: list[str]) -> None:
    assert run(memory(), values) == levels


def test_a_hold_fires_only_once_the_level_held_that_long() -> None:
    thresholds = memory(**{"for": "3s"})
    # At 1 s intervals: reached at t=0, still at t=3 -> fires then; a dip restarts the wait.
    assert run(thresholds, [85, 85, 85, 85]) == ["-", "-", "-", "warning"]
    again = memory(**{"for": "3s"})
    assert run(again, [85, 85, 50, 85, 85, 85, 85]) == ["-", "-", "-", "-", "-", "-", "warning"]


def test_durations_are_compared_in_milliseconds_and_app_metrics_by_window_mean() -> None:
    metric = PerformanceMetric.model_validate(
        {"name": "inference_time", "threshold_warning": "50ms", "threshold_critical": "100ms"}
    )
    thresholds = Thresholds(rules([metric]), window_s=10)

    def at(t_s: float, value: float) -> list[str | None]:
        sample = Sample(MODEL, "m", "inference_time", value, "ms", 0)
        return [v.level for v in thresholds.judge([sample], round(t_s * S))]

    # One slow request inside a window is averaged away: (10 + 10 + 120) / 3 < 50.
    for t_s, value in [(0, 10), (3, 10), (6, 120)]:
        assert at(t_s, value) == []
    assert at(10, 10) == []  # closes the first window (mean 46.7): quiet
    for t_s in (14, 18):
        assert at(t_s, 200) == []
    assert at(20, 10) == ["critical"]  # second window's mean (10+200+200)/3 = 136.7 ms


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"name": "memory_usage", "threshold_warning": "180%"}, "cannot reach 180%"),
        ({"name": "execution_time", "threshold_warning": "80%"}, "must be a duration"),
        ({"name": "failure_rate", "threshold_warning": "500ms"}, "must be a percentage"),
        ({"name": "memory_usage", "threshold_warning": "0%"}, "must be above 0"),
        ({"name": "cpu_usage", "threshold_warning": "90%", "threshold_critical": "80%"}, "above"),
        ({"name": "cpu_usage", "threshold_warning": "90%", "hysteresis": "100%"}, "hysteresis"),
    ],
)
def test_impossible_thresholds_are_refused_at_load(entry: dict[str, str], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        PerformanceMonitoring.model_validate({"metrics": [entry]})


def test_each_threshold_name_judges_its_series() -> None:
    metrics = [
        PerformanceMetric.model_validate({"name": n, "threshold_warning": w})
        for n, w in [("memory_usage", "80%"), ("execution_time", "1s"), ("disk_usage", "90%")]
    ]
    by_series = rules(metrics)
    assert (MODEL, "memory_usage_percent") in by_series
    assert (ResourceType.NODE, "memory_usage_percent") in by_series
    assert (ResourceType.SCENARIO, "last_execution_time") in by_series
    assert by_series[(ResourceType.SCENARIO, "last_execution_time")][0].warning == 1000.0
    assert (ResourceType.NODE, "disk_usage_percent") in by_series
