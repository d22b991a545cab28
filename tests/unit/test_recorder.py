from __future__ import annotations

from pathlib import Path

from agent.evaluate.rollup import Rollups
from agent.health import Progress
from agent.model import ResourceType, Sample
from agent.recorder import Recorder
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.keys import KeyMaker


def recorder(tmp_path: Path) -> Recorder:
    buffer = AsyncBuffer(Buffer(tmp_path / "b.sqlite3", 10**6))
    return Recorder(
        buffer, KeyMaker("n1"), Rollups(60), Progress(), deadband_percent=1.0, max_age_s=60.0
    )


def sample(metric: str, value: float | str) -> Sample:
    return Sample(ResourceType.NODE, "n1", metric, value, "", 1)


def test_floats_inside_the_deadband_are_not_written_again_counts_always_are(
    tmp_path: Path,
) -> None:
    rec = recorder(tmp_path)
    rec.submit([sample("memory_usage", 100.0), sample("dropped", 150), sample("phase", "Running")])
    assert rec.stats.unchanged == 0
    rec.submit([sample("memory_usage", 100.9), sample("dropped", 151), sample("phase", "Running")])
    # 0.9 % is inside the 1 % deadband; a count that moved by one is written; a same string not.
    assert rec.stats.unchanged == 2
    rec.submit([sample("memory_usage", 101.2)])
    assert rec.stats.unchanged == 2  # 1.2 % past the value last written


def test_uptime_is_written_again_only_when_it_falls(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.submit([sample("uptime", 10.0)])
    rec.submit([sample("uptime", 11.0)])  # 10 % more: past the deadband, but a clock just ticks
    assert rec.stats.unchanged == 1
    rec.submit([sample("uptime", 0.5)])  # a restart
    assert rec.stats.unchanged == 1
    rec.submit([sample("cpu_usage", 10.0), sample("cpu_usage", 11.0)])
    assert rec.stats.unchanged == 1  # any other metric moving 10 % is written


def test_percentages_have_an_absolute_deadband_and_normal_work_counts_wait_for_max_age(
    tmp_path: Path,
) -> None:
    buffer = AsyncBuffer(Buffer(tmp_path / "b.sqlite3", 10**6))
    rec = Recorder(
        buffer,
        KeyMaker("n1"),
        Rollups(60),
        Progress(),
        deadband_percent=1.0,
        deadband_points=0.5,
        max_age_s=60.0,
    )

    def pct(value: float) -> Sample:
        return Sample(ResourceType.NODE, "n1", "cpu_usage", value, "%", 1)

    rec.submit([pct(2.0)])
    rec.submit([pct(2.4)])  # 20 % of itself, but 0.4 points: noise of a small percentage
    assert rec.stats.unchanged == 1
    rec.submit([pct(2.6)])  # 0.6 points from the value written
    assert rec.stats.unchanged == 1
    rec.submit([sample("agent_records_pushed", 10)])
    rec.submit([sample("agent_records_pushed", 11)])  # a push made it grow: no news
    assert rec.stats.unchanged == 2
    rec.submit([sample("agent_buffer_dropped", 0), sample("agent_buffer_dropped", 1)])
    assert rec.stats.unchanged == 2  # a drop is news at once
    rec.submit([sample("agent_records_pushed", 0)])  # a restart: written
    assert rec.stats.unchanged == 2
