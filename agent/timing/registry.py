"""Every supervised task of the node: specs from the Model manifests, reports routed to them.

A task is known by (model, task). Its spec comes from the model's `spec.scheduling` and
`asilLevel` label, with the supervision settings of the `timing` config section; the supervisor
is made on the first report, so applications choose their task names. Reports for models that are
not on this node are refused (the ingest counts them).

Task names are bounded per model (`timing.max_tasks_per_model`, or the tasks the config names for
the model if more): a sender that invents names cannot make supervisors without end. At the
bound, a supervisor of the model that is healthy, has nothing open and has been silent for
`RETIRE_IDLE_S` is retired (the oldest such first) to make room; if none can be, the report is
refused as `too_many_tasks`. A retired task that reports again starts afresh.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.ingest.protocol import Activation, Checkpoint, End, Heartbeat, Refused, Start
from agent.timing.checks import Outcome, Status, TaskSpec
from agent.timing.supervision import TaskSupervisor

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import Timing
    from agent.manifests import Inventory, PlacedModel

TimingReport = Start | End | Activation | Heartbeat | Checkpoint
NS = 1_000_000_000
DEFAULT_CYCLE_PERIODS = 10
RETIRE_IDLE_S = 30.0
"""Silence after which a healthy task with nothing open may be retired to make room."""


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * NS)


def task_spec(placed: PlacedModel, task: str, timing: Timing) -> TaskSpec:
    scheduling = placed.manifest.spec.scheduling if placed.manifest is not None else None
    period = _ns(scheduling.period) if scheduling else None
    cycle = _ns(timing.reference_cycle) or (period * DEFAULT_CYCLE_PERIODS if period else None)
    graph = next(
        (g for g in timing.checkpoint_graphs if g.model == placed.name and g.task == task), None
    )
    checkpoints = None
    if graph is not None:
        checkpoints = {"": frozenset(graph.initial)}
        checkpoints |= {k: frozenset(v) for k, v in graph.transitions.items()}
    return TaskSpec(
        model=placed.name,
        task=task,
        period_ns=period,
        deadline_ns=_ns(scheduling.deadline) if scheduling else None,
        budget_ns=_ns(scheduling.executionTime) if scheduling else None,
        asil=placed.asil_level,
        time_critical=scheduling.timeCritical if scheduling else False,
        reference_cycle_ns=cycle,
        alive_margin=timing.alive_margin,
        failed_tolerance=timing.failed_tolerance,
        recovery_cycles=timing.recovery_cycles,
        resolve_after=timing.resolve_after,
        checkpoints=checkpoints,
    )


class Supervisors:
    def __init__(self, world: Callable[[], tuple[Inventory, Timing]]) -> None:
        self._world = world
        self._tasks: dict[tuple[str, str], TaskSupervisor] = {}
        self._per_model: dict[str, dict[str, int]] = {}
        """model -> task -> when it last reported (monotonic ns)."""
        self.retired: list[tuple[str, str]] = []
        """Tasks retired to make room, for the caller to forget (their timers)."""

    def knows(self, model: str) -> bool:
        return model in self._world()[0].models

    def get(self, key: tuple[str, str]) -> TaskSupervisor | None:
        """The supervisor of (model, task) if it exists; never makes one."""
        return self._tasks.get(key)

    def keys(self) -> list[tuple[str, str]]:
        return list(self._tasks)

    def task(self, model: str, task: str) -> TaskSupervisor | None:
        """The supervisor of (model, task), made if need be; None for a model not on this node.
        Raises `Refused("too_many_tasks")` when the model has as many tasks as it may."""
        now = time.monotonic_ns()
        supervisor = self._tasks.get((model, task))
        if supervisor is None:
            inventory, timing = self._world()
            placed = inventory.models.get(model)
            if placed is None:
                return None
            seen = self._per_model.setdefault(model, {})
            if len(seen) >= _bound(model, timing) and not self._retire(model, seen, now):
                raise Refused("too_many_tasks")
            supervisor = self._tasks[(model, task)] = TaskSupervisor(
                task_spec(placed, task, timing)
            )
            seen[task] = now
        else:
            self._per_model[model][task] = now
        return supervisor

    def _retire(self, model: str, seen: dict[str, int], now: int) -> bool:
        """Retire the longest-silent retirable task of `model`; False if none can be."""
        silent_since = now - round(RETIRE_IDLE_S * NS)
        for task, last in sorted(seen.items(), key=lambda item: item[1]):
            if last > silent_since:
                return False
            if self._tasks[(model, task)].retirable():
                del self._tasks[(model, task)]
                del seen[task]
                self.retired.append((model, task))
                return True
        return False

    def deliver(self, report: TimingReport) -> list[Outcome]:
        task = self.task(report.model, report.task)
        if task is None:
            return []
        if isinstance(report, Activation):
            return task.activation(report.seq, report.start_ns, report.end_ns, report.release_ns)
        if isinstance(report, Start):
            return task.start(report.seq, report.ts_ns, report.release_ns)
        if isinstance(report, End):
            return task.end(report.seq, report.ts_ns)
        if isinstance(report, Heartbeat):
            return task.heartbeat(report.ts_ns)
        return task.checkpoint(report.checkpoint, report.ts_ns)

    def tick(self, now_ns: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for task in self._tasks.values():
            outcomes += task.tick(now_ns)
        return outcomes

    def active(self) -> bool:
        """Whether any task is supervised (has reported since the agent started)."""
        return bool(self._tasks)

    def of_model(self, model: str) -> list[TaskSupervisor]:
        return [t for (m, _), t in self._tasks.items() if m == model]

    def global_status(self, now_ns: int | None = None) -> Status:
        """The worst local status; with `now_ns`, after closing the cycles that ended by then."""
        if now_ns is not None:
            for task in self._tasks.values():
                task.advance(now_ns - task.lag_ns)
        return max((t.status for t in self._tasks.values()), default=Status.OK)

    def refresh(self) -> None:
        """After a reload: forget tasks of models gone, and tasks whose spec changed."""
        inventory, timing = self._world()
        for key, supervisor in list(self._tasks.items()):
            placed = inventory.models.get(key[0])
            if placed is None or task_spec(placed, key[1], timing) != supervisor.spec:
                del self._tasks[key]
                seen = self._per_model.get(key[0], {})
                seen.pop(key[1], None)
                if not seen:
                    self._per_model.pop(key[0], None)


def _bound(model: str, timing: Timing) -> int:
    """Task names `model` may have: the configured bound, or as many as the config names."""
    named = {g.task for g in timing.checkpoint_graphs if g.model == model}
    named |= {t.task for t in timing.traced_tasks if t.model == model}
    return max(timing.max_tasks_per_model, len(named))
