"""The anomaly stage (seed 4.4 `anomaly_detection`): the detectors of the configured series, their
alerts and scores, and their baselines kept across restarts.

- `type: statistical` methods name measured metrics (`memory_usage`, `execution_time`, any
  series); every resource's series of that name gets its own `Detector` (agent.evaluate.anomaly)
  at the method's sensitivity. `execution_time` names the supervised tasks' mean execution time
  (`average_execution_time`).
- `type: pattern_based` methods count `state_transitions` and `error_counts` of each resource per
  `window_size` and judge each window's count with the same detector (flapping, error bursts).
- Learning (`baseline.learning_period`, and at least `MIN_POINTS` points): a series does not
  alert; its `{metric}_anomaly_learning` metric says how many seconds are left (0 once learned).
  With `baseline.auto_learn: false` a baseline stops learning once learned (it is frozen); by
  default it goes on learning, robustly, so that it follows slow, normal change.
- An anomalous point fires an `anomaly` alert (warning) with the score, the expected range and the
  observed value, one episode per series, resolved when the series is normal again; every point
  gets a score, `{metric}_anomaly_score` (0.01 steps), handed on when it moved by 0.05, when
  learning ends, or every 30 s.
- Baselines are written every `SAVE_EVERY_S` and at stop to `anomaly-baselines.json` in the state
  directory: versioned, written to a temporary file and renamed (atomic), at most `MAX_SERIES`
  series. A damaged file is set aside (`.damaged`), an event says so, and the series learn again.
  The series of a resource that left the inventory are retired at the next reload.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.alerts.alerts import AlertKey
from agent.evaluate.anomaly import Detector
from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.alerts.alerts import AlertManager
    from agent.config import Config
    from agent.evaluate.states import StateChange
    from agent.manifests import Inventory
    from agent.model import Alert, Record
    from agent.store.keys import KeyMaker

_log = logging.getLogger(__name__)

KIND = "anomaly"
MIN_POINTS = 30
MAX_SERIES = 5000
SAVE_EVERY_S = 60.0
FILE = "anomaly-baselines.json"
FORMAT = 1
ALIASES = {"execution_time": "average_execution_time"}
"""The seed's names -> the agent's series."""
PATTERNS = frozenset({"state_transitions", "error_counts"})
SCORE_STEP = 0.05
"""A score is handed on when it moved by this much since the last one handed on, ..."""
SCORE_EVERY_NS = 30 * 1_000_000_000
"""... or this long after it (so its metric keeps showing that the series is judged)."""


@dataclass(frozen=True, slots=True)
class _Point:
    kind: ResourceType
    rid: str
    metric: str
    sensitivity: str
    t: float
    value: float
    unit: str = ""


@dataclass(slots=True)
class _Out:
    alerts: list[Alert] = field(default_factory=list)
    scores: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class _Window:
    start_s: float
    count: int = 0
    last_errors: float | None = None


def series_key(resource_type: str, resource_id: str, metric: str) -> str:
    return f"{resource_type}/{resource_id}/{metric}"


class Anomalies:
    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        alerts: AlertManager,
        raise_alerts: Callable[[list[Alert]], None],
        *,
        keys: KeyMaker,
        submit_records: Callable[[list[Record]], None],
        submit_samples: Callable[[list[Sample]], None],
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._world = world
        self._alerts = alerts
        self._raise = raise_alerts
        self._keys = keys
        self._records = submit_records
        self._samples = submit_samples
        self._path = None if state_dir is None else state_dir / FILE
        self._clock = clock
        self.detectors: dict[str, Detector] = {}
        self._windows: dict[tuple[ResourceType, str, str], _Window] = {}
        self._emitted: dict[str, tuple[float, float, int]] = {}
        """Series -> (score, learning seconds left, when) last handed to the recorder."""
        self._saved_at = clock()
        self._refresh_methods()

    def _refresh_methods(self) -> None:
        config = self._world()[0].anomaly_detection
        self.enabled = config.enabled
        self.learning_s = config.baseline.learning_period
        self.auto_learn = config.baseline.auto_learn
        self.statistical: dict[str, str] = {}
        """Series name -> sensitivity."""
        self.patterns: dict[str, tuple[str, float]] = {}
        """state_transitions or error_counts -> (sensitivity, window seconds)."""
        for method in config.methods:
            for metric in method.metrics:
                if method.type == "statistical":
                    self.statistical[ALIASES.get(metric, metric)] = method.sensitivity
                elif metric in PATTERNS:
                    self.patterns[metric] = (method.sensitivity, method.window_size or 3600.0)

    def refresh(self) -> None:
        """After a reload: the methods as configured now; the series of resources that left
        this node's inventory are retired."""
        self._refresh_methods()
        inventory = self._world()[1]
        present = {("node", inventory.node)}
        present |= {("model", m) for m in inventory.models}
        present |= {("package", p) for p in inventory.packages}
        present |= {("scenario", s) for s in inventory.scenarios}
        for key in list(self.detectors):
            kind, rid, _ = key.split("/", 2)
            if (kind, rid) not in present:
                del self.detectors[key]
        self.save()

    # baselines --------------------------------------------------------------------------------

    def _detector(self, key: str, sensitivity: str) -> Detector:
        detector = self.detectors.get(key)
        if detector is None:
            if len(self.detectors) >= MAX_SERIES:
                self.detectors.pop(next(iter(self.detectors)))
            detector = self.detectors[key] = Detector(
                sensitivity, min_points=MIN_POINTS, learning_s=self.learning_s
            )
        return detector

    def load(self) -> None:
        """The baselines of the last run; a damaged file is set aside, said, and relearned."""
        path = self._path
        if path is None or not path.exists():
            return
        try:
            document = json.loads(path.read_bytes())
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError("not a baseline file of this format")  # noqa: TRY301
            series = document["series"]
            if not isinstance(series, dict):
                raise TypeError("no series")  # noqa: TRY301
            loaded = {}
            for key, item in list(series.items())[:MAX_SERIES]:
                sensitivity = item["sensitivity"]
                loaded[str(key)] = Detector.from_list(
                    list(item["state"]),
                    sensitivity,
                    min_points=MIN_POINTS,
                    learning_s=self.learning_s,
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            damaged = path.with_suffix(".damaged")
            path.replace(damaged)
            message = f"the anomaly baselines {path} are damaged ({exc}); relearning every series"
            _log.warning("%s (kept as %s)", message, damaged)
            self._records(
                [
                    self._keys.event(
                        ResourceType.NODE,
                        self._keys.node,
                        event_type="anomaly_baselines_damaged",
                        severity="warning",
                        message=message,
                        details={"file": str(path), "kept_as": str(damaged)},
                    )
                ]
            )
            return
        self.detectors.update(loaded)
        _log.info("anomaly baselines of %d series loaded from %s", len(loaded), path)

    def save(self) -> None:
        """Write the baselines atomically (a temporary file renamed over the last one)."""
        path = self._path
        self._saved_at = self._clock()
        if path is None:
            return
        document = {
            "format": FORMAT,
            "saved": self._saved_at,
            "series": {
                key: {"sensitivity": detector.sensitivity, "state": detector.to_list()}
                for key, detector in self.detectors.items()
            },
        }
        temporary = path.with_suffix(".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                json.dump(document, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(path)
        except OSError as exc:
            _log.warning("anomaly baselines not saved to %s: %s", path, exc)

    # judging ----------------------------------------------------------------------------------

    def submit(self, samples: Sequence[Sample]) -> None:
        """Judge the samples of the configured series; raise what changed."""
        if not self.enabled or not (self.statistical or "error_counts" in self.patterns):
            return
        out = _Out()
        for sample in samples:
            value = sample.value
            if isinstance(value, str | bool):
                continue
            if sample.metric == "error_count" and "error_counts" in self.patterns:
                self._count_errors(sample, float(value))
            sensitivity = self.statistical.get(sample.metric)
            if sensitivity is None:
                continue
            point = _Point(
                sample.resource_type,
                sample.resource_id,
                sample.metric,
                sensitivity,
                sample.ts_ns / 1e9,
                float(value),
                sample.unit,
            )
            self._judge(point, out)
        self._flush(out)
        if self._clock() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def _flush(self, out: _Out) -> None:
        if out.alerts:
            self._raise(out.alerts)
        if out.scores:
            self._samples(out.scores)

    def _judge(self, point: _Point, out: _Out) -> None:
        kind, rid, metric, unit = point.kind, point.rid, point.metric, point.unit
        detector = self._detector(series_key(kind.value, rid, metric), point.sensitivity)
        learn = self.auto_learn or detector.learning()
        verdict = detector.update(point.t, point.value, learn=learn)
        now = time.time_ns()
        _, seconds = detector.learning_left(point.t)
        score = round(verdict.score, 2)
        series = series_key(kind.value, rid, metric)
        last = self._emitted.get(series)
        fresh = last is None or now - last[2] >= SCORE_EVERY_NS
        if fresh or abs(score - last[0]) >= SCORE_STEP or (seconds > 0) != (last[1] > 0):  # type: ignore[index]
            # The score and learning metrics go out when they say something new: a move of
            # SCORE_STEP, the end of learning, or SCORE_EVERY_NS since the last (a point every
            # collection would be written to etcd at every collection: scores move a little).
            self._emitted[series] = (score, seconds, now)
            out.scores.append(Sample(kind, rid, f"{metric}_anomaly_score", score, "", now))
            out.scores.append(
                Sample(kind, rid, f"{metric}_anomaly_learning", round(seconds, 1), "s", now)
            )
        key = AlertKey(kind.value, rid, KIND, metric)
        value = point.value
        if verdict.anomalous:
            inventory = self._world()[1]
            model = inventory.models.get(rid) if kind is ResourceType.MODEL else None
            expected = f"{verdict.low:.4g}..{verdict.high:.4g}"
            out.alerts += self._alerts.fire(
                key,
                severity="warning",
                value=round(value, 6),
                threshold=expected,
                asil=model.asil_level if model is not None else "QM",
                message=(
                    f"{metric} {value:.4g}{unit} is anomalous ({verdict.kind}, score "
                    f"{verdict.score:.2f}); expected {expected}{unit}"
                ),
                now_ns=now,
            )
        elif self._alerts.is_firing(key):
            out.alerts += self._alerts.resolve(
                key, now_ns=now, message=f"{metric} {value:.4g}{unit} is normal again"
            )

    # pattern-based ----------------------------------------------------------------------------

    def transition(self, change: StateChange) -> None:
        """A state change: counted into the resource's `state_transitions` window."""
        if not self.enabled or "state_transitions" not in self.patterns or change.previous is None:
            return
        self._count(change.resource_type, change.resource_id, "state_transitions", 1)

    def _count_errors(self, sample: Sample, total: float) -> None:
        key = (sample.resource_type, sample.resource_id, "error_counts")
        window = self._windows.get(key)
        last = window.last_errors if window is not None else None
        self._count(key[0], key[1], "error_counts", 0 if last is None else max(0.0, total - last))
        self._windows[key].last_errors = total

    def _count(self, kind: ResourceType, rid: str, metric: str, amount: float) -> None:
        sensitivity, window_s = self.patterns[metric]
        key = (kind, rid, metric)
        now = self._clock()
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(now, int(amount))
            return
        out = _Out()
        while now - window.start_s >= window_s:
            # A window closed: its count is one point of the series (empty windows too).
            point = _Point(kind, rid, metric, sensitivity, window.start_s, window.count)
            self._judge(point, out)
            window.start_s += window_s
            window.count = 0
            if now - window.start_s > 100 * window_s:
                window.start_s = now  # a long silence: one empty window stands for it
        window.count += int(amount)
        self._flush(out)
