from __future__ import annotations

from agent.evaluate.rollup import Rollups
from agent.model import ResourceType, Sample

S = 1_000_000_000


def sample(ts_s: float, value: float | str, metric: str = "cpu") -> Sample:
    return Sample(ResourceType.NODE, "n1", metric, value, "%", int(ts_s * S))


def test_a_window_closes_when_the_next_one_starts() -> None:
    rollups = Rollups(60)
    assert rollups.add(sample(120.0, 10)) is None
    assert rollups.add(sample(150.0, 30)) is None
    assert rollups.add(sample(179.9, 20)) is None
    closed = rollups.add(sample(180.0, 5))
    assert closed is not None
    assert closed.window_start_ns == 120 * S
    assert closed.stats == {"min": 10, "max": 30, "avg": 20, "count": 3, "last": 20}


def test_non_numeric_values_and_late_samples_are_not_rolled_up() -> None:
    rollups = Rollups(60)
    assert rollups.add(sample(10, "Running", metric="phase")) is None
    rollups.add(sample(70, 1.0))
    assert rollups.add(sample(30, 2.0)) is None
    (closed,) = rollups.close_expired(131 * S)
    assert closed.stats["count"] == 1


def test_close_expired_only_closes_ended_windows() -> None:
    rollups = Rollups(10)
    rollups.add(sample(0, 1.0, metric="a"))
    rollups.add(sample(15, 1.0, metric="b"))
    assert [r.series[2] for r in rollups.close_expired(12 * S)] == ["a"]
    assert rollups.close_expired(12 * S) == []


def test_open_windows_survive_export_and_import() -> None:
    rollups = Rollups(60)
    rollups.add(sample(0, 4.0))
    rollups.add(sample(1, 6.0))
    again = Rollups(60)
    again.import_state(rollups.export_state())
    again.add(sample(2, 8.0))
    (closed,) = again.close_expired(60 * S)
    assert closed.stats == {"min": 4.0, "max": 8.0, "avg": 6.0, "count": 3, "last": 8.0}
