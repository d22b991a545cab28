"""The streaming detector: what it calls, what it learns, what it keeps."""

from __future__ import annotations

import math
import random

import pytest

from agent.evaluate.anomaly import DAY_S, Detector, parse_timestamp, replay


def noisy(count: int, seed: int = 1, level: float = 100.0, sigma: float = 2.0) -> list[float]:
    rng = random.Random(seed)  # noqa: S311 - test noise
    return [level + rng.gauss(0, sigma) for _ in range(count)]


def test_nothing_is_anomalous_while_learning_and_noise_is_never_called() -> None:
    detector = Detector("medium", min_points=100, learning_s=0)
    verdicts = [detector.update(i * 60.0, x) for i, x in enumerate(noisy(2000))]
    assert all(v.learning for v in verdicts[:99])
    assert not any(v.anomalous for v in verdicts[:100])
    false_alarms = sum(1 for v in verdicts if v.anomalous)
    assert false_alarms <= 2, false_alarms
    assert all(0.0 <= v.score < 1.0 for v in verdicts)


def test_learning_also_waits_for_the_learning_period() -> None:
    detector = Detector("medium", min_points=5, learning_s=3600)
    for i in range(100):
        verdict = detector.update(i * 10.0, 100.0 + (i % 3))
    assert verdict.learning  # 100 points, but only 990 s of the 3600
    points, seconds = detector.learning_left()
    assert points == 0
    assert seconds == pytest.approx(2610.0)


def test_a_spike_is_called_and_does_not_teach_the_baseline() -> None:
    detector = Detector("medium", min_points=50)
    for i, x in enumerate(noisy(300)):
        detector.update(i * 60.0, x)
    level, var = detector.level, detector.var
    spike = detector.update(300 * 60.0, 140.0)  # 20 scales
    assert spike.anomalous
    assert spike.kind == "spike"
    assert spike.score > 0.7
    assert abs(detector.level - level) < 0.05
    assert detector.var < var * 1.1
    after = [detector.update((301 + i) * 60.0, x) for i, x in enumerate(noisy(50, seed=2))]
    assert not any(v.anomalous for v in after)


def test_a_level_shift_is_called_at_once_and_learned_in_the_end() -> None:
    detector = Detector("medium", min_points=50)
    for i, x in enumerate(noisy(300)):
        detector.update(i * 60.0, x)
    shifted = [detector.update((300 + i) * 60.0, x + 10.0) for i, x in enumerate(noisy(1500, 3))]
    first = next(i for i, v in enumerate(shifted) if v.anomalous)
    assert first <= 3
    assert not any(v.anomalous for v in shifted[-300:])  # the new level is the normal one now


def test_a_slow_drift_and_a_change_of_variance_are_called() -> None:
    detector = Detector("medium", min_points=50)
    for i, x in enumerate(noisy(300)):
        detector.update(i * 60.0, x)
    drift = [detector.update((300 + i) * 60.0, x + 0.1 * i) for i, x in enumerate(noisy(200, 4))]
    assert any(v.anomalous and v.kind == "shift" for v in drift)
    calm = Detector("medium", min_points=50)
    for i, x in enumerate(noisy(300)):
        calm.update(i * 60.0, x)
    wild = [calm.update((300 + i) * 60.0, x) for i, x in enumerate(noisy(100, 5, sigma=10.0))]
    assert any(v.anomalous and v.kind in {"variance", "spike"} for v in wild)


def test_a_daily_cycle_is_learned_and_not_called() -> None:
    rng = random.Random(9)  # noqa: S311 - test noise
    detector = Detector("medium", min_points=100)
    flags = []
    for i in range(288 * 6):  # six days of 5-minute samples
        t = i * 300.0
        x = 100 + 20 * math.sin(2 * math.pi * (t % DAY_S) / DAY_S) + rng.gauss(0, 2)
        flags.append(detector.update(t, x).anomalous)
    assert sum(flags[288 * 3 :]) <= 2  # from the fourth day on, the cycle is known
    # The same hour's value on another level is called.
    t = 288 * 6 * 300.0
    assert detector.update(t, 100 + 20 * math.sin(2 * math.pi * (t % DAY_S) / DAY_S) + 30).anomalous


def test_the_state_round_trips_and_refuses_what_is_not_one() -> None:
    detector = Detector("high", min_points=10)
    for i, x in enumerate(noisy(2000)):
        detector.update(i * 60.0, x)
    copy = Detector.from_list(detector.to_list(), "high", min_points=10, learning_s=0)
    assert copy.to_list() == detector.to_list()
    a, b = detector.update(3e6, 103.0), copy.update(3e6, 103.0)
    assert (a.score, a.anomalous) == (b.score, b.anomalous)
    bad_states: list[list[float]] = [
        [],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [2, 1, 0, 0, float("nan"), 0, 0, 0, 0, 0, 0],
        [2.0] * 14,
    ]
    for bad in bad_states:
        with pytest.raises(ValueError, match="baseline"):
            Detector.from_list(bad, "medium", min_points=10, learning_s=0)


def test_timestamps_of_every_spelling_the_replay_takes() -> None:
    assert parse_timestamp("2026-12-06 10:00:00") == parse_timestamp("2026-12-06T10:00:00Z")
    assert parse_timestamp("2026-12-06T11:00:00+01:00") == parse_timestamp("2026-12-06T10:00:00Z")
    assert parse_timestamp("1796551200") == 1796551200.0
    with pytest.raises(ValueError, match="yesterday"):
        parse_timestamp("yesterday")


def test_replay_echoes_each_row_and_labels_what_the_detector_calls() -> None:
    rows = [(f"2026-01-01 00:{i // 60:02d}:{i % 60:02d}", x) for i, x in enumerate(noisy(400))]
    rows[350] = (rows[350][0], 180.0)
    out = replay(rows)
    assert [r[0] for r in out] == [r[0] for r in rows]
    assert out[350][3] == 1
    assert sum(r[3] for r in out) <= 3
    assert all(r[3] == 0 for r in out[:40])  # learning: a tenth, at least 30


def test_a_series_that_moves_in_steps_is_judged_against_its_resolution() -> None:
    # Memory that moves by single 4 KiB pages now and then is not anomalous at each page.
    detector = Detector("medium", min_points=30)
    rng = random.Random(3)  # noqa: S311 - test noise
    value = 300.0
    flags = []
    for i in range(500):
        if rng.random() < 0.05:
            value += rng.choice((-1, 1)) * 4 / 1024
        flags.append(detector.update(i * 0.25, value).anomalous)
    assert not any(flags)
    assert detector.update(500 * 0.25, value + 60.0).anomalous  # 60 MB more is
