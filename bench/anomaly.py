"""Anomaly detection on labelled series: precision, recall and delay per kind and sensitivity,
microseconds per point, bytes per series, beside the recorder's cost per sample.

Prints one JSON line. `.venv/bin/python bench/anomaly.py [--series 12] [--seed 7]`. The series
are generated with a fixed seed: 10 days at 5-minute samples (2,880 points), a level, Gaussian
noise with occasional heavy-tailed outliers that are not labelled (a detector must not call
them), and for half the series a daily cycle; into each, one anomaly of each kind at random
places after the learning part: a spike (one point, 7-10 scales), a level shift (4-6 scales,
lasting), a slow drift (0.02-0.04 scales per point for 300 points) and a change of variance
(noise of 3 scales added for 150 points). Each labelled window starts at the anomaly and lasts
30 points for a spike (100 for a shift, the anomaly's length for the others); an alarm inside
it finds it, the delay is the points from its start to the first alarm; alarms outside any
window are false alarms (counted as runs of consecutive alarmed points). The replay's detector
and the daemon's are one class.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.evaluate.anomaly import Detector  # noqa: E402
from agent.evaluate.rollup import Rollups  # noqa: E402
from agent.health import Progress  # noqa: E402
from agent.model import ResourceType, Sample  # noqa: E402
from agent.recorder import Recorder  # noqa: E402
from agent.store.keys import KeyMaker  # noqa: E402

STEP_S = 300.0
POINTS = 2880
LEARN = 400
KINDS = ("spike", "shift", "drift", "variance")


@dataclass
class Labelled:
    times: list[float]
    values: list[float]
    windows: list[tuple[str, int, int]]
    """(kind, first point, last point) of each labelled anomaly."""


def generate(rng: random.Random) -> Labelled:
    level = rng.uniform(10, 1000)
    sigma = level * rng.uniform(0.01, 0.08)
    daily = rng.random() < 0.5
    amplitude = sigma * rng.uniform(3, 8) if daily else 0.0
    times = [i * STEP_S for i in range(POINTS)]
    values = []
    for t in times:
        noise = rng.gauss(0, sigma)
        if rng.random() < 0.003:  # an unlabelled outlier of the kind real data has
            noise *= rng.uniform(2.5, 3.5)
        values.append(level + amplitude * math.sin(2 * math.pi * (t % 86400) / 86400) + noise)
    # Four anomalies, in random order, far apart, after the learning part.
    kinds = list(KINDS)
    rng.shuffle(kinds)
    windows = [
        inject(rng, kind, values, LEARN + 200 + k * 600 + rng.randrange(0, 150), sigma)
        for k, kind in enumerate(kinds)
    ]
    return Labelled(times, values, windows)


def inject(
    rng: random.Random, kind: str, values: list[float], start: int, sigma: float
) -> tuple[str, int, int]:
    """Put one anomaly of `kind` into `values` at `start`; its labelled window."""
    sign = rng.choice((-1, 1))
    if kind == "spike":
        values[start] += sign * rng.uniform(7, 10) * sigma
        return kind, start, start + 30
    if kind == "shift":
        step = sign * rng.uniform(4, 6) * sigma
        for i in range(start, POINTS):
            values[i] += step
        return kind, start, start + 100
    if kind == "drift":
        slope = sign * rng.uniform(0.02, 0.04) * sigma
        for i in range(start, POINTS):
            values[i] += slope * min(i - start, 300)
        return kind, start, start + 300
    for i in range(start, min(POINTS, start + 150)):  # variance: 4x the noise
        values[i] += rng.gauss(0, 3 * sigma)
    return kind, start, start + 150


def score(series: list[Labelled], sensitivity: str) -> dict[str, object]:
    found: dict[str, list[int]] = {k: [] for k in KINDS}
    missed: dict[str, int] = dict.fromkeys(KINDS, 0)
    false_alarms = 0
    alarms_total = 0
    for labelled in series:
        detector = Detector(sensitivity, min_points=LEARN)
        flags = [
            detector.update(t, x).anomalous
            for t, x in zip(labelled.times, labelled.values, strict=True)
        ]
        inside = [False] * len(flags)
        for kind, first, last in labelled.windows:
            for i in range(first, min(last + 1, len(flags))):
                inside[i] = True
            hits = [i for i in range(first, min(last + 1, len(flags))) if flags[i]]
            if hits:
                found[kind].append(hits[0] - first)
            else:
                missed[kind] += 1
        previous = False
        for i, flag in enumerate(flags):
            if flag and not previous:
                alarms_total += 1
                if not inside[i]:
                    false_alarms += 1
            previous = flag
    detected = sum(len(v) for v in found.values())
    total = detected + sum(missed.values())
    true_alarms = alarms_total - false_alarms
    delays = sorted(d for v in found.values() for d in v)
    return {
        "precision": round(true_alarms / alarms_total, 3) if alarms_total else 1.0,
        "recall": round(detected / total, 3),
        "delay_points": delays[len(delays) // 2] if delays else None,
        "false_alarms": false_alarms,
        "per_kind": {
            kind: {
                "recall": round(len(found[kind]) / (len(found[kind]) + missed[kind]), 3),
                "delay_points": sorted(found[kind])[len(found[kind]) // 2] if found[kind] else None,
            }
            for kind in KINDS
        },
    }


def us_per_point(series: list[Labelled]) -> float:
    points = 0
    started = time.perf_counter()
    for labelled in series:
        detector = Detector("medium", min_points=LEARN)
        update = detector.update
        for t, x in zip(labelled.times, labelled.values, strict=True):
            update(t, x)
        points += len(labelled.values)
    return (time.perf_counter() - started) / points * 1e6


def bytes_per_series(count: int = 1000) -> float:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    detectors = []
    for i in range(count):
        detector = Detector("medium")
        for j in range(60):
            detector.update(j * 60.0, float(i + j % 7))
        detectors.append(detector)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / count


def recorder_us_per_sample(count: int = 50_000) -> float:
    class NoBuffer:
        async def put(self, records: object) -> None:
            del records

    recorder = Recorder(NoBuffer(), KeyMaker("n1"), Rollups(60.0), Progress())  # type: ignore[arg-type]
    samples = [
        Sample(ResourceType.MODEL, f"m{i % 300}", "cpu_usage", float(i % 97), "%", i * 1000)
        for i in range(count)
    ]
    started = time.perf_counter()
    for start in range(0, count, 1000):
        recorder.submit(samples[start : start + 1000])
        recorder._queue = type(recorder._queue)(4096)  # noqa: SLF001 - drop what would be written
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    series = [generate(rng) for _ in range(args.series)]
    by_sensitivity = {s: score(series, s) for s in ("low", "medium", "high")}
    medium = by_sensitivity["medium"]
    result = {
        "series": args.series,
        "points": args.series * POINTS,
        "us_per_point": round(us_per_point(series), 3),
        "bytes_per_series": round(bytes_per_series()),
        "recorder_us_per_sample": round(recorder_us_per_sample(), 3),
        "precision": medium["precision"],
        "recall": medium["recall"],
        "delay_points": medium["delay_points"],
        "by_sensitivity": by_sensitivity,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
