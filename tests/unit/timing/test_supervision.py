from __future__ import annotations

import random

import pytest

from agent.evaluate.documents import SafetyMetricsDoc
from agent.timing.checks import (
    Correction,
    Resolution,
    Status,
    TaskSpec,
    Violation,
    check_alive,
    check_budget,
    check_deadline,
    check_logical,
    next_status,
)
from agent.timing.safety import safety_document, safety_metrics
from agent.timing.supervision import TaskSupervisor

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


def test_safety_metrics_are_the_typed_documents_json() -> None:
    task, _ = run_periodic({5: 3 * MS}, 20)
    idle = TaskSupervisor(TaskSpec("vision-system", "idle", None, None, None))
    document = safety_document("B", [task, idle], 200 * MS, lambda ns: f"t{ns}")
    written = safety_metrics("B", [task, idle], 200 * MS, lambda ns: f"t{ns}")
    assert document.to_json() == written
    assert list(written) == [
        "asilLevel",
        "deadlineMissCount",
        "budgetOverrunCount",
        "worstCaseExecutionTime",
        "averageExecutionTime",
        "executionTimeVariance",
        "schedulingLatency",
        "safetyMonitorStatus",
        "localStatus",
        "safetyChecks",
        "runtimeVerification",
        "tasks",
    ]
    assert written["tasks"] == {
        "detect": {
            "activations": 20,
            "deadlineMisses": 0,
            "budgetOverruns": 1,
            "wcet": 3.0,
            "status": "FAILED",  # the overrun failed the first reference cycle
        },
        "idle": {
            "activations": 0,
            "deadlineMisses": 0,
            "budgetOverruns": 0,
            "wcet": 0.0,
            "status": "OK",
        },
    }
    assert SafetyMetricsDoc.from_json(written) == document
    supervision = document.supervision
    assert supervision is not None
    assert supervision.budget_overrun_count == 1
    assert [t.name for t in supervision.tasks] == ["detect", "idle"]


# Late-read reports, corrections, alive counted at the start, next_check_ns ---------------------


def test_a_hang_up_whose_end_lies_within_the_deadline_is_taken_back() -> None:
    task = TaskSupervisor(SPEC)
    task.start(3, 6 * MS, 0)
    (hang,) = task.tick(8 * MS + 1)  # no end had been read: judged hung
    assert isinstance(hang, Violation)
    assert task.deadline_misses == 1
    # The end was at 7 ms: its report was late, not the task.
    (resolved,) = task.end(3, 7 * MS)
    assert isinstance(resolved, Resolution)
    assert resolved.kind == "deadline_miss"
    assert "taken back" in resolved.corrected
    assert task.deadline_misses == 0
    assert task.corrections == 1
    assert task.firing() == frozenset()


def test_a_correction_inside_a_longer_episode_keeps_the_episode_and_says_so() -> None:
    task = TaskSupervisor(SPEC)
    task.start(1, 8 * MS, 0)
    task.end(1, 9 * MS)  # a real miss opens the episode
    task.start(2, 16 * MS, 10 * MS)
    task.tick(18 * MS + 1)  # hang-up of 2 reported
    assert task.deadline_misses == 2
    (correction,) = task.end(2, 17 * MS)
    assert isinstance(correction, Correction)
    assert correction.seq == 2
    assert task.deadline_misses == 1
    assert task.firing() == frozenset({"deadline_miss"})


def test_a_hang_up_that_really_was_late_counts_once() -> None:
    task = TaskSupervisor(SPEC)
    task.start(1, 0, 0)
    task.tick(8 * MS + 1)
    outcomes = task.end(1, 30 * MS)
    assert task.deadline_misses == 1
    assert not any(isinstance(o, Correction | Resolution) for o in outcomes)


def test_a_late_end_does_not_fail_alive_supervision() -> None:
    # Activations counted at their start: an end 15 ms late is one deadline miss, nothing else.
    task = TaskSupervisor(SPEC)
    outcomes: list[object] = []
    for i in range(40):
        release = i * 10 * MS
        outcomes += task.start(i, release, release)
        if i == 20:
            continue
        outcomes += task.end(i, release + (1 * MS))
        outcomes += task.tick(release + 5 * MS)
    kinds = {o.kind for o in outcomes if isinstance(o, Violation)}
    assert kinds == {"deadline_miss"}
    assert task.alive_failures == 0


def test_next_check_is_the_first_due_time_and_the_alive_window_fall() -> None:
    task = TaskSupervisor(SPEC)
    assert task.next_check_ns() is None
    for i in range(12):
        task.start(i, i * 10 * MS, i * 10 * MS)
        task.end(i, i * 10 * MS + MS)
    # No open activation: the window (expected 10, margin 1) falls below 9 when the 9th newest
    # start (at 30 ms) ages out of the 100 ms window.
    assert task.next_check_ns() == 30 * MS + 100 * MS
    task.start(12, 120 * MS, 120 * MS)
    assert task.next_check_ns() == 128 * MS + 1  # the open activation's deadline comes first
    assert task.tick(128 * MS) == []
    assert [o.kind for o in task.tick(128 * MS + 1) if isinstance(o, Violation)] == [
        "deadline_miss"
    ]
    assert task.next_check_ns() == 40 * MS + 100 * MS  # judged: only the alive window is left


def test_too_many_indications_are_seen_when_they_arrive_and_silence_ends_at_the_next_report() -> (
    None
):
    task = TaskSupervisor(SPEC)
    outcomes: list[object] = []
    for i in range(30):
        outcomes += task.heartbeat(i * 10 * MS)
    assert not outcomes
    burst = [o for i in range(5) for o in task.heartbeat(290 * MS + i * MS)]
    assert [o.kind for o in burst if isinstance(o, Violation)] == ["alive_timeout"]
    # Silent for a while: the window ages out (judged by tick), then reports come back.
    task.tick(600 * MS)
    assert task.firing() == frozenset({"alive_timeout"})
    back: list[object] = []
    for i in range(10):
        back += task.heartbeat(600 * MS + i * 10 * MS)
    assert [o.kind for o in back if isinstance(o, Resolution)] == ["alive_timeout"]


def test_cycles_closed_late_give_the_status_they_would_have_given_on_time() -> None:
    task, _ = run_periodic({}, 15)
    last = 14 * 10 * MS + 1 * MS
    at = task.next_check_ns()
    assert at is not None
    assert any(isinstance(o, Violation) for o in task.tick(at))
    task.advance(at + 500 * MS)  # no tick for five cycles: still failing all along
    assert task.status.name == "EXPIRED"
    assert at - last <= 21 * MS


def test_a_silent_task_asks_for_no_wake_up_once_its_alive_timeout_fires() -> None:
    # 50 activations of a 10 ms task, then silence: alive_timeout fires, and then nothing can
    # change until a report comes (it asked for a time in the past before: a busy loop).
    task, _ = run_periodic({}, 50)
    at = task.next_check_ns()
    assert at is not None
    assert [o.kind for o in task.tick(at) if isinstance(o, Violation)] == ["alive_timeout"]
    assert task.next_check_ns() is None


@pytest.mark.parametrize("seed", range(40))
def test_waking_when_asked_always_makes_progress(seed: int) -> None:
    """Random reports (late ends, hang-ups, bursts, silence), then ticks at every asked time: each
    asked time lies after the last verdict, and silence ends in no more wake-ups."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible scenario, not a secret
    task = TaskSupervisor(SPEC)
    now = 0
    for seq in range(rng.randint(5, 60)):
        now += rng.choice([10 * MS, 10 * MS, 10 * MS, 1 * MS, 25 * MS])
        task.start(seq, now, now)
        if rng.random() < 0.9:
            task.end(seq, now + rng.choice([1 * MS, 1 * MS, 9 * MS]))
        if rng.random() < 0.3:
            at = task.next_check_ns()
            if at is not None and at <= now:
                task.tick(now)
    last = now
    wakeups = 0
    while (at := task.next_check_ns()) is not None:
        assert task._judged_ns is None or at > task._judged_ns
        task.tick(at)
        wakeups += 1
        assert wakeups <= 30, f"still waking {(at - last) / MS:.0f} ms after the last report"
