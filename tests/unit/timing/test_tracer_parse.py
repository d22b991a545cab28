"""The tracer's line parser and activation assembly, fed canned `trace_pipe` text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.timing.tracer import (
    ActivationAssembler,
    SchedstatSample,
    TracedActivation,
    Tracer,
    TracerUnavailable,
    read_schedstat,
    schedstat_averages,
    threads_of,
)

PID = 100
TID = 101
OTHER = 555
T0 = 5_000_000_000  # µs: the trace prints whole microseconds


def stamp(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def wakeup(us: int, pid: int = TID, comm: str = "worker", cpu: int = 1) -> str:
    return (
        f"          <idle>-0       [{cpu:03d}]  {stamp(us)}: sched_wakeup: comm={comm} pid={pid}"
        f" prio=19 target_cpu={cpu:03d}"
    )


def switch(us: int, prev: int, state: str, nxt: int, cpu: int = 1) -> str:
    return (
        f"          task-{prev:<8d} [{cpu:03d}]  {stamp(us)}: sched_switch: prev_comm=task"
        f" prev_pid={prev} prev_prio=120 prev_state={state} ==> next_comm=task next_pid={nxt}"
        " next_prio=19"
    )


def trace(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def assembler(*, blocked: bool = True) -> ActivationAssembler:
    return ActivationAssembler({TID: PID}, [TID] if blocked else [])


def test_one_activation() -> None:
    done = assembler().feed(
        trace(wakeup(T0), switch(T0 + 20, 0, "R", TID), switch(T0 + 50, TID, "S", 0))
    )
    ns = 1000
    assert done == [
        TracedActivation(
            pid=PID,
            tid=TID,
            wakeup_ns=T0 * ns,
            start_ns=(T0 + 20) * ns,
            end_ns=(T0 + 50) * ns,
            run_ns=30 * ns,
            latency_ns=20 * ns,
        )
    ]


def test_lines_as_the_kernel_prints_them() -> None:
    # With and without the irq-info flags column, an idle task, comms with spaces, colons,
    # brackets and a field name in them, and a deadline task's negative priority.
    lines = (
        b"          <idle>-0       [001] d..2.  1234.567890: sched_wakeup: comm=cyclictest"
        b" pid=101 prio=19 target_cpu=001\n"
        b"          <idle>-0       [001] d..2.  1234.567900: sched_switch: prev_comm=swapper/1"
        b" prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=cyclictest next_pid=101"
        b" next_prio=19\n"
        b" Web [1] Content-7      [001]   1234.567901: sched_wakeup: comm=x pid=9 prio=1 z"
        b" pid=555 prio=-1 target_cpu=000\n"
        b"      cyclictest-101     [001]   1234.567912: sched_switch: prev_comm=cyclictest"
        b" prev_pid=101 prev_prio=19 prev_state=S ==> next_comm=a pid=101 prio= next_pid=555"
        b" next_prio=-1\n"
    )
    done = ActivationAssembler({TID: PID, OTHER: OTHER}, [TID, OTHER]).feed(lines)
    assert [(a.tid, a.wakeup_ns, a.start_ns, a.end_ns) for a in done] == [
        (TID, 1234_567890_000, 1234_567900_000, 1234_567912_000)
    ]


def test_preempted_activation_sums_its_segments() -> None:
    done = assembler().feed(
        trace(
            wakeup(T0),
            switch(T0 + 10, 0, "R", TID),
            switch(T0 + 40, TID, "R+", OTHER),  # preempted after 30 µs
            switch(T0 + 100, OTHER, "S", TID),
            switch(T0 + 120, TID, "R", OTHER),  # yields, still runnable: 20 µs more
            switch(T0 + 130, OTHER, "S", TID),
            switch(T0 + 135, TID, "D", 0),  # blocks (uninterruptibly): 5 µs more
        )
    )
    assert len(done) == 1
    assert done[0].latency_ns == 10_000
    assert done[0].run_ns == 55_000
    assert done[0].end_ns - done[0].start_ns == 125_000


def test_lines_of_other_tasks_are_ignored() -> None:
    done = assembler().feed(
        trace(
            wakeup(T0, pid=OTHER),
            switch(T0 + 1, 0, "R", OTHER),
            wakeup(T0 + 2),
            switch(T0 + 3, OTHER, "S", TID),  # an untraced prev does not disturb the traced next
            switch(T0 + 4, TID, "S", OTHER),
            switch(T0 + 5, OTHER, "S", 0),
            "some other line",
            "",
        )
    )
    assert [(a.tid, a.latency_ns, a.run_ns) for a in done] == [(TID, 1000, 1000)]


def test_switch_in_without_wakeup_is_dropped_and_counted() -> None:
    parts = assembler()
    done = parts.feed(
        trace(
            switch(T0, 0, "R", TID),  # blocked, yet switched in: its wakeup was not seen
            switch(T0 + 10, TID, "S", 0),
            wakeup(T0 + 100),
            switch(T0 + 110, 0, "R", TID),
            switch(T0 + 130, TID, "S", 0),
        )
    )
    assert parts.missed_wakeups == {TID: 1}
    assert [(a.wakeup_ns, a.run_ns) for a in done] == [((T0 + 100) * 1000, 20_000)]


def test_wakeup_followed_by_switch_out_counts_a_missed_switch_in() -> None:
    parts = assembler()
    done = parts.feed(
        trace(
            wakeup(T0),
            switch(T0 + 60, TID, "S", 0),  # it ran, but its switch-in is not in the trace
            wakeup(T0 + 100),
            switch(T0 + 110, 0, "R", TID),
            switch(T0 + 130, TID, "S", 0),
        )
    )
    assert parts.missed_switch_ins == {TID: 1}
    assert len(done) == 1


def test_a_thread_of_unknown_state_is_trusted_after_it_blocks() -> None:
    parts = assembler(blocked=False)
    done = parts.feed(
        trace(
            wakeup(T0),  # it might have been preempted in a sleep state: not an activation start
            switch(T0 + 10, 0, "R", TID),
            switch(T0 + 20, TID, "S", 0),
            wakeup(T0 + 100),
            switch(T0 + 105, 0, "R", TID),
            switch(T0 + 120, TID, "S", 0),
        )
    )
    assert [a.wakeup_ns for a in done] == [(T0 + 100) * 1000]
    assert not parts.missed_wakeups
    assert not parts.missed_switch_ins


def test_wakeups_that_do_not_start_an_activation() -> None:
    done = assembler().feed(
        trace(
            wakeup(T0),
            wakeup(T0 + 5),  # a second wakeup of a woken thread keeps the first
            switch(T0 + 10, 0, "R", TID),
            wakeup(T0 + 15),  # woken while still on the CPU (sleep state set, not yet switched)
            switch(T0 + 20, TID, "R+", 0),
            wakeup(T0 + 25),  # woken while preempted
            switch(T0 + 30, 0, "R", TID),
            switch(T0 + 40, TID, "S", 0),
        )
    )
    assert [(a.latency_ns, a.run_ns, a.end_ns) for a in done] == [
        (10_000, 20_000, (T0 + 40) * 1000)
    ]


def test_state_carries_over_between_feeds() -> None:
    parts = assembler()
    assert parts.feed(trace(wakeup(T0), switch(T0 + 10, 0, "R", TID))) == []
    assert parts.feed(trace(switch(T0 + 30, TID, "R+", 0))) == []
    done = parts.feed(trace(switch(T0 + 40, 0, "R", TID), switch(T0 + 45, TID, "S", 0)))
    assert [(a.latency_ns, a.run_ns) for a in done] == [(10_000, 25_000)]


@pytest.mark.parametrize(
    ("line", "lost"),
    [("CPU:1 [LOST 12 EVENTS]", 12), ("CPU:0 [LOST EVENTS]", 1)],
)
def test_lost_events_drop_the_open_activation(line: str, lost: int) -> None:
    parts = assembler()
    done = parts.feed(
        trace(
            wakeup(T0),
            switch(T0 + 10, 0, "R", TID),
            line,
            switch(T0 + 500, TID, "S", 0),  # the end of something the gap may have cut
            wakeup(T0 + 600),
            switch(T0 + 601, 0, "R", TID),
            switch(T0 + 602, TID, "S", 0),
        )
    )
    assert parts.lost_events == lost
    assert [a.wakeup_ns for a in done] == [(T0 + 600) * 1000]


def test_exit_ends_the_activation_and_forgets_the_thread() -> None:
    parts = assembler()
    done = parts.feed(
        trace(
            wakeup(T0),
            switch(T0 + 10, 0, "R", TID),
            switch(T0 + 30, TID, "X", 0),
            wakeup(T0 + 100),  # the tid reused by another process's thread
            switch(T0 + 101, 0, "R", TID),
            switch(T0 + 102, TID, "S", 0),
        )
    )
    assert [(a.tid, a.end_ns) for a in done] == [(TID, (T0 + 30) * 1000)]


def test_read_keeps_an_unfinished_line_for_the_next_read() -> None:
    tracer = Tracer(Path("/nonexistent"))
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    tracer._fd = read_end
    tracer._assembler = assembler()
    try:
        text = trace(wakeup(T0), switch(T0 + 10, 0, "R", TID), switch(T0 + 30, TID, "S", 0))
        os.write(write_end, text[:-40])
        assert tracer.read() == []
        os.write(write_end, text[-40:])
        assert [a.run_ns for a in tracer.read()] == [20_000]
        assert tracer.read() == []
    finally:
        tracer._fd = None
        os.close(read_end)
        os.close(write_end)


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "instances").mkdir()  # a directory that is not tracefs: no control files appear
    tracer = Tracer(tmp_path, "piccolo-test")
    with pytest.raises(TracerUnavailable, match="cannot start tracing"):
        tracer.start([os.getpid()])
    assert not tracer.running
    assert list((tmp_path / "instances").iterdir()) == []


def test_start_refuses_an_empty_filter(tmp_path: Path) -> None:
    # An empty set_event_pid would trace every task on the node.
    with pytest.raises(TracerUnavailable, match="none of the processes"):
        Tracer(tmp_path).start([2**22 + 1])


def test_unavailable_without_tracefs_and_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    available, why = Tracer(tmp_path).available()
    assert not available
    assert "needs root" in why


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_instance_names_stay_inside_instances(name: str) -> None:
    with pytest.raises(ValueError, match="instance name"):
        Tracer(instance=name)


def fake_proc(root: Path, tgid: int, tids: list[int]) -> None:
    for tid in tids:
        (root / str(tid)).mkdir(parents=True, exist_ok=True)
        (root / str(tid) / "status").write_text(f"Name:\tx\nTgid:\t{tgid}\nPid:\t{tid}\n")
        task = root / str(tgid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "schedstat").write_text(f"{tid * 1000} {tid * 10} {tid}\n")


def test_threads_of_a_process_and_of_a_single_thread(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, [10, 11, 12])
    fake_proc(tmp_path, 20, [20, 21])
    assert threads_of([10], tmp_path) == {10: 10, 11: 10, 12: 10}
    assert threads_of([21, 99], tmp_path) == {21: 20}  # a worker alone; a gone id is skipped


def test_read_schedstat(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, [10, 11])
    assert read_schedstat(10, 11, tmp_path) == SchedstatSample(10, 11, 11_000, 110, 11)
    assert read_schedstat(10, 13, tmp_path) is None


def test_schedstat_averages_are_labelled_averages_only() -> None:
    before = SchedstatSample(pid=7, tid=8, run_ns=1_000_000, wait_ns=50_000, timeslices=10)
    after = SchedstatSample(pid=7, tid=8, run_ns=1_600_000, wait_ns=80_000, timeslices=13)
    averages = schedstat_averages(before, after)
    assert averages is not None
    assert averages.kind == "schedstat-average"
    assert averages.timeslices == 3
    assert (averages.mean_run_ns, averages.mean_wait_ns) == (200_000, 10_000)
    fields = set(type(averages).__dataclass_fields__)
    assert not fields & set(TracedActivation.__dataclass_fields__) - {"pid", "tid"}
    assert schedstat_averages(after, after) is None  # nothing ran in between
    assert schedstat_averages(after, before) is None  # counters went back: the tid was reused
    with pytest.raises(ValueError, match="different threads"):
        schedstat_averages(before, SchedstatSample(7, 9, 0, 0, 0))
