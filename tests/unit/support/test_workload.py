"""The pure parts of tests.support.workload: its spec, ground truth, attribution and alive check."""

from __future__ import annotations

import itertools
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import rfc3339
from agent.ingest.protocol import Checkpoint, End, Start, parse
from agent.manifests import build_inventory, load_manifests
from tests.support.workload import (
    FOUR_TASKS,
    HANG_AT,
    MISSES_AT,
    MS,
    FiringAlert,
    Task,
    alive_failed,
    attribute_alert,
    episode_openers,
    fidelity,
    four_task_spec,
    ground_truth,
    load_spec,
    reconcile,
    rfc3339_ns,
    run_task,
    unexpected_alive,
    write_manifests,
)

PERIOD = 10 * MS
DEADLINE = 8 * MS


def row(
    seq: int,
    response_ms: float = 1.0,
    *,
    kind: str = "normal",
    latency_ms: float = 0.1,
    send_delay_ms: float = 0.0,
    start_ok: bool = True,
    end_ok: bool = True,
    base: int = 1_000 * MS,
) -> dict[str, Any]:
    """Activation `seq` of a 10 ms task: released on time, started `latency_ms` later."""
    release = base + seq * PERIOD
    end = release + round(response_ms * MS)
    return {
        "type": "activation",
        "seq": seq,
        "kind": kind,
        "release_ns": release,
        "start_ns": release + round(latency_ms * MS),
        "end_ns": end,
        "end_sent_ns": end + round(send_delay_ms * MS),
        "start_ok": start_ok,
        "end_ok": end_ok,
        "late": False,
    }


def silent(seq: int, base: int = 1_000 * MS) -> dict[str, Any]:
    return {"type": "activation", "seq": seq, "kind": "silent", "release_ns": base + seq * PERIOD}


# the spec -----------------------------------------------------------------------------------


def test_a_task_spec_fills_in_the_execution_of_its_injections() -> None:
    task = Task.from_json(
        {
            "model": "m",
            "task": "t",
            "period_ms": 10,
            "deadline_ms": 8,
            "exec_ms": 1,
            "budget_ms": 2,
            "misses": [3],
            "overruns": [4],
            "hangs": [3, 5],
            "silent": {"from_s": 1, "to_s": 1.5},
            "checkpoints": ["a", "b"],
            "checkpoint_error": 6,
        }
    )
    assert task.miss_exec_ns == 8 * MS + 300_000  # just past the deadline
    assert task.overrun_exec_ns == 4 * MS  # a third of the way from budget to deadline
    assert task.hang_ns == 24 * MS  # three deadlines
    assert [task.kind(i) for i in range(7)] == [
        "normal",
        "normal",
        "normal",
        "hang",  # a hang-up wins over a miss of the same activation
        "overrun",
        "hang",
        "checkpoint_error",
    ]
    assert task.is_silent(1_000 * MS)
    assert not task.is_silent(1_500 * MS)
    assert task.execution_ns("overrun") == 4 * MS
    assert task.execution_ns("hang") == 1 * MS


def test_overruns_need_a_budget() -> None:
    spec = {"model": "m", "task": "t", "period_ms": 10, "deadline_ms": 8, "exec_ms": 1}
    with pytest.raises(ValueError, match="budget_ms"):
        Task.from_json({**spec, "overruns": [1]})


def test_two_tasks_of_one_name_are_refused() -> None:
    task = {"model": "m", "task": "t", "period_ms": 10, "deadline_ms": 8, "exec_ms": 1}
    with pytest.raises(ValueError, match="share"):
        load_spec({"socket": "/x", "duration_s": 1, "tasks": [task, task]})


def test_the_four_task_spec_spaces_its_deadline_injections_more_than_15_activations() -> None:
    spec = four_task_spec("/x", task="t", duration_s=12.0, silent_model="rt-20ms")
    _, duration, tasks = load_spec(spec)
    assert duration == 12 * 10**9
    assert [t.model for t in tasks] == [rt.model for rt in FOUR_TASKS]
    for task in tasks:
        injected = sorted([*task.misses, *task.hangs])
        assert len(injected) == len(MISSES_AT) + 1
        assert all(b - a > 15 for a, b in itertools.pairwise(injected))
        assert max(injected) * task.period_ns < duration
        for seq in [*injected, *task.overruns]:
            assert not task.is_silent(seq * task.period_ns), "an injection in the silent window"
        assert task.priority is not None
    assert [bool(t.silent) for t in tasks] == [False, False, True, False]
    assert max(tasks[0].hangs) == round(HANG_AT * 12_000 / 5)


def test_the_manifests_are_four_models_on_the_node(tmp_path: Path) -> None:
    inventory = build_inventory(
        "VisionHPC", load_manifests([write_manifests(tmp_path, "VisionHPC")])
    )
    assert sorted(inventory.models) == sorted(rt.model for rt in FOUR_TASKS)
    placed = inventory.models["rt-5ms"]
    assert placed.asil_level == "B"
    assert placed.manifest is not None
    scheduling = placed.manifest.spec.scheduling
    assert scheduling is not None
    assert (scheduling.period, scheduling.deadline, scheduling.executionTime) == (
        0.005,
        0.004,
        0.0015,
    )


def test_a_task_reports_start_and_end_as_the_agent_parses_them() -> None:
    task = Task.from_json(
        {
            "model": "m",
            "task": "t",
            "period_ms": 5,
            "deadline_ms": 4,
            "exec_ms": 0.2,
            "checkpoints": ["a", "b"],
            "checkpoint_error": 1,
        }
    )
    with tempfile.TemporaryDirectory(prefix="pwl-") as directory:
        path = str(Path(directory) / "sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.setblocking(False)  # noqa: FBT003 - the socket API
            rows, summary = run_task(task, path, time.monotonic_ns(), 8 * MS)
            reports = []
            while True:
                try:
                    reports.append(parse(receiver.recv(4096), 4096))
                except BlockingIOError:
                    break
    # Two activations of four datagrams: the socket's queue (at least 11) holds them unread.
    assert summary["releases"] == 2
    assert summary["send_failures"] == {}
    assert [type(r).__name__ for r in reports] == [
        *("Start", "Checkpoint", "Checkpoint", "End") * 2
    ]
    starts = [r for r in reports if isinstance(r, Start)]
    ends = [r for r in reports if isinstance(r, End)]
    checkpoints = [r.checkpoint for r in reports if isinstance(r, Checkpoint)]
    assert checkpoints == ["a", "b", "b", "a"]  # activation 1 reversed
    assert [s.seq for s in starts] == [e.seq for e in ends] == [0, 1]
    for (seq, kind, release, start, end, end_sent, start_ok, end_ok, _), s, e in zip(
        rows, starts, ends, strict=True
    ):
        assert (s.seq, s.ts_ns, s.release_ns, e.ts_ns) == (seq, start, release, end)
        assert release <= start < end <= end_sent
        assert end - start >= 200_000
        assert start_ok
        assert end_ok
        assert kind == ("checkpoint_error" if seq == 1 else "normal")


# ground truth -------------------------------------------------------------------------------


def test_ground_truth_counts_responses_above_the_deadline_of_reported_activations() -> None:
    rows = [
        row(0),
        row(1, 8.0),  # at the deadline: not a miss
        row(2, 8.001),
        row(3, 30.0, kind="hang"),
        row(4, 9.0, end_ok=False),  # the end never reached the agent
        row(5, 1.0, end_ok=False),
        row(6, 9.0, start_ok=False),  # the agent cannot pair this end
        silent(7),
        {"type": "summary"},
    ]
    truth = ground_truth(rows, DEADLINE)
    assert truth["true_misses"] == 2
    assert [v["seq"] for v in truth["violations"]] == [2, 3]
    assert truth["violations"][0]["response_ns"] == 8_001_000
    assert truth["misses_by_kind"] == {"normal": 1, "hang": 1}
    assert truth["activations"] == 4
    assert truth["unreported"] == 3
    assert truth["lost_ends"] == 2
    assert truth["expected_count"] == 4
    assert truth["silent"] == 1
    assert truth["misses_as_run"] == 4  # 2, 3, and the two of 9 ms whatever was sent


def test_an_episode_opens_with_a_miss_and_closes_after_ten_clean_activations() -> None:
    misses = {3, 5, 16, 27, 40}
    rows = [row(i, 9.0 if i in misses else 1.0) for i in range(45)]
    # 3 opens; 5 is inside; 6-15 are clean and close it; 16 opens; 17-26 close it; 27 opens;
    # 28-37 close it, so 40 opens again.
    assert episode_openers(rows, DEADLINE) == [3, 16, 27, 40]
    # With 20 clean ones needed, no run between the misses is long enough.
    assert episode_openers(rows, DEADLINE, resolve_after=20) == [3]


# alerts against activations ------------------------------------------------------------------


def test_an_alert_judged_at_the_end_is_known_by_its_exact_response_time() -> None:
    rows = [row(i) for i in range(5)] + [row(5, 8.3)] + [row(i) for i in range(6, 9)]
    raised = rows[5]["end_sent_ns"] + 200_000
    found = attribute_alert(rows, DEADLINE, 8.3, raised)
    assert (found.seq, found.how, found.missed) == (5, "end", True)


def test_a_hangup_alert_names_the_activation_open_at_the_verdict() -> None:
    rows = [row(i) for i in range(3)] + [row(3, 24.0, kind="hang")] + [row(4, 15.0)]
    # Judged as of release + 8.5 ms, raised 2.1 ms later (the agent's grace and the clock).
    due = rows[3]["release_ns"] + 8_500_000
    found = attribute_alert(rows, DEADLINE, 8.5, due + 2_100_000)
    assert (found.seq, found.how, found.missed) == (3, "hangup", True)


def test_a_hangup_alert_about_an_activation_that_ended_in_time_is_false() -> None:
    # Activation 2 ended after 1 ms but its sender was preempted for 9 ms before the sendto.
    rows = [row(0), row(1), row(2, send_delay_ms=9.0), row(3)]
    found = attribute_alert(rows, DEADLINE, 8.2, rows[2]["release_ns"] + 10_200_000)
    assert (found.seq, found.how, found.missed, found.lost) == (2, "hangup", False, False)
    assert found.false_alarm


def test_a_hangup_alert_about_a_lost_end_is_no_false_alarm() -> None:
    rows = [row(0), row(1, end_ok=False), row(2)]
    found = attribute_alert(rows, DEADLINE, 8.1, rows[1]["release_ns"] + 10_000_000)
    assert (found.seq, found.how, found.missed, found.lost) == (1, "hangup", False, True)
    assert not found.false_alarm


def test_an_alert_that_no_open_activation_explains_is_false() -> None:
    rows = [row(0), row(1), row(2)]
    # Raised between the end of 1 (sent at 1 ms) and the start of 2 (at 10.1 ms).
    found = attribute_alert(rows, DEADLINE, 8.1, rows[1]["release_ns"] + 8_900_000)
    assert (found.seq, found.how, found.missed) == (1, "none", False)
    assert found.false_alarm
    assert attribute_alert([], DEADLINE, 8.1, 10**9).false_alarm


@pytest.mark.parametrize(
    ("true", "counted", "evidence", "expected"),
    [
        (5, 5, 0, (0, 0)),
        (5, 7, 0, (2, 0)),
        (5, 3, 0, (0, 2)),
        (5, 5, 1, (1, 1)),  # a known false miss hides a missed one
        (5, 7, 1, (2, 0)),
        (5, 7, 3, (3, 1)),
    ],
)
def test_false_and_missed_misses_from_counts_and_evidence(
    true: int, counted: int, evidence: int, expected: tuple[int, int]
) -> None:
    false, missed = reconcile(true, counted, evidence)
    assert (false, missed) == expected
    assert false - missed == counted - true


def test_fidelity_of_one_task() -> None:
    rows = [row(i, 8.5 if i == 3 else 1.0) for i in range(30)]
    rows[20] = row(20, send_delay_ms=9.5)  # a false hang-up, not taken back
    end_alert = FiringAlert(8.5, rows[3]["end_sent_ns"] + MS, rows[3]["end_sent_ns"] + 3 * MS)
    false_alert = FiringAlert(8.3, rows[20]["release_ns"] + 10_300_000, 0)
    result = fidelity(rows, DEADLINE, 2, [end_alert, false_alert])
    assert result["true_misses"] == 1
    assert result["false_misses"] == 1
    assert result["missed_misses"] == 0
    assert result["false_alarms"] == 1
    assert result["false_alarm_seqs"] == [20]
    assert result["latency_ms"] == [3.0]
    assert result["episodes_expected"] == 1
    # Taken back by the agent: the count is right, the alarm went out all the same.
    corrected = fidelity(rows, DEADLINE, 1, [end_alert, false_alert], corrections=1)
    assert (corrected["false_misses"], corrected["false_alarms"]) == (0, 1)


def test_fidelity_counts_a_lost_end_against_the_truth_and_names_the_cause() -> None:
    rows = [row(i) for i in range(30)]
    rows[10] = row(10, end_ok=False)
    lost_alert = FiringAlert(8.2, rows[10]["release_ns"] + 10_300_000, 0)
    result = fidelity(rows, DEADLINE, 1, [lost_alert])
    assert (result["true_misses"], result["expected_count"]) == (0, 1)
    assert (result["false_misses"], result["false_misses_lost_ends"]) == (1, 1)
    assert (result["false_alarms"], result["alerts_on_lost_ends"]) == (0, 1)


# alive supervision ----------------------------------------------------------------------------


def test_alive_fails_only_when_the_true_starts_leave_the_margins() -> None:
    rows = [row(i) for i in range(40)]
    start = rows[0]["start_ns"]
    assert not alive_failed(rows, PERIOD, start + 200 * MS)
    assert not alive_failed(rows, PERIOD, start + 50 * MS), "judged before a full cycle"
    # Silent for activations 20 to 22; the window of 100 ms must hold 10 +- 1 starts.
    gap = [r if not 20 <= r["seq"] <= 22 else silent(r["seq"]) for r in rows]
    assert not alive_failed(gap, PERIOD, start + 205 * MS)  # one missing: within the margin
    assert alive_failed(gap, PERIOD, start + 215 * MS)  # two missing
    assert not alive_failed(gap, PERIOD, start + 340 * MS)  # the gap has left the window
    # After the last start the task is silent: that is a true failure.
    assert alive_failed(rows, PERIOD, start + 430 * MS)


def test_a_catch_up_after_a_hangup_is_too_many_starts_in_one_cycle() -> None:
    rows = [row(i) for i in range(40)]
    # Activation 20 hangs until 24 ms past its release; 21 and 22, released meanwhile, start
    # right after it. One cycle later both are still in the window with ten on time: 12.
    hang_end = rows[20]["release_ns"] + 24 * MS
    rows[21] = dict(rows[21], start_ns=hang_end)
    rows[22] = dict(rows[22], start_ns=hang_end + MS // 2)
    assert not alive_failed(rows, PERIOD, rows[25]["start_ns"])
    assert alive_failed(rows, PERIOD, rows[32]["start_ns"])


def test_unexpected_alive_timeouts_are_those_the_starts_do_not_explain() -> None:
    rows = [row(i) for i in range(40)]
    start = rows[0]["start_ns"]
    assert unexpected_alive(rows, PERIOD, [start + 200 * MS, start + 450 * MS]) == [
        start + 200 * MS
    ]


def test_rfc3339_is_read_back_to_the_nanosecond() -> None:
    stamp = 1_795_000_000_123_456_789
    assert rfc3339_ns(rfc3339(stamp)) == stamp
