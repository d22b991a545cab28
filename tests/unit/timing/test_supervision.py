from __future__ import annotations

import pytest

from agent.timing.supervision import (
    Resolution,
    Status,
    TaskSpec,
    TaskSupervisor,
    Violation,
    check_alive,
    check_budget,
    check_deadline,
    check_logical,
    next_status,
    safety_metrics,
)

MS = 1_000_000
SPEC = TaskSpec(
    "vision-system",
    "detect",
    period_ns=10 * MS,
    deadline_ns=8 * MS,
    budget_ns=2 * MS,
    asil="B",
    reference_cycle_ns=100 * MS,
)


@pytest.mark.parametrize(
    ("start", "end", "release", "expected"),
    [
        (0, 8 * MS, None, None),
        (0, 8 * MS + 1, None, 8 * MS + 1),
        (1 * MS, 8 * MS, 0, None),
        (1 * MS, 9 * MS, 0, 9 * MS),  # the response counts from the release, not the start
    ],
)
def test_deadline(start: int, end: int, release: int | None, expected: int | None) -> None:
    assert check_deadline(SPEC, start, end, release) == expected


@pytest.mark.parametrize(("execution", "expected"), [(2 * MS, None), (2 * MS + 1, 2 * MS + 1)])
def test_budget(execution: int, expected: int | None) -> None:
    assert check_budget(SPEC, 5, 5 + execution) == expected


@pytest.mark.parametrize(
    ("count", "ok"), [(8, False), (9, True), (10, True), (11, True), (12, False)]
)
def test_alive_counts_expected_within_margin(count: int, ok: bool) -> None:  # noqa: FBT001
    assert check_alive(SPEC, count) is ok


GRAPH = TaskSpec(
    "m",
    "t",
    None,
    None,
    None,
    checkpoints={
        "": frozenset({"read"}),
        "read": frozenset({"fuse"}),
        "fuse": frozenset({"write"}),
        "write": frozenset(),
    },
)


@pytest.mark.parametrize(
    ("previous", "checkpoint", "ok"),
    [
        (None, "read", True),
        (None, "fuse", False),
        ("read", "fuse", True),
        ("read", "write", False),
        ("write", "read", True),  # after the final checkpoint a new round starts
        ("write", "fuse", False),
    ],
)
def test_logical(previous: str | None, checkpoint: str, ok: bool) -> None:  # noqa: FBT001
    assert check_logical(GRAPH, previous, checkpoint) is ok


@pytest.mark.parametrize(
    ("status", "failed", "passed", "expected"),
    [
        (Status.OK, 0, 1, Status.OK),
        (Status.OK, 1, 0, Status.FAILED),
        (Status.FAILED, 2, 0, Status.FAILED),
        (Status.FAILED, 3, 0, Status.EXPIRED),
        (Status.FAILED, 0, 1, Status.OK),
        (Status.EXPIRED, 0, 1, Status.EXPIRED),
        (Status.EXPIRED, 0, 2, Status.OK),
    ],
)
def test_local_status(status: Status, failed: int, passed: int, expected: Status) -> None:
    assert next_status(SPEC, status, failed, passed) is expected


def run_periodic(overruns: dict[int, int], count: int) -> tuple[TaskSupervisor, list[object]]:
    """`count` activations every 10 ms, executing 1 ms, or the given ns for listed ones."""
    task = TaskSupervisor(SPEC)
    outcomes: list[object] = []
    for i in range(count):
        release = i * 10 * MS
        execution = overruns.get(i, 1 * MS)
        outcomes += task.start(i, release, release)
        outcomes += task.end(i, release + execution)
        outcomes += task.tick(release + 10 * MS - 1)
    return task, outcomes


def test_known_overruns_are_counted_exactly_with_one_episode_each() -> None:
    injected = {20: 9 * MS, 21: 12 * MS, 22: 9 * MS, 60: 8 * MS + 500_000}
    task, outcomes = run_periodic(injected, 100)
    assert task.deadline_misses == 4
    assert task.wcet_ns == 12 * MS
    misses = [o for o in outcomes if isinstance(o, Violation) and o.kind == "deadline_miss"]
    assert [o.seq for o in misses] == [20, 21, 22, 60]
    assert all(o.critical for o in misses)
    resolved = [o for o in outcomes if isinstance(o, Resolution) and o.kind == "deadline_miss"]
    # Each episode ends after ten clean activations: one resolution per episode.
    assert len(resolved) == 2
    assert task.firing() == frozenset()


def test_a_start_without_end_is_a_hang_up_miss_counted_once() -> None:
    task = TaskSupervisor(SPEC)
    task.start(7, 0, 0)
    assert task.tick(8 * MS) == []
    (hang,) = task.tick(8 * MS + 1)
    assert isinstance(hang, Violation)
    assert (hang.kind, hang.seq) == ("deadline_miss", 7)
    assert "hang-up" in hang.message
    assert task.tick(9 * MS) == []
    later = task.end(7, 30 * MS)
    assert task.deadline_misses == 1
    assert [o.kind for o in later if isinstance(o, Violation)] == ["budget_overrun"]


def test_a_silent_task_fails_alive_supervision_within_one_reference_cycle() -> None:
    task, _ = run_periodic({}, 15)
    last = 14 * 10 * MS + 1 * MS
    outcomes = []
    for now in range(last, last + 100 * MS, MS):  # the agent ticks every few milliseconds
        outcomes += task.tick(now)
    alive = [o for o in outcomes if isinstance(o, Violation) and o.kind == "alive_timeout"]
    assert len(alive) == 1, "one violation per episode, however long the silence"
    # Two missing activations take the window below 10-1: found about 20 ms after the last report.
    assert alive[0].at_ns - last <= 21 * MS
    assert task.status is Status.FAILED
    for cycle in range(2, 5):
        task.tick(last + cycle * 100 * MS)
    assert task.status.name == "EXPIRED"  # (by name: mypy keeps the narrowing from above)


def test_safety_metrics_of_a_model() -> None:
    task, _ = run_periodic({5: 3 * MS}, 20)
    metrics = safety_metrics("B", [task], 200 * MS, lambda ns: f"t{ns}")
    assert metrics["deadlineMissCount"] == 0
    assert metrics["budgetOverrunCount"] == 1
    assert metrics["worstCaseExecutionTime"] == 3.0
    assert metrics["averageExecutionTime"] == pytest.approx(1.1)
    assert metrics["executionTimeVariance"] == pytest.approx(0.2, rel=1e-6)
    assert metrics["schedulingLatency"] == 0.0
    assert metrics["safetyMonitorStatus"] == "Active"
    checks = {c["name"]: c["status"] for c in metrics["safetyChecks"]}  # type: ignore[attr-defined]
    assert checks == {"Alive": "Pass", "Deadline": "Pass", "Execution budget": "Pass"}
    verification = metrics["runtimeVerification"]
    assert verification == {"enabled": True, "constraintsChecked": 41, "constraintViolations": 1}
