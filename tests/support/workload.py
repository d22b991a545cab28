"""A periodic real-time workload that reports to the agent's ingest socket, and its ground truth.

Run it as `python -m tests.support.workload SPEC.json OUTDIR [--load]`, or from Python with
`start_workload(spec, outdir)` and `WorkloadRun.wait()`. Only the standard library is used.

Each task runs in a process of its own (threads would share the GIL and distort each other's
timing). Activation k is released at t0 + k * period on CLOCK_MONOTONIC; the process sleeps
(`time.sleep`) until then, and when the release is already past it runs at once but keeps the
release for the response time: nothing is skipped. Every activation sends `start` (seq, ts_ns,
release_ns) before its work and `end` (seq, ts_ns) after it, raw JSON datagrams per
docs/ingest-protocol.md, on a non-blocking Unix datagram socket: a failed `sendto` is counted by
errno, never waited on. The work is a busy loop on the monotonic clock, so an activation takes at
least its execution time however often it is preempted.

The SPEC (JSON; the comments only explain):

    {
      "socket": "/run/piccolo-agent/ingest.sock",
      "duration_s": 12.0,
      "tasks": [
        {
          "model": "rt-5ms", "task": "cycle",
          "period_ms": 5, "deadline_ms": 4, "exec_ms": 1,
          "budget_ms": 2,                  # the model's executionTime; needed for overruns
          "sched_fifo_priority": 80,       # optional: SCHED_FIFO when permitted
          "misses": [400, 1000],           # activations that run past the deadline
          "miss_exec_ms": 4.3,             # optional, default deadline + 0.3 ms
          "overruns": [700],               # activations above the budget, within the deadline
          "overrun_exec_ms": 2.7,          # optional, default budget + (deadline - budget) / 3
          "hangs": [1800],                 # start sent, end only hang_factor x deadline later
          "hang_factor": 3,                # optional, default 3
          "silent": [{"from_s": 5, "to_s": 6}],  # optional windows: no activation, no report
          "checkpoints": ["read", "write"],      # optional: reported in order in each activation
          "checkpoint_error": 900          # optional: that activation reports them reversed
        }
      ]
    }

Every injection is an activation index (its seq). Silent windows are offsets from t0; the
activations released in them are logged as `silent` and neither run nor report.

Each task process writes `OUTDIR/<model>.<task>.jsonl`: a `task` line (its parameters, t0, and
whether SCHED_FIFO was applied), one `activation` line per activation (seq, kind, release_ns,
start_ns, end_ns, end_sent_ns: the monotonic time just before the end's `sendto`, start_ok,
end_ok, late: the release had passed when the task got to it), and a `summary` line (counts and
send failures). `ground_truth()` and the other pure functions below judge those lines.

The processes start, tell the parent they are ready (SCHED_FIFO set, the SPEC read), and only then
get t0 (a little ahead of that moment) on standard input, so a slow start of one process does not
make its first activations late. `BusyLoad` saturates cores: one SCHED_OTHER busy loop pinned to
each. Start children from the main thread: they ask for SIGTERM when the thread that forked them
ends (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import errno
import gc
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

MS = 1_000_000
S = 1_000_000_000
READY = b"ready\n"
START_LEAD_NS = 50 * MS
"""t0 lies this far after the last process said it is ready."""
READY_TIMEOUT_S = 20.0
MISS_OVERSHOOT_NS = 300_000
"""How far past the deadline an injected miss runs by default. Any miss is a start still open past
its deadline for that long, so the agent's hang-up check may judge it before its end arrives, and
then reports the age of the start instead of the response time: with a short overshoot the end
decides (it comes within the agent's hang-up grace), and the alert latency is measured from it."""
_PR_SET_PDEATHSIG = 1
_BUSY_LOOP = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))
if os.getppid() != int(sys.argv[2]):
    sys.exit(0)
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
while True:
    pass
"""


def _ns(milliseconds: float) -> int:
    return round(milliseconds * MS)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


# the spec -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One periodic task of a SPEC, times in ns; see the module docstring for the fields."""

    model: str
    task: str
    period_ns: int
    deadline_ns: int
    exec_ns: int
    budget_ns: int | None = None
    priority: int | None = None
    misses: frozenset[int] = frozenset()
    miss_exec_ns: int = 0
    overruns: frozenset[int] = frozenset()
    overrun_exec_ns: int = 0
    hangs: frozenset[int] = frozenset()
    hang_ns: int = 0
    silent: tuple[tuple[int, int], ...] = ()
    """[from, to) offsets from t0 in ns."""
    checkpoints: tuple[str, ...] = ()
    checkpoint_error: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        period, deadline = _ns(data["period_ms"]), _ns(data["deadline_ms"])
        budget = _ns(data["budget_ms"]) if data.get("budget_ms") is not None else None
        overruns = frozenset(int(i) for i in data.get("overruns", ()))
        if "overrun_exec_ms" in data:
            overrun_exec = _ns(data["overrun_exec_ms"])
        elif budget is not None:
            overrun_exec = budget + (deadline - budget) // 3
        elif overruns:
            raise ValueError(f"{data['model']}.{data['task']}: overruns need budget_ms")
        else:
            overrun_exec = 0
        miss_exec = (
            _ns(data["miss_exec_ms"]) if "miss_exec_ms" in data else deadline + MISS_OVERSHOOT_NS
        )
        windows = data.get("silent") or []
        if isinstance(windows, Mapping):
            windows = [windows]
        return cls(
            model=str(data["model"]),
            task=str(data["task"]),
            period_ns=period,
            deadline_ns=deadline,
            exec_ns=_ns(data["exec_ms"]),
            budget_ns=budget,
            priority=data.get("sched_fifo_priority"),
            misses=frozenset(int(i) for i in data.get("misses", ())),
            miss_exec_ns=miss_exec,
            overruns=overruns,
            overrun_exec_ns=overrun_exec,
            hangs=frozenset(int(i) for i in data.get("hangs", ())),
            hang_ns=round(float(data.get("hang_factor", 3)) * deadline),
            silent=tuple((round(w["from_s"] * S), round(w["to_s"] * S)) for w in windows),
            checkpoints=tuple(str(c) for c in data.get("checkpoints", ())),
            checkpoint_error=data.get("checkpoint_error"),
        )

    @property
    def key(self) -> str:
        return f"{self.model}.{self.task}"

    def kind(self, seq: int) -> str:
        """What activation `seq` does: normal, miss, overrun, hang or checkpoint_error."""
        if seq in self.hangs:
            return "hang"
        if seq in self.misses:
            return "miss"
        if seq in self.overruns:
            return "overrun"
        if seq == self.checkpoint_error and self.checkpoints:
            return "checkpoint_error"
        return "normal"

    def execution_ns(self, kind: str) -> int:
        """The busy time of an activation of this kind (a hang waits on top of it)."""
        return {"miss": self.miss_exec_ns, "overrun": self.overrun_exec_ns}.get(kind, self.exec_ns)

    def is_silent(self, offset_ns: int) -> bool:
        return any(start <= offset_ns < end for start, end in self.silent)


def load_spec(spec: Mapping[str, Any]) -> tuple[str, int, list[Task]]:
    """(socket path, duration in ns, tasks) of a SPEC."""
    tasks = [Task.from_json(task) for task in spec["tasks"]]
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two tasks share a model and task name: {keys}")
    return str(spec["socket"]), round(float(spec["duration_s"]) * S), tasks


# a task's process -----------------------------------------------------------------------------

_START = b'{"v":1,"type":"start","model":"%s","task":"%s","seq":%d,"ts_ns":%d,"release_ns":%d}'
_END = b'{"v":1,"type":"end","model":"%s","task":"%s","seq":%d,"ts_ns":%d}'
_CHECKPOINT = b'{"v":1,"type":"checkpoint","model":"%s","task":"%s","checkpoint":"%s","ts_ns":%d}'


def apply_fifo(priority: int | None) -> dict[str, Any]:
    """SCHED_FIFO at `priority` for this process if asked and permitted; what happened."""
    if priority is None:
        return {"requested": None, "applied": False, "error": None}
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return {"requested": priority, "applied": False, "error": str(exc)}
    return {"requested": priority, "applied": True, "error": None}


@dataclass
class _Sender:
    path: str
    sock: socket.socket = field(init=False)
    sent: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            self.failures[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
            return False
        self.sent += 1
        return True


def _busy_until(deadline_ns: int) -> None:
    clock = time.monotonic_ns
    while clock() < deadline_ns:
        pass


def _sleep_until(target_ns: int) -> None:
    delay = target_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / S)


def run_task(
    task: Task, path: str, t0_ns: int, duration_ns: int
) -> tuple[list[Any], dict[str, Any]]:
    """The activations of one task from t0 for `duration_ns`: (log rows, summary counts)."""
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sender = _Sender(path)
    model, name = task.model.encode(), task.task.encode()
    clock = time.monotonic_ns
    rows: list[Any] = []
    end_of_run = t0_ns + duration_ns
    seq = late = silent = 0
    while not stop:
        release = t0_ns + seq * task.period_ns
        if release >= end_of_run:
            break
        if task.is_silent(release - t0_ns):
            rows.append({"type": "activation", "seq": seq, "kind": "silent", "release_ns": release})
            silent += 1
            seq += 1
            continue
        was_late = clock() > release
        late += was_late
        _sleep_until(release)
        start = clock()
        start_ok = sender.send(_START % (model, name, seq, start, release))
        kind = task.kind(seq)
        execution = task.execution_ns(kind)
        if task.checkpoints:
            order = task.checkpoints[::-1] if kind == "checkpoint_error" else task.checkpoints
            part = execution // len(order)
            for index, checkpoint in enumerate(order):
                sender.send(_CHECKPOINT % (model, name, checkpoint.encode(), clock()))
                _busy_until(start + (index + 1) * part)
        _busy_until(start + execution)
        if kind == "hang":
            _sleep_until(release + task.hang_ns)
        end = clock()
        message = _END % (model, name, seq, end)
        end_sent = clock()
        end_ok = sender.send(message)
        rows.append((seq, kind, release, start, end, end_sent, start_ok, end_ok, was_late))
        seq += 1
    sender.sock.close()
    summary = {
        "releases": seq,
        "silent": silent,
        "late_releases": late,
        "sent": sender.sent,
        "send_failures": dict(sender.failures),
        "stopped_early": stop,
    }
    return rows, summary


ROW_FIELDS = (
    "seq",
    "kind",
    "release_ns",
    "start_ns",
    "end_ns",
    "end_sent_ns",
    "start_ok",
    "end_ok",
    "late",
)


def log_path(outdir: Path, task: Task) -> Path:
    return outdir / f"{task.key}.jsonl"


def task_main(index: int, spec_path: Path, outdir: Path) -> None:
    """One task's process: set up, say ready, read t0, run, write the log and a summary line."""
    _die_with_parent()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    path, duration, tasks = load_spec(spec)
    task = tasks[index]
    fifo = apply_fifo(task.priority)
    gc.collect()
    gc.disable()  # no collector pauses inside activations; a run keeps a few thousand rows
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return  # the parent went away before the start
    t0 = int(line)
    rows, counts = run_task(task, path, t0, duration)
    header = {
        "type": "task",
        "model": task.model,
        "task": task.task,
        "period_ns": task.period_ns,
        "deadline_ns": task.deadline_ns,
        "budget_ns": task.budget_ns,
        "exec_ns": task.exec_ns,
        "t0_ns": t0,
        "duration_ns": duration,
        "silent": [list(window) for window in task.silent],
        "fifo": fifo,
        "pid": os.getpid(),
    }
    summary = {"type": "summary", "model": task.model, "task": task.task, "fifo": fifo, **counts}
    with log_path(outdir, task).open("w", encoding="utf-8") as log:
        log.write(json.dumps(header) + "\n")
        for row in rows:
            record = (
                row
                if isinstance(row, dict)
                else {"type": "activation"} | dict(zip(ROW_FIELDS, row, strict=True))
            )
            log.write(json.dumps(record) + "\n")
        log.write(json.dumps(summary) + "\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


# the parent -----------------------------------------------------------------------------------


@dataclass
class TaskLog:
    """What one task's process logged."""

    header: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.header['model']}.{self.header['task']}"


def read_log(path: Path) -> TaskLog:
    header: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        kind = record.get("type")
        if kind == "task":
            header = record
        elif kind == "summary":
            summary = record
        else:
            rows.append(record)
    return TaskLog(header, rows, summary)


@dataclass
class WorkloadRun:
    """The processes of one workload run; `wait()` for their logs, `kill()` to give up."""

    tasks: list[Task]
    outdir: Path
    children: list[subprocess.Popen[bytes]]
    duration_ns: int
    t0_ns: int = 0

    @property
    def end_ns(self) -> int:
        return self.t0_ns + self.duration_ns

    def running(self) -> bool:
        return any(child.poll() is None for child in self.children)

    def wait(self, timeout: float | None = None) -> dict[str, TaskLog]:
        """Wait for every process; each task's log by `model.task`."""
        limit = None if timeout is None else time.monotonic() + timeout
        for child in self.children:
            remaining = None if limit is None else max(0.0, limit - time.monotonic())
            try:
                child.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
            if child.returncode != 0:
                raise RuntimeError(f"a task process exited with status {child.returncode}")
        return {task.key: read_log(log_path(self.outdir, task)) for task in self.tasks}

    def kill(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def _await_ready(children: Sequence[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for child in children:
        assert child.stdout is not None  # a pipe, asked for by start_workload
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or child.stdout.readline() != READY:
            raise RuntimeError(f"a task process did not get ready (status {child.poll()})")


def start_workload(spec: Mapping[str, Any], outdir: Path) -> WorkloadRun:
    """Start one process per task; returns once all are ready and t0 is set (START_LEAD_NS on)."""
    _, duration, tasks = load_spec(spec)
    outdir.mkdir(parents=True, exist_ok=True)
    spec_path = outdir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    run = WorkloadRun(tasks, outdir, [], duration)
    try:
        for index in range(len(tasks)):
            run.children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--task",
                        str(index),
                        str(spec_path),
                        str(outdir),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - it only calls prctl(2)
                )
            )
        _await_ready(run.children)
        run.t0_ns = time.monotonic_ns() + START_LEAD_NS
        for child in run.children:
            assert child.stdin is not None  # a pipe, asked for above
            child.stdin.write(b"%d\n" % run.t0_ns)
            child.stdin.flush()  # left open: communicate() in wait() closes it
    except BaseException:
        run.kill()
        raise
    return run


class BusyLoad:
    """One SCHED_OTHER busy loop per CPU (each pinned with sched_setaffinity); a context manager."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self) -> Self:
        for cpu in self.cpus:
            self.children.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY_LOOP, str(cpu), str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                )
            )
        return self

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        self.children = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_load(cpus: Iterable[int] | None = None) -> BusyLoad:
    """Saturate `cpus` (default: every CPU this process may use); `.stop()` ends it."""
    return BusyLoad(cpus).start()


# ground truth and the agent's account of it (pure) -----------------------------------------


def reported(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The activations the agent could pair: start and end both handed to the socket.

    The agent pairs an `end` with its `start`; an end without its start is ignored, and a start
    without its end is a miss by hang-up detection, whatever the task did. Such activations are
    left out of the truth and counted as `unreported` by `ground_truth`.
    """
    return [
        row
        for row in rows
        if row.get("type", "activation") == "activation"
        and row.get("kind") != "silent"
        and row.get("start_ok")
        and row.get("end_ok")
    ]


def response_ns(row: Mapping[str, Any]) -> int:
    return int(row["end_ns"]) - int(row["release_ns"])


def ground_truth(log_rows: Iterable[Mapping[str, Any]], deadline_ns: int) -> dict[str, Any]:
    """The true deadline misses of one task's activations: end - release > deadline.

    Counts the activations whose end was sent (and their start, see `reported`); `violations`
    lists the missing ones with their response time, in seq order. `lost_ends` are activations
    whose start went out but whose end did not (a failed `sendto`): by the protocol a start whose
    end never comes is a miss, so an agent that supervises correctly counts
    `expected_count` = true_misses + lost_ends. `misses_as_run` counts every activation that ran,
    reported or not (the task's own timing, with or without an agent).
    """
    rows = [r for r in log_rows if r.get("type", "activation") == "activation"]
    run = [r for r in rows if r.get("kind") != "silent"]
    paired = reported(run)
    violations = [
        {**row, "response_ns": response_ns(row)}
        for row in sorted(paired, key=lambda r: int(r["seq"]))
        if response_ns(row) > deadline_ns
    ]
    lost_ends = sum(1 for r in run if r.get("start_ok") and not r.get("end_ok"))
    return {
        "misses_as_run": sum(1 for r in run if response_ns(r) > deadline_ns),
        "activations": len(paired),
        "true_misses": len(violations),
        "violations": violations,
        "misses_by_kind": dict(Counter(str(v["kind"]) for v in violations)),
        "unreported": len(run) - len(paired),
        "lost_ends": lost_ends,
        "expected_count": len(violations) + lost_ends,
        "silent": len(rows) - len(run),
        "max_response_ns": max((response_ns(r) for r in paired), default=0),
    }


def episode_openers(
    log_rows: Iterable[Mapping[str, Any]], deadline_ns: int, resolve_after: int = 10
) -> list[int]:
    """The seqs of the true misses that open an alert episode, as the agent's episodes run.

    A miss opens an episode when none is open; `resolve_after` clean activations in a row end
    it (`timing.resolve_after`). The activations are judged in seq order: a hang-up is judged at
    its deadline, before the activations that follow it end.
    """
    openers: list[int] = []
    clean: int | None = None  # None: no episode open
    for row in sorted(reported(log_rows), key=lambda r: int(r["seq"])):
        if response_ns(row) > deadline_ns:
            if clean is None:
                openers.append(int(row["seq"]))
            clean = 0
        elif clean is not None:
            clean += 1
            if clean >= resolve_after:
                clean = None
    return openers


@dataclass(frozen=True)
class Attribution:
    """Which activation a firing deadline_miss alert is about, and how that was found."""

    seq: int | None
    how: str
    """`end`: its value is the response time of that activation, so the agent judged its end;
    `hangup`: the agent judged a start without an end (the value is the start's age then);
    `none`: no activation was open then (the one named has the nearest release)."""
    missed: bool
    """Whether that activation really ran past its deadline (by the task's own log)."""
    lost: bool = False
    """Whether its end never reached the socket: by the protocol a start whose end never comes
    is a miss, so the agent is right to count it, whatever the task did."""

    @property
    def false_alarm(self) -> bool:
        """An alert about an activation that met its deadline and reported so in time."""
        return not self.missed and not self.lost


def _activations(log_rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in log_rows if r.get("type", "activation") == "activation"]


def attribute_alert(
    log_rows: Iterable[Mapping[str, Any]],
    deadline_ns: int,
    value_ms: float,
    raised_ns: int,
    *,
    slack_ns: int = MS,
) -> Attribution:
    """The activation behind a firing deadline_miss alert of this task.

    `value_ms` is the alert's value (the first miss of the episode, in ms with ns resolution) and
    `raised_ns` its `first_seen` turned into CLOCK_MONOTONIC. A miss judged at its end has the
    value end - release of that activation, exactly. A hang-up (a start without an end past the
    deadline) has the value t - release, t the time as of which it was judged, at or a little
    before `raised_ns` (by the agent's hang-up grace): it is about an activation that had started
    by then and whose end had not been sent (or was lost); of those, the one whose release + value
    lies nearest `raised_ns`. Where no activation was open, the one with the nearest such release
    is named (`how` = `none`).
    """
    value_ns = round(value_ms * MS)
    rows = [r for r in _activations(log_rows) if r.get("kind") != "silent" and r.get("start_ok")]
    exact = [r for r in reported(rows) if abs(response_ns(r) - value_ns) <= 1]
    if exact:
        row = max(exact, key=lambda r: int(r["seq"]))
        return Attribution(int(row["seq"]), "end", missed=response_ns(row) > deadline_ns)
    estimate = raised_ns - value_ns
    open_then = [
        r
        for r in rows
        if int(r["start_ns"]) <= raised_ns + slack_ns
        and (not r.get("end_ok") or int(r["end_sent_ns"]) >= raised_ns - slack_ns)
    ]
    candidates = open_then or [r for r in rows if int(r["release_ns"]) <= estimate + slack_ns]
    if not candidates:
        return Attribution(None, "none", missed=False)
    row = min(candidates, key=lambda r: abs(estimate - int(r["release_ns"])))
    return Attribution(
        int(row["seq"]),
        "hangup" if open_then else "none",
        missed=response_ns(row) > deadline_ns,
        lost=not row.get("end_ok"),
    )


def reconcile(true_misses: int, counted: int, false_evidence: int) -> tuple[int, int]:
    """(false misses, missed misses) at least, from the counts and per-activation evidence.

    counted - true = false - missed. `false_evidence` false misses are known one by one (alerts
    about activations that met their deadline and were not taken back): then the agent counted
    at most counted - false_evidence true misses, and missed at least true - that.
    """
    false = max(0, counted - true_misses, false_evidence)
    return false, false - (counted - true_misses)


def alive_count(times: Sequence[int], cycle_ns: int, at_ns: int) -> int:
    """The alive indications (sorted times) in the reference cycle ending at `at_ns`:
    (at - cycle, at]."""
    return bisect.bisect_right(times, at_ns) - bisect.bisect_right(times, at_ns - cycle_ns)


ALIVE_SLACK_NS = 5 * MS
"""How long before an alive_timeout's `first_seen` its verdict may lie: the agent judges a silent
window a hang-up grace (2 ms by default) in the past, and `first_seen` is turned into
CLOCK_MONOTONIC here."""


def alive_failed(
    log_rows: Sequence[Mapping[str, Any]],
    period_ns: int,
    at_ns: int,
    *,
    cycle_ns: int | None = None,
    margin: int = 1,
    slack_ns: int = ALIVE_SLACK_NS,
) -> bool:
    """Whether the task's activations really left expected +- margin (expected = cycle / period,
    the cycle ten periods by default) at some time in [at - slack, at].

    As docs/timing-supervision.md says, each activation counts once, at its start (the starts
    that reached the socket), within a sliding window of one reference cycle, from a full cycle
    after the task's first report on. The agent can count fewer than really came, when starts
    have not been read yet, never more.
    """
    cycle = cycle_ns or 10 * period_ns
    starts = sorted(
        int(r["start_ns"])
        for r in _activations(log_rows)
        if r.get("kind") != "silent" and r.get("start_ok")
    )
    if not starts:
        return False
    begin, end = max(at_ns - slack_ns, starts[0] + cycle), at_ns
    if end < begin:
        return False  # the agent does not judge before a full cycle has passed
    # The count changes only where a start enters the window (t = start) or leaves it
    # (t = start + cycle): between those it is constant.
    candidates = {begin}
    for start in starts:
        for t in (start, start + cycle):
            if begin <= t <= end:
                candidates.add(t)
    expected = round(cycle / period_ns)
    return any(
        not expected - margin <= alive_count(starts, cycle, t) <= expected + margin
        for t in candidates
    )


def rfc3339_ns(text: str) -> int:
    """`2026-11-26T06:56:49.123456789Z` (the agent's fixed format) as Unix nanoseconds."""
    stamp = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(stamp.timestamp()) * S + int(text[20:29].ljust(9, "0"))


def monotonic_of(wall_ns: int) -> int:
    """A wall-clock time (ns) as CLOCK_MONOTONIC, by the offset between the clocks now."""
    return wall_ns - (time.time_ns() - time.monotonic_ns())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class FiringAlert:
    """A firing deadline_miss alert of one task as a subscriber saw it (the first copy)."""

    value_ms: float
    raised_ns: int
    """Its `first_seen`, turned into CLOCK_MONOTONIC."""
    arrived_ns: int
    """CLOCK_MONOTONIC at the subscriber."""


def fidelity(
    log_rows: Sequence[Mapping[str, Any]],
    deadline_ns: int,
    counted: int,
    alerts: Sequence[FiringAlert],
    *,
    corrections: int = 0,
    resolve_after: int = 10,
) -> dict[str, Any]:
    """How well the agent's deadline supervision of one task matched the ground truth.

    `counted` is the agent's final deadlineMisses of the task, `alerts` its firing deadline_miss
    alerts, `corrections` the hang-ups it took back (its `deadline_miss_corrected` events).

    Each alert is attributed to an activation (`attribute_alert`). `false_alarms` went out about
    activations that met their deadline and sent their end (whether the agent took them back
    later or not): the agent's own mistakes. Against the truth (`ground_truth`: the activations
    whose end was sent), an alert about a lost end is false too. Those alerts, less the
    corrections, are false misses known one by one; `reconcile` turns them and the counts into
    `false_misses` and `missed_misses`. Of the false misses, `false_misses_lost_ends` are
    explained by ends lost in the socket (the agent must count those: `expected_count` is what
    a correct agent counts). `latency_ms` (arrival - the end's send) has one sample per alert that
    the end of a missing activation raised; alerts about hang-ups have none.
    """
    truth = ground_truth(log_rows, deadline_ns)
    by_seq = {int(r["seq"]): r for r in _activations(log_rows)}
    latency: list[float] = []
    false_alarms: list[int | None] = []
    lost_alarms = hangups = 0
    for alert in alerts:
        found = attribute_alert(log_rows, deadline_ns, alert.value_ms, alert.raised_ns)
        if found.false_alarm:
            false_alarms.append(found.seq)
        elif found.lost:
            lost_alarms += 1
        elif found.how == "end" and found.seq is not None:
            latency.append((alert.arrived_ns - int(by_seq[found.seq]["end_sent_ns"])) / MS)
        else:
            hangups += 1
    evidence = max(0, len(false_alarms) - corrections) + lost_alarms
    false, missed = reconcile(truth["true_misses"], counted, evidence)
    return {
        "activations": truth["activations"],
        "true_misses": truth["true_misses"],
        "counted_misses": counted,
        "false_misses": false,
        "missed_misses": missed,
        "false_misses_lost_ends": min(false, truth["lost_ends"]),
        "lost_ends": truth["lost_ends"],
        "expected_count": truth["expected_count"],
        "misses_by_kind": truth["misses_by_kind"],
        "false_alarms": len(false_alarms),
        "false_alarm_seqs": false_alarms,
        "corrections": corrections,
        "episodes_expected": len(episode_openers(log_rows, deadline_ns, resolve_after)),
        "alerts_firing": len(alerts),
        "alerts_on_hangups": hangups,
        "alerts_on_lost_ends": lost_alarms,
        "latency_ms": latency,
    }


def unexpected_alive(
    log_rows: Sequence[Mapping[str, Any]],
    period_ns: int,
    raised: Iterable[int],
    *,
    cycle_ns: int | None = None,
    margin: int = 1,
) -> list[int]:
    """The alive_timeout alerts (their `first_seen` in CLOCK_MONOTONIC) raised while the task's
    true alive count was within its margins (`alive_failed`): the agent saw a silence that
    was not there."""
    return [
        at
        for at in raised
        if not alive_failed(log_rows, period_ns, at, cycle_ns=cycle_ns, margin=margin)
    ]


# the four-task set of the soak test and the timing bench -------------------------------------


@dataclass(frozen=True)
class RtModel:
    """A Model with one periodic task: its manifest's spec.scheduling and how the task runs."""

    model: str
    period_ms: float
    deadline_ms: float
    budget_ms: float
    exec_ms: float
    priority: int
    """SCHED_FIFO priority, rate-monotonic: the shorter the period, the higher."""


FOUR_TASKS = (
    RtModel("rt-5ms", 5, 4, 1.5, 0.5, 80),
    RtModel("rt-10ms", 10, 8, 3, 1, 70),
    RtModel("rt-20ms", 20, 15, 5, 2, 60),
    RtModel("rt-50ms", 50, 40, 10, 4, 50),
)
"""38 % of one core together; injected misses run 0.3 ms past the deadline."""
MISSES_AT = (0.125, 0.25, 0.375, 0.5)
OVERRUNS_AT = (0.1875, 0.4375)
HANG_AT = 0.625
SILENT_FROM, SILENT_TO = 0.75, 0.8
"""Where the injections fall, as fractions of the run: deadline injections 1/8 of the run apart
(1.5 s of a 12 s run: 30 activations of the 50 ms task, so each episode is resolved after its 10
clean activations before the next miss). Each task is shifted by 0.1 s times its index, so the
tasks' alerts do not coincide."""


def model_manifest(rt: RtModel, node: str, asil: str = "B") -> dict[str, Any]:
    """A Model manifest (piccolo.io/v1) on `node` with the task's scheduling."""
    return {
        "apiVersion": "piccolo.io/v1",
        "kind": "Model",
        "metadata": {
            "name": rt.model,
            "annotations": {"description": f"periodic workload, {rt.period_ms:g} ms"},
            "labels": {"asilLevel": asil},
        },
        "spec": {
            "image": f"test/{rt.model}:1",
            "node": node,
            "scheduling": {
                "timeCritical": True,
                "priority": rt.priority,
                "period": f"{rt.period_ms:g}ms",
                "deadline": f"{rt.deadline_ms:g}ms",
                "executionTime": f"{rt.budget_ms:g}ms",
                "criticality": "safety-critical",
            },
        },
    }


def write_manifests(directory: Path, node: str, models: Sequence[RtModel] = FOUR_TASKS) -> Path:
    """One manifest file per model in `directory` (JSON, which YAML reads as it is)."""
    directory.mkdir(parents=True, exist_ok=True)
    for rt in models:
        text = json.dumps(model_manifest(rt, node), indent=2)
        (directory / f"{rt.model}.yaml").write_text(text + "\n", encoding="utf-8")
    return directory


def four_task_spec(
    socket_path: Path | str,
    *,
    task: str,
    duration_s: float,
    silent_model: str | None = None,
    overruns: bool = True,
    fifo: bool = True,
    models: Sequence[RtModel] = FOUR_TASKS,
) -> dict[str, Any]:
    """The SPEC of the four tasks (named `task` in each model) over `duration_s`: misses at
    MISSES_AT, overruns at OVERRUNS_AT, one hang-up at HANG_AT, and a silent window on
    `silent_model` if given; under SCHED_FIFO at each model's priority unless `fifo` is false."""
    tasks: list[dict[str, Any]] = []
    for index, rt in enumerate(models):
        shift = 0.1 * index

        def seq_at(fraction: float, rt: RtModel = rt, shift: float = shift) -> int:
            return round((fraction * duration_s + shift) * 1000 / rt.period_ms)

        entry: dict[str, Any] = {
            "model": rt.model,
            "task": task,
            "period_ms": rt.period_ms,
            "deadline_ms": rt.deadline_ms,
            "budget_ms": rt.budget_ms,
            "exec_ms": rt.exec_ms,
            "sched_fifo_priority": rt.priority if fifo else None,
            "misses": [seq_at(f) for f in MISSES_AT],
            "overruns": [seq_at(f) for f in OVERRUNS_AT] if overruns else [],
            "hangs": [seq_at(HANG_AT)],
        }
        if rt.model == silent_model:
            entry["silent"] = [
                {"from_s": SILENT_FROM * duration_s + shift, "to_s": SILENT_TO * duration_s + shift}
            ]
        tasks.append(entry)
    return {"socket": str(socket_path), "duration_s": duration_s, "tasks": tasks}


# the command line -----------------------------------------------------------------------------


def summarize(logs: Mapping[str, TaskLog]) -> dict[str, Any]:
    """Per task: activations, true misses (and of which kind), send failures, SCHED_FIFO."""
    out: dict[str, Any] = {}
    for key, log in logs.items():
        truth = ground_truth(log.rows, int(log.header["deadline_ns"]))
        out[key] = {
            "activations": truth["activations"],
            "true_misses": truth["true_misses"],
            "misses_by_kind": truth["misses_by_kind"],
            "misses_as_run": truth["misses_as_run"],
            "unreported": truth["unreported"],
            "lost_ends": truth["lost_ends"],
            "late_releases": log.summary.get("late_releases"),
            "max_response_ms": round(truth["max_response_ns"] / MS, 3),
            "send_failures": log.summary.get("send_failures"),
            "fifo_applied": log.header.get("fifo", {}).get("applied"),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) == 4 and arguments[0] == "--task":
        task_main(int(arguments[1]), Path(arguments[2]), Path(arguments[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("spec", type=Path, help="the SPEC, JSON")
    parser.add_argument("outdir", type=Path, help="where the task logs go")
    parser.add_argument("--load", action="store_true", help="a busy loop on every CPU meanwhile")
    args = parser.parse_args(arguments)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    with contextlib.ExitStack() as stack:
        if args.load:
            stack.enter_context(BusyLoad())
        run = start_workload(spec, args.outdir)
        stack.callback(run.kill)
        logs = run.wait(timeout=run.duration_ns / S + 30)
    sys.stdout.write(json.dumps(summarize(logs)) + "\n")


if __name__ == "__main__":
    main()
