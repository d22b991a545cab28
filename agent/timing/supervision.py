"""Timing supervision of tasks, modelled on the AUTOSAR Watchdog Manager (seed 7.3 safetyMetrics).

Checks are pure functions of their inputs; `TaskSupervisor` keeps one task's state and is driven
by reports and by a clock passed in (`now_ns`, CLOCK_MONOTONIC), so every behaviour is testable with
tables and no sleeping.

- Deadline supervision: an activation's response time, end minus release (its start when no
  release is reported), must not exceed the deadline. A start whose end has not come by release +
  deadline is a miss too (hang-up), reported when `tick` sees it; its late end does not count again.
  An end that comes after the hang-up was reported but lies within the deadline (its report was
  late, not the task) takes the miss back: the count falls, a `Correction` says so, and an episode
  that held nothing else is resolved as corrected.
- Verdicts are "as of" a time: `tick(now_ns)` judges on the assumption that every report of an
  event up to `now_ns` has been delivered. The caller guarantees it (agent.timing.service drains the
  ingest socket and judges `hangup_grace` in the past); `next_check_ns` says when a verdict could
  next change without a report, so the caller sleeps until then instead of polling.
- Execution budget: end minus start above `executionTime` is an overrun; the observed maximum is the
  worst-case execution time (WCET); mean and variance are kept (Welford), and the scheduling latency
  is start minus release.
- Alive supervision: within any window of one reference cycle (default ten periods), the
  activations and heartbeats must number the expected count within margins. An activation counts
  once, at its start (a late end is a deadline matter, not a sign of life missing). The window
  slides, so a task that falls silent fails it after `alive_margin` + 1 missing periods; too many
  indications are seen when they arrive, and a silent task that reports again is resolved at once.
- Logical supervision: where a checkpoint graph is configured, each checkpoint must be allowed after
  the previous one.
- Local status per task, evaluated per reference cycle: OK; FAILED while failed cycles are within
  the tolerance; EXPIRED beyond it. A cycle fails when a violation happened in it or the alive
  window was failing when it closed, so cycles can be closed late (`advance`) with the same result.
  FAILED returns to OK after a passing cycle, EXPIRED after `recovery_cycles` passing cycles. The
  node's global status is the worst local status.
- Episodes: a violation kind stays in an episode until `resolve_after` consecutive clean
  activations (alive: one clean cycle) end it; `Violation`s report each miss, `Resolution` the end.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from agent.timing.checks import (
    Correction,
    Outcome,
    Resolution,
    Status,
    TaskSpec,
    Violation,
    check_alive,
    check_budget,
    check_deadline,
    check_logical,
    next_status,
    to_ms,
)

OPEN_LIMIT = 256
"""Starts without an end kept per task: enough for any sane period, bounded for a bad one."""


@dataclass(slots=True)
class _Episode:
    clean: int = 0
    count: int = 0


@dataclass(slots=True)
class TaskSupervisor:
    spec: TaskSpec
    activations: int = 0
    deadline_misses: int = 0
    budget_overruns: int = 0
    alive_failures: int = 0
    logical_errors: int = 0
    checks: int = 0
    corrections: int = 0
    """Hang-ups taken back because their end, read late, lay within the deadline."""
    wcet_ns: int = 0
    _mean_ns: float = 0.0
    _m2: float = 0.0
    _latency_sum_ns: int = 0
    _latency_count: int = 0
    last_report_ns: int | None = None
    status: Status = Status.OK
    _failed_run: int = 0
    _passed_run: int = 0
    _cycle_start_ns: int | None = None
    _first_ns: int | None = None
    _alive: deque[int] = field(default_factory=deque)
    _cycle_failed: bool = False
    _last_checkpoint: str | None = None
    _open: OrderedDict[int, tuple[int, int | None]] = field(default_factory=OrderedDict)
    _hung: set[int] = field(default_factory=set)
    _latest_ns: int | None = None
    """The newest indication time seen (alive window pruning)."""
    _judged_ns: int | None = None
    """The latest time `tick` judged as of."""
    lag_ns: int = 0
    """How late this task's reports can be on top of the sender's own delay (the tracer reads
    its buffer periodically); the caller adds it to its grace."""
    _episodes: dict[str, _Episode] = field(default_factory=dict)
    last_check: dict[str, tuple[bool, int]] = field(default_factory=dict)
    """Check name -> (passed, when) of its last evaluation."""

    # reports --------------------------------------------------------------------------------

    def start(self, seq: int, ts_ns: int, release_ns: int | None) -> list[Outcome]:
        self._seen(ts_ns)
        self._open[seq] = (ts_ns, release_ns)
        while len(self._open) > OPEN_LIMIT:
            dropped, _ = self._open.popitem(last=False)
            self._hung.discard(dropped)
        return self._indicate(ts_ns)

    def end(self, seq: int, ts_ns: int) -> list[Outcome]:
        self._seen(ts_ns)
        opened = self._open.pop(seq, None)
        if opened is None:
            return []
        start_ns, release_ns = opened
        return self._complete(seq, start_ns, ts_ns, release_ns)

    def activation(
        self, seq: int | None, start_ns: int, end_ns: int, release_ns: int | None
    ) -> list[Outcome]:
        self._seen(end_ns)
        return self._indicate(start_ns) + self._complete(seq, start_ns, end_ns, release_ns)

    def _complete(
        self, seq: int | None, start_ns: int, end_ns: int, release_ns: int | None
    ) -> list[Outcome]:
        self.activations += 1
        execution = end_ns - start_ns
        self.wcet_ns = max(self.wcet_ns, execution)
        delta = execution - self._mean_ns
        self._mean_ns += delta / self.activations
        self._m2 += delta * (execution - self._mean_ns)
        if release_ns is not None:
            self._latency_sum_ns += start_ns - release_ns
            self._latency_count += 1
        outcomes: list[Outcome] = []
        response = check_deadline(self.spec, start_ns, end_ns, release_ns)
        if seq is not None and seq in self._hung:
            self._hung.discard(seq)  # counted as a miss when the deadline passed
            if response is None:
                outcomes += self._take_back(seq, start_ns, end_ns, release_ns)
        else:
            outcomes += self._judge("deadline_miss", response, self.spec.deadline_ns, end_ns, seq)
        overrun = check_budget(self.spec, start_ns, end_ns)
        outcomes += self._judge("budget_overrun", overrun, self.spec.budget_ns, end_ns, seq)
        return outcomes

    def _take_back(
        self, seq: int, start_ns: int, end_ns: int, release_ns: int | None
    ) -> list[Outcome]:
        """The hang-up of `seq` was reported, but its end lies within the deadline."""
        self.deadline_misses -= 1
        self.corrections += 1
        self.last_check["Deadline"] = (True, end_ns)
        response = end_ns - (release_ns if release_ns is not None else start_ns)
        why = (
            f"activation {seq} of task {self.spec.task} of {self.spec.model} ended within its "
            f"deadline ({to_ms(response)}ms against {to_ms(self.spec.deadline_ns or 0)}ms); its "
            f"end was reported after the hang-up check, so the hang-up is taken back"
        )
        spec = self.spec
        episode = self._episodes.get("deadline_miss")
        if episode is not None:
            episode.count -= 1
            if episode.count <= 0:
                del self._episodes["deadline_miss"]
                return [Resolution(spec.model, spec.task, "deadline_miss", end_ns, corrected=why)]
        return [Correction(spec.model, spec.task, "deadline_miss", seq, end_ns, why)]

    def heartbeat(self, ts_ns: int) -> list[Outcome]:
        self._seen(ts_ns)
        return self._indicate(ts_ns)

    def checkpoint(self, name: str, ts_ns: int) -> list[Outcome]:
        self._seen(ts_ns)
        if self.spec.checkpoints is None:
            return []
        ok = check_logical(self.spec, self._last_checkpoint, name)
        previous = self._last_checkpoint
        self._last_checkpoint = name
        if ok:
            return self._clean("logical_error", ts_ns)
        self.logical_errors += 1
        return [
            self._violate("logical_error", f"{previous} -> {name}", "checkpoint graph", ts_ns, None)
        ]

    # time -------------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> list[Outcome]:
        """Hang-ups whose deadline passed by `now_ns`, the alive window ending at `now_ns`, and the
        reference cycles that ended by then; every report of an event up to `now_ns` must have
        been delivered before."""
        outcomes: list[Outcome] = []
        self._judged_ns = max(now_ns, self._judged_ns or now_ns)
        deadline = self.spec.deadline_ns
        if deadline is not None:
            for seq, (start_ns, release_ns) in self._open.items():
                due = (release_ns if release_ns is not None else start_ns) + deadline
                if now_ns > due and seq not in self._hung:
                    self._hung.add(seq)
                    outcomes += self._judge(
                        "deadline_miss", now_ns - due + deadline, deadline, now_ns, seq, hang=True
                    )
        self.advance(now_ns)
        cycle = self.spec.reference_cycle_ns
        if cycle is not None and self._first_ns is not None:
            outcomes += self._check_alive(now_ns, cycle)
        return outcomes

    def advance(self, now_ns: int) -> None:
        """Close the reference cycles that ended by `now_ns` (the local status follows)."""
        cycle = self.spec.reference_cycle_ns
        if cycle is None or self._cycle_start_ns is None:
            return
        while now_ns - self._cycle_start_ns >= cycle:
            self._close_cycle(self._cycle_start_ns + cycle)

    def retirable(self) -> bool:
        """Healthy, with no episode and no activation open: nothing would be lost with it."""
        return self.status is Status.OK and not self._episodes and not self._open

    def next_check_ns(self) -> int | None:
        """The earliest time at which `tick` could find something without a report coming first.

        A pending hang-up (the first open activation not yet judged: one past its due time), the
        alive window leaving its margins as indications age out of it. None: nothing can happen
        until a report comes. Reference cycles need no wake-up: `advance` closes them when the
        status is read, with the same result.
        """
        judged = self._judged_ns
        candidates: list[int] = []
        deadline = self.spec.deadline_ns
        if deadline is not None:
            for seq, (start_ns, release_ns) in self._open.items():
                if seq not in self._hung:
                    due = (release_ns if release_ns is not None else start_ns) + deadline + 1
                    # A start read after its deadline was judged: hung at the next verdict.
                    candidates.append(due if judged is None else max(due, judged + 1))
        cycle = self.spec.reference_cycle_ns
        expected = self.spec.expected_alive
        if cycle is not None and expected is not None and self._first_ns is not None:
            firing = "alive_timeout" in self._episodes
            fewest = expected - self.spec.alive_margin
            most = expected + self.spec.alive_margin
            alive = self._alive
            at: int | None = None
            if not firing and fewest > 0:
                # The window fails once its `fewest`-th newest indication ages out of it.
                fall = alive[-fewest] + cycle if len(alive) >= fewest else 0
                at = max(fall, self._first_ns + cycle)
            elif firing and judged is not None:
                # Too many: back within the margins once the surplus has aged out of the window.
                # (Too few ends with a report, which is judged when it arrives.)
                oldest = bisect.bisect_right(alive, judged - cycle)
                surplus = self._count(judged, cycle) - most
                if surplus > 0:
                    at = alive[oldest + surplus - 1] + cycle + 1
            # A time already judged would find what it found then: no report, no new verdict.
            if at is not None and (judged is None or at > judged):
                candidates.append(at)
        return min(candidates, default=None)

    def _indicate(self, ts_ns: int) -> list[Outcome]:
        """An alive indication (an activation's start or a heartbeat), judged as it arrives."""
        alive = self._alive
        if not alive or ts_ns >= alive[-1]:
            alive.append(ts_ns)
        else:
            bisect.insort(alive, ts_ns)  # a late-read report
        cycle = self.spec.reference_cycle_ns
        expected = self.spec.expected_alive
        if cycle is None or expected is None or self._first_ns is None:
            return []
        latest = self._latest_ns = max(ts_ns, self._latest_ns or ts_ns)
        # Keep two cycles of history (a judgement may look back by the grace), bounded for floods.
        limit = 4 * (expected + self.spec.alive_margin) + 64
        while alive and (alive[0] <= latest - 2 * cycle or len(alive) > limit):
            alive.popleft()
        if latest - self._first_ns < cycle:
            return []
        count = self._count(latest, cycle)
        firing = "alive_timeout" in self._episodes
        if check_alive(self.spec, count):
            if firing:
                self.last_check["Alive"] = (True, latest)
                return self._clean("alive_timeout", latest, whole_cycle=True)
            return []
        if count > expected + self.spec.alive_margin and not firing:
            return self._alive_failed(count, latest)
        return []

    def _count(self, now_ns: int, cycle: int) -> int:
        """Indications in the window (now - cycle, now]."""
        alive = self._alive
        return bisect.bisect_right(alive, now_ns) - bisect.bisect_right(alive, now_ns - cycle)

    def _check_alive(self, now_ns: int, cycle: int) -> list[Outcome]:
        """The sliding alive window: fires when it leaves the margins, resolves when back."""
        if self.spec.expected_alive is None or self._first_ns is None:
            return []
        if now_ns - self._first_ns < cycle:
            return []  # a full window has not passed since the task first reported
        count = self._count(now_ns, cycle)
        alive = check_alive(self.spec, count)
        self.last_check["Alive"] = (alive, now_ns)
        firing = "alive_timeout" in self._episodes
        if alive:
            return self._clean("alive_timeout", now_ns, whole_cycle=True) if firing else []
        self._cycle_failed = True
        if firing:
            return []
        return self._alive_failed(count, now_ns)

    def _alive_failed(self, count: int, at_ns: int) -> list[Outcome]:
        self._cycle_failed = True
        self.last_check["Alive"] = (False, at_ns)
        self.alive_failures += 1
        expected = f"{self.spec.expected_alive}±{self.spec.alive_margin}"
        return [self._violate("alive_timeout", count, expected, at_ns, None)]

    def _close_cycle(self, at_ns: int) -> None:
        if self.spec.expected_alive is not None:
            self.checks += 1
        if self._cycle_failed or "alive_timeout" in self._episodes:
            self._failed_run += 1
            self._passed_run = 0
        else:
            self._passed_run += 1
            self._failed_run = 0
        self.status = next_status(self.spec, self.status, self._failed_run, self._passed_run)
        self._cycle_start_ns = at_ns
        self._cycle_failed = False

    # episodes ---------------------------------------------------------------------------------

    def _seen(self, ts_ns: int) -> None:
        self.last_report_ns = ts_ns
        if self._cycle_start_ns is None:
            self._cycle_start_ns = self._first_ns = ts_ns

    def _judge(
        self,
        kind: str,
        value: int | None,
        threshold: int | None,
        at_ns: int,
        seq: int | None,
        *,
        hang: bool = False,
    ) -> list[Outcome]:
        name = "Deadline" if kind == "deadline_miss" else "Execution budget"
        if threshold is None:
            return []
        self.checks += 1
        self.last_check[name] = (value is None, at_ns)
        if value is None:
            return self._clean(kind, at_ns)
        if kind == "deadline_miss":
            self.deadline_misses += 1
        else:
            self.budget_overruns += 1
        self._cycle_failed = True
        return [self._violate(kind, to_ms(value), to_ms(threshold), at_ns, seq, hang=hang)]

    def _violate(
        self,
        kind: str,
        value: float | str,
        threshold: float | str,
        at_ns: int,
        seq: int | None,
        *,
        hang: bool = False,
    ) -> Violation:
        episode = self._episodes.setdefault(kind, _Episode())
        episode.clean = 0
        episode.count += 1
        spec = self.spec
        what = {
            "deadline_miss": "no end by its deadline (hang-up?)" if hang else "missed its deadline",
            "budget_overrun": "overran its execution budget",
            "alive_timeout": "did not report as often as expected",
            "logical_error": "reached a checkpoint out of order",
        }[kind]
        unit = "ms" if kind in {"deadline_miss", "budget_overrun"} else ""
        return Violation(
            spec.model,
            spec.task,
            kind,
            value,
            threshold,
            at_ns,
            seq,
            spec.critical,
            f"task {spec.task} of {spec.model} {what}: {value}{unit} against {threshold}{unit}",
        )

    def _clean(self, kind: str, at_ns: int, *, whole_cycle: bool = False) -> list[Outcome]:
        episode = self._episodes.get(kind)
        if episode is None:
            return []
        episode.clean += 1
        if whole_cycle or episode.clean >= self.spec.resolve_after:
            del self._episodes[kind]
            return [Resolution(self.spec.model, self.spec.task, kind, at_ns)]
        return []

    # results ----------------------------------------------------------------------------------

    @property
    def mean_ns(self) -> float:
        return self._mean_ns

    @property
    def variance_ns2(self) -> float:
        return self._m2 / (self.activations - 1) if self.activations > 1 else 0.0

    @property
    def scheduling_latency_ns(self) -> float | None:
        return self._latency_sum_ns / self._latency_count if self._latency_count else None

    def firing(self) -> frozenset[str]:
        return frozenset(self._episodes)
