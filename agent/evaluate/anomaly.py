"""Anomaly detection on measured series (seed 4.4, `type: statistical`): one streaming detector
per series, constant time per point, about 300 bytes of state.

The baseline of a series is a robust level and scale, plus, once a day of history is there, a
daily profile (24 hourly offsets). Each point is compared with what the baseline expects:

- **spikes**: the residual in units of the scale, `|z|`;
- **level shifts and slow drifts**: a two-sided CUSUM of the residuals (clipped, so one spike
  does not move it), which adds up small steady deviations until they cannot be chance;
- **changes of variance**: a fast estimate of the residuals' variance against the baseline's
  (both a burst of noise and a signal gone flat, such as a stuck sensor).

Robust to the outliers it looks for: the baseline learns from residuals clipped at 2.5 scales
(a Huber update), and from a point it judged anomalous only a tenth as much, so a spike does not
teach the baseline that spikes are normal, while a lasting new level is learned within a few
hundred points (and stops alarming then).

Each point gets `evidence`: the largest of `|z| / Z`, `cusum / H` and the variance ratio's log
against `log V`, the three limits of the sensitivity (`SENSITIVITY`); its score is
`evidence / (1 + evidence)` in [0, 1), and the point is anomalous when `evidence >= 1` (a score
of 0.5 or more). A series is learning, and never anomalous, until it has `min_points` points and
spans `learning_s` seconds.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final, NamedTuple

SENSITIVITY: Final[dict[str, tuple[float, float, float]]] = {
    # (Z: |z| limit, H: CUSUM limit, V: variance ratio limit)
    "low": (6.0, 14.0, 8.0),
    "medium": (4.5, 10.0, 5.0),
    "high": (3.5, 7.0, 3.5),
}
"""Sensitivity -> the limits of the three kinds of evidence; see the module docstring."""

ALPHA: Final = 0.02
"""Weight of a point in the baseline's level and variance (a half-life of about 35 points)."""
ALPHA_FAST: Final = 0.15
"""Weight of a point in the fast variance (a change of variance shows within ~10 points)."""
ALPHA_SEASON: Final = 0.1
"""Weight of a point in its hour's offset (an hour-of-day bin sees one point per sample)."""
FLOOR: Final = 0.002
"""The scale is at least this share of the level (and at least the series' resolution)."""
CLIP: Final = 2.5
"""Residuals are clipped at this many scales before the baseline learns from them."""
DRIFT: Final = 0.75
"""The CUSUM's allowance: deviations under 0.75 scales do not add up."""
VAR_CLIP: Final = 3.5
"""A residual adds at most this many scales, squared, to the fast variance (one spike is no
change of variance)."""
CUSUM_CLIP: Final = 4.0
"""A residual adds at most this many scales to the CUSUM (one spike cannot make a shift)."""
HOLD: Final = 0.75
"""An episode of anomalous points ends when the evidence falls under this (it starts at 1)."""
ANOMALOUS_WEIGHT: Final = 0.1
"""How much an anomalous point teaches the baseline, against a normal one."""
PERSIST: Final = 150
"""After this many anomalous points in a row the new behaviour is learned at the full weight:
what lasts is the new normal (the alarm ends once the baseline has caught up)."""
DAY_S: Final = 86_400.0
BINS: Final = 24
VERSION: Final = 2
"""Of the persisted state (`to_list`)."""
_FIELDS: Final = 11
"""Numbers of `to_list` before the daily profile."""


class Verdict(NamedTuple):
    score: float
    """In [0, 1): evidence / (1 + evidence)."""
    anomalous: bool
    learning: bool
    expected: float
    """What the baseline expected at this point."""
    low: float
    high: float
    """The range of values the baseline calls normal here (expected +- Z scales)."""
    kind: str
    """spike, shift or variance (the strongest evidence), or none."""


class Detector:
    """The streaming detector of one series; `update(t, x)` judges a point and learns it."""

    __slots__ = (
        "_day_sums",
        "_season",
        "alarmed",
        "cusum_neg",
        "cusum_pos",
        "fast_var",
        "first_t",
        "last_t",
        "last_x",
        "learning_s",
        "level",
        "limits",
        "min_points",
        "n",
        "quantum",
        "run",
        "sensitivity",
        "var",
    )

    def __init__(
        self,
        sensitivity: str = "medium",
        *,
        min_points: int = 30,
        learning_s: float = 0.0,
    ) -> None:
        self.sensitivity = sensitivity
        self.limits = SENSITIVITY[sensitivity]
        self.min_points = min_points
        self.learning_s = learning_s
        self.n = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.level = 0.0
        self.var = 0.0
        self.fast_var = 0.0
        self.cusum_pos = 0.0
        self.cusum_neg = 0.0
        self.alarmed = False
        self.run = 0
        self.last_x = 0.0
        self.quantum = 0.0
        """The smallest change between two points seen: the series' resolution (a page of
        memory, a tick of CPU time), below which no deviation means anything."""
        self._season: list[float] | None = None
        self._day_sums: list[float] | None = None
        """Over the first day: per bin, the weighted sum of values then the weights (48)."""

    # state ------------------------------------------------------------------------------------

    def learning_left(self, now_t: float | None = None) -> tuple[int, float]:
        """(points, seconds) still to learn before the series may alert."""
        now = self.last_t if now_t is None else now_t
        span = now - self.first_t if self.n else 0.0
        return max(0, self.min_points - self.n), max(0.0, self.learning_s - span)

    def learning(self) -> bool:
        if self.n >= self.min_points and self.last_t - self.first_t >= self.learning_s:
            return False
        points, seconds = self.learning_left()
        return points > 0 or seconds > 0

    def to_list(self) -> list[float]:
        """The state, for the baseline file (numbers only; `from_list` reads it back)."""
        season = self._season or []
        return [
            VERSION,
            self.n,
            self.first_t,
            self.last_t,
            self.level,
            self.var,
            self.fast_var,
            self.cusum_pos,
            self.cusum_neg,
            self.last_x,
            self.quantum,
            *season,
        ]

    @classmethod
    def from_list(
        cls, values: list[float], sensitivity: str, *, min_points: int, learning_s: float
    ) -> Detector:
        """A detector from `to_list`'s numbers; ValueError for anything else."""
        if len(values) not in (_FIELDS, _FIELDS + BINS) or values[0] != VERSION:
            raise ValueError("not a baseline of this version")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError("a baseline holds finite numbers only")
        detector = cls(sensitivity, min_points=min_points, learning_s=learning_s)
        detector.n = int(values[1])
        (
            detector.first_t,
            detector.last_t,
            detector.level,
            detector.var,
            detector.fast_var,
            detector.cusum_pos,
            detector.cusum_neg,
            detector.last_x,
            detector.quantum,
        ) = (float(v) for v in values[2:_FIELDS])
        if detector.n < 0 or detector.var < 0 or detector.fast_var < 0 or detector.quantum < 0:
            raise ValueError("a baseline with a negative count, variance or resolution")
        detector._season = [float(v) for v in values[_FIELDS:]] or None
        return detector

    def _first_day_profile(self, x: float, low: int, high: int, share: float) -> None:
        """Over the first day, each hour's mean; after it, the profile is those means less the
        day's (the level, the mean of all points then)."""
        sums = self._day_sums
        if sums is None:
            sums = self._day_sums = [0.0] * (2 * BINS)
        if self.last_t - self.first_t < DAY_S:
            sums[low] += (1.0 - share) * x
            sums[BINS + low] += 1.0 - share
            sums[high] += share * x
            sums[BINS + high] += share
            return
        self._season = [
            sums[i] / sums[BINS + i] - self.level if sums[BINS + i] > 0 else 0.0
            for i in range(BINS)
        ]
        self._day_sums = None

    # judging ----------------------------------------------------------------------------------

    def _scale(self) -> float:
        floor = max(FLOOR * abs(self.level), self.quantum) + 1e-9
        return math.sqrt(self.var) + floor

    def _offset(self, low: int, high: int, share: float) -> float:
        season = self._season
        if season is None or self.last_t - self.first_t < DAY_S:
            return 0.0
        return season[low] * (1.0 - share) + season[high] * share

    def update(self, t: float, x: float, *, learn: bool = True) -> Verdict:
        """Judge the value `x` at time `t` (seconds, any origin, not decreasing) and, unless
        `learn` is False (a frozen baseline), learn it."""
        z_limit, h_limit, _ = self.limits
        if self.n == 0:
            self.first_t = t
            self.level = x
            self.last_x = x
        step = abs(x - self.last_x)
        self.last_x = x
        self.n += 1
        self.last_t = max(self.last_t, t)
        if self.n <= 3:
            if step > 0 and (self.quantum == 0.0 or step < self.quantum):
                self.quantum = step
            delta = x - self.level
            self.level += delta / self.n
            self.var += (delta * (x - self.level) - self.var) / self.n
            self.fast_var = self.var
            scale = self._scale()
            return Verdict(
                0.0,
                anomalous=False,
                learning=True,
                expected=self.level,
                low=x - scale,
                high=x + scale,
                kind="none",
            )
        bins = _bins(t)
        expected = self.level + self._offset(*bins)
        scale = self._scale()
        residual = x - expected
        z = residual / scale
        learning = self.learning()
        evidence_spike, evidence_shift, evidence_var = self._evidence(
            z, residual, scale, learning=learning
        )
        evidence = max(evidence_spike, evidence_shift, evidence_var)
        # Hysteresis: an episode starts at evidence 1 and lasts while it stays above HOLD, so a
        # value hovering at the limit does not flicker.
        limit = HOLD if self.alarmed else 1.0
        anomalous = evidence >= limit and not learning
        self.alarmed = anomalous
        self.run = self.run + 1 if anomalous else 0
        kind = "none"
        if evidence >= limit:
            kind = (
                "spike"
                if evidence == evidence_spike
                else "shift"
                if evidence == evidence_shift
                else "variance"
            )
        if learn:
            self._learn(bins, x, residual, scale, anomalous)
            if not anomalous and step > 0 and (self.quantum == 0.0 or step < self.quantum):
                # The resolution is learned from normal steps only (after the point is judged).
                self.quantum = step
        if evidence_shift >= 2.0:
            self.cusum_pos = min(self.cusum_pos, 2.0 * h_limit)
            self.cusum_neg = min(self.cusum_neg, 2.0 * h_limit)
        return Verdict(
            evidence / (1.0 + evidence),
            anomalous,
            learning,
            expected,
            expected - z_limit * scale,
            expected + z_limit * scale,
            kind,
        )

    def _evidence(
        self, z: float, residual: float, scale: float, *, learning: bool
    ) -> tuple[float, float, float]:
        """(spike, shift, variance) evidence of a residual; moves the CUSUM and fast variance."""
        z_limit, h_limit, v_limit = self.limits
        if learning:
            # What the baseline does not know yet is no shift: the CUSUM starts once it does.
            self.cusum_pos = self.cusum_neg = 0.0
        else:
            # Comparisons, not min/max: they are the cheaper on this path (once a point).
            clipped_z = CUSUM_CLIP if z > CUSUM_CLIP else -CUSUM_CLIP if z < -CUSUM_CLIP else z  # noqa: FURB136
            pos = self.cusum_pos + clipped_z - DRIFT
            neg = self.cusum_neg - clipped_z - DRIFT
            self.cusum_pos = pos if pos > 0.0 else 0.0  # noqa: FURB136
            self.cusum_neg = neg if neg > 0.0 else 0.0  # noqa: FURB136
        if abs(z) < z_limit:  # a spike is a spike, not a change of variance
            squared = min(residual * residual, (VAR_CLIP * scale) ** 2)
            self.fast_var += ALPHA_FAST * (squared - self.fast_var)
        floor = (scale - math.sqrt(self.var)) ** 2  # below the resolution, no variance counts
        ratio = (self.fast_var + floor) / (self.var + floor)
        log_v = math.log(v_limit)
        if ratio >= 1.0:
            evidence_var = math.log(ratio) / log_v
        else:
            # A signal gone flat: the same ratio, squared, the other way.
            evidence_var = math.log(1.0 / ratio) / (2.0 * log_v) if self.n > 50 else 0.0
        shift = max(self.cusum_pos, self.cusum_neg) / h_limit
        return abs(z) / z_limit, shift, evidence_var

    def _learn(
        self,
        bins: tuple[int, int, float],
        x: float,
        residual: float,
        scale: float,
        anomalous: bool,  # noqa: FBT001 - internal
    ) -> None:
        weight = ANOMALOUS_WEIGHT if anomalous and self.run < PERSIST else 1.0
        bound = CLIP * scale
        clipped = bound if residual > bound else -bound if residual < -bound else residual  # noqa: FURB136
        # Over its first day the level is the mean of all points (so the daily profile is
        # learned against the day's mean, not against a level that chases the cycle).
        first_day = self.last_t - self.first_t < DAY_S
        alpha = (max(ALPHA, 1.0 / self.n) if not first_day else 1.0 / self.n) * weight
        self.level += alpha * clipped
        self.var += alpha * (clipped * clipped - self.var)
        low, high, share = bins
        season = self._season
        if season is None:
            self._first_day_profile(x, low, high, share)
            return
        offset = season[low] * (1.0 - share) + season[high] * share
        deviation = x - self.level
        bounded = max(offset - bound, min(offset + bound, deviation))
        step = ALPHA_SEASON * weight * (bounded - offset)
        season[low] += step * (1.0 - share)
        season[high] += step * share


def _bins(t: float) -> tuple[int, int, float]:
    """The two hourly bins around `t` (bin i is centred on the half hour i:30) and the share of
    the later one: the daily profile is read and learned as a line between bin centres."""
    position = (t % DAY_S) / 3600.0 - 0.5
    base = math.floor(position)
    return base % BINS, (base + 1) % BINS, position - base


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of `2026-12-06T10:00:00Z`, `2026-12-06 10:00:00`, any ISO 8601
    form Python reads (no zone: UTC), or a number of seconds; ValueError for anything else."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def replay_learning_points(rows: int) -> int:
    """The points a replayed series learns from before it may alert: a tenth of it, at least
    30 and at most 1,000 (the daemon learns for `baseline.learning_period` instead)."""
    return max(30, min(1000, rows // 10))


def replay(
    rows: list[tuple[str, float]],
    *,
    sensitivity: str = "medium",
    learning_points: int | None = None,
) -> list[tuple[str, float, float, int]]:
    """(timestamp as read, value, anomaly score, label) of each row, judged in order by the
    daemon's detector at the rows' own times."""
    detector = Detector(
        sensitivity,
        min_points=replay_learning_points(len(rows))
        if learning_points is None
        else learning_points,
    )
    out = []
    for text, value in rows:
        verdict = detector.update(parse_timestamp(text), value)
        out.append((text, value, round(verdict.score, 6), int(verdict.anomalous)))
    return out
