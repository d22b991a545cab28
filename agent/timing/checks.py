"""The values and pure checks of timing supervision: a task's spec, the outcomes of judging it,
and the deadline, budget, alive, logical and status rules as functions of their inputs.

`agent.timing.supervision.TaskSupervisor` keeps one task's state and applies them; the rules
themselves are described there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

ASIL_CRITICAL = frozenset({"A", "B", "C", "D"})


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


def to_ms(ns: float) -> float:
    return round(ns / 1e6, 6)


# The state of one task -------------------------------------------------------------------------
