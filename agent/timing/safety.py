"""The safetyMetrics block of a model's status (seed 7.3) from its tasks' supervisors, and the
node's global safety status."""

from __future__ import annotations

from collections.abc import Callable

from agent.evaluate.documents import (
    RuntimeVerification,
    SafetyCheck,
    SafetyMetricsDoc,
    Supervision,
    TaskSafety,
)
from agent.timing.checks import Status, to_ms
from agent.timing.supervision import TaskSupervisor


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
            worst_case_execution_time=to_ms(max((t.wcet_ns for t in tasks), default=0)),
            average_execution_time=to_ms(mean),
            execution_time_variance=round(pooled / 1e12, 9),
            scheduling_latency=to_ms(sum(latencies) / len(latencies)) if latencies else None,
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
                    wcet=to_ms(t.wcet_ns),
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
