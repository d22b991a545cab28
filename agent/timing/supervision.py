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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from agent.evaluate.documents import (
    RuntimeVerification,
    SafetyCheck,
    SafetyMetricsDoc,
    Supervision,
    TaskSafety,
)

ASIL_CRITICAL = frozenset({"A", "B", "C", "D"})
OPEN_LIMIT = 256
"""Starts without an end kept per task: enough for any sane period, bounded for a bad one."""


class Status(IntEnum):
    OK = 0
    FAILED = 1
    EXPIRED = 2


@dataclass(frozen=True, slots=True)
class TaskSpec:
    model: str
    task: str
    period_ns: int | None
    deadline_ns: int | None
    budget_ns: int | None
    asil: str = "QM"
    time_critical: bool = False
    reference_cycle_ns: int | None = None
    """Alive-supervision cycle; None without a period (then no alive supervision)."""
    alive_margin: int = 1
    failed_tolerance: int = 2
    recovery_cycles: int = 2
    resolve_after: int = 10
    checkpoints: Mapping[str, frozenset[str]] | None = None
    """Logical supervision: checkpoint -> checkpoints allowed next; "" -> allowed first ones."""

    @property
    def critical(self) -> bool:
        """Violations of ASIL A-D or time-critical tasks are critical alerts."""
        return self.time_critical or self.asil in ASIL_CRITICAL

    @property
    def expected_alive(self) -> int | None:
        if not self.period_ns or not self.reference_cycle_ns:
            return None
        return round(self.reference_cycle_ns / self.period_ns)


@dataclass(frozen=True, slots=True)
class Violation:
    model: str
    task: str
    kind: str
    """deadline_miss, budget_overrun, alive_timeout, logical_error."""
    value: float | str
    threshold: float | str
    at_ns: int
    seq: int | None
    critical: bool
    message: str


@dataclass(frozen=True, slots=True)
class Resolution:
    model: str
    task: str
    kind: str
    at_ns: int
    corrected: str = ""
    """Non-empty when the episode ends because its only violation was taken back: why."""


@dataclass(frozen=True, slots=True)
class Correction:
    """A reported hang-up whose end came late, within the deadline: the miss is taken back."""

    model: str
    task: str
    kind: str
    seq: int
    at_ns: int
    message: str


Outcome = Violation | Resolution | Correction


# Pure checks ------------------------------------------------------------------------------------


def check_deadline(
    spec: TaskSpec, start_ns: int, end_ns: int, release_ns: int | None
) -> int | None:
    """The response time in ns when it exceeds the deadline, else None."""
    if spec.deadline_ns is None:
        return None
    response = end_ns - (release_ns if release_ns is not None else start_ns)
    return response if response > spec.deadline_ns else None


def check_budget(spec: TaskSpec, start_ns: int, end_ns: int) -> int | None:
    """The execution time in ns when it exceeds the budget, else None."""
    if spec.budget_ns is None:
        return None
    execution = end_ns - start_ns
    return execution if execution > spec.budget_ns else None


def check_alive(spec: TaskSpec, count: int) -> bool:
    """Whether `count` alive indications in one reference cycle lie within expected ± margin."""
    expected = spec.expected_alive
    if expected is None:
        return True
    return expected - spec.alive_margin <= count <= expected + spec.alive_margin


def check_logical(spec: TaskSpec, previous: str | None, checkpoint: str) -> bool:
    """Whether `checkpoint` may follow `previous` (None: the task's first checkpoint)."""
    graph = spec.checkpoints
    if graph is None:
        return True
    # After a final checkpoint (one with no successors) a new round starts at an initial one.
    key = "" if previous is None or not graph.get(previous) else previous
    return checkpoint in graph.get(key, frozenset())


def next_status(spec: TaskSpec, status: Status, failed_run: int, passed_run: int) -> Status:
    """The local status after a reference cycle, from the runs of failed and passed cycles."""
    if failed_run:
        return Status.FAILED if failed_run <= spec.failed_tolerance else Status.EXPIRED
    if status is Status.EXPIRED and passed_run < spec.recovery_cycles:
        return Status.EXPIRED
    return Status.OK


def _ms(ns: float) -> float:
    return round(ns / 1e6, 6)


# The state of one task -------------------------------------------------------------------------


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
            f"deadline ({_ms(response)}ms against {_ms(self.spec.deadline_ns or 0)}ms); its end "
            f"was reported after the hang-up check, so the hang-up is taken back"
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
        return [self._violate(kind, _ms(value), _ms(threshold), at_ns, seq, hang=hang)]

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


def safety_document(
    asil: str, tasks: list[TaskSupervisor], now_ns: int, to_wall: Callable[[int], str]
) -> SafetyMetricsDoc:
    """A model's `safetyMetrics` (seed 7.3) from its tasks' supervisors; times in ms.

    `now_ns` is CLOCK_MONOTONIC; `to_wall` turns a monotonic time into the document's timestamp.
    """
    activations = sum(t.activations for t in tasks)
    mean = sum(t.mean_ns * t.activations for t in tasks) / activations if activations else 0.0
    # The pooled variance of all activations, from each task's mean and variance.
    pooled = (
        sum(
            (t.activations - 1) * t.variance_ns2 + t.activations * (t.mean_ns - mean) ** 2
            for t in tasks
            if t.activations
        )
        / (activations - 1)
        if activations > 1
        else 0.0
    )
    latencies = [t.scheduling_latency_ns for t in tasks if t.scheduling_latency_ns is not None]
    recent = [t.last_report_ns for t in tasks if t.last_report_ns is not None]
    cycles = [t.spec.reference_cycle_ns or 0 for t in tasks]
    window = 2 * max(cycles, default=0) or 1_000_000_000
    active = bool(recent) and now_ns - max(recent) <= window
    checks: dict[str, tuple[bool, int]] = {}
    for task in tasks:
        for name, (passed, at) in task.last_check.items():
            before = checks.get(name)
            checks[name] = (
                passed and (before[0] if before else True),
                max(at, before[1] if before else 0),
            )
    worst = max((t.status for t in tasks), default=Status.OK)
    violations = sum(
        t.deadline_misses + t.budget_overruns + t.alive_failures + t.logical_errors for t in tasks
    )
    return SafetyMetricsDoc(
        asil_level=asil,
        safety_monitor_status="Active" if active else "Inactive",
        supervision=Supervision(
            deadline_miss_count=sum(t.deadline_misses for t in tasks),
            budget_overrun_count=sum(t.budget_overruns for t in tasks),
            worst_case_execution_time=_ms(max((t.wcet_ns for t in tasks), default=0)),
            average_execution_time=_ms(mean),
            execution_time_variance=round(pooled / 1e12, 9),
            scheduling_latency=_ms(sum(latencies) / len(latencies)) if latencies else None,
            local_status=worst.name,
            safety_checks=tuple(
                SafetyCheck(
                    name=name, status="Pass" if passed else "Fail", last_check_time=to_wall(at)
                )
                for name, (passed, at) in sorted(checks.items())
            ),
            runtime_verification=RuntimeVerification(
                enabled=True,
                constraints_checked=sum(t.checks for t in tasks),
                constraint_violations=violations,
            ),
            tasks=tuple(
                TaskSafety(
                    name=t.spec.task,
                    activations=t.activations,
                    deadline_misses=t.deadline_misses,
                    budget_overruns=t.budget_overruns,
                    wcet=_ms(t.wcet_ns),
                    status=t.status.name,
                )
                for t in tasks
            ),
        ),
    )


def safety_metrics(
    asil: str, tasks: list[TaskSupervisor], now_ns: int, to_wall: Callable[[int], str]
) -> dict[str, object]:
    """`safety_document(...).to_json()`: the model's `safetyMetrics` as written to etcd."""
    return safety_document(asil, tasks, now_ns, to_wall).to_json()


def global_status(tasks: list[TaskSupervisor]) -> Status:
    return max((t.status for t in tasks), default=Status.OK)
