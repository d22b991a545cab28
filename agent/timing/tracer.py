"""Outside-in timing of tasks that are not instrumented: scheduler tracepoints through tracefs.

`Tracer` owns a private tracefs instance (`instances/piccolo-agent`), so it never touches the global
buffer or anyone else's tracing. The instance records `sched_wakeup`, `sched_wakeup_new` and
`sched_switch` for the traced threads only (`set_event_pid`), stamped with the `mono` trace clock,
which is CLOCK_MONOTONIC: the clock of every other timing report in the agent. `read` drains the
text `trace_pipe` without blocking and assembles the events into activations:

- an activation starts with the task's wakeup (`wakeup_ns`, the `sched_wakeup` event);
- it is running from its first switch-in after that wakeup (`start_ns`); latency = start - wakeup;
- it ends when the task switches out blocked (`end_ns`), that is with a `prev_state` other than
  `R`/`R+`; a switch-out while still runnable (preempted, or yielding) only pauses it, and `run_ns`
  sums the on-CPU segments.

Precision: the text output prints the mono clock in whole microseconds (the kernel formats
`%5lu.%06lu` for every clock counted in ns; `x86-tsc` and `counter` print raw counts and `mono_raw`
is not CLOCK_MONOTONIC), so each timestamp is the event's CLOCK_MONOTONIC time truncated to the µs,
given here in ns. Nanoseconds would need the binary `trace_pipe_raw` pages.

Activations the trace cannot vouch for are dropped, never guessed: the one in progress when
tracing starts, one whose wakeup was not seen (`missed_wakeups`), any in progress across a gap the
kernel reports as `CPU:n [LOST k EVENTS]` (counted in `lost_events`, the same number as the
overruns in `per_cpu/cpuN/stats`, read here without extra syscalls), and one whose switch-in never
appears: a woken thread that next switches out (`missed_switch_ins`). The last happens on 6.18 with
no events lost: 0-3 % of a cyclictest thread's switch-ins are missing from every tracefs instance
at once, filtered or not (docs/tracer-validation.md). Such an activation did happen, so alive
supervision should count it; its start, run time and latency are unknown.

The fallback where tracefs is unavailable is `schedstat_averages`: /proc schedstat deltas give
averages over an interval and nothing per activation. For an RT task woken on an idle CPU the kernel
books the wakeup delay as run time, so its average run time is too high and its wait too low.

Everything here is synchronous file I/O on tracefs and /proc; callers on the event loop use
`asyncio.to_thread`. `Tracer` is not thread-safe: one caller at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from agent.runtime.cgroups import PROC
from agent.runtime.procfs import read_stat

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_log = logging.getLogger(__name__)

TRACEFS: Final = Path("/sys/kernel/tracing")
EVENTS: Final = ("sched/sched_switch", "sched/sched_wakeup", "sched/sched_wakeup_new")
_READ_CHUNK: Final = 1 << 16
_READ_LIMIT: Final = 8 << 20
"""Bytes drained per `read` at most, so a flood of events cannot hold the caller forever."""

# The lines `trace_pipe` prints for the enabled events. The TASK-PID column before the timestamp
# may hold anything, so the match starts at the timestamp. comm is at most 15 bytes, too short to
# fake the fields after it, and the end of the line anchors the last ones. One search per line beats
# finditer over the whole buffer (2.5 against 1.9 µs a line: the top-level alternation needed for
# the LOST lines defeats the regex engine's literal-prefix scan).
_EVENT: Final = re.compile(
    rb" (\d+)\.(\d{6}): sched_(?:"
    rb"switch: prev_comm=.* prev_pid=(\d+) prev_prio=-?\d+ prev_state=(\S+)"
    rb" ==> next_comm=.* next_pid=(\d+) next_prio=-?\d+"
    rb"|wakeup(?:_new)?: comm=.* pid=(\d+) prio=-?\d+ target_cpu=\d+"
    rb")$"
)
# The kernel's note of a gap: "[LOST EVENTS]" when it does not know how many.
_LOST: Final = re.compile(rb"CPU:\d+ \[LOST (?:(\d+) )?EVENTS\]$")
_RUNNABLE: Final = ord("R")
"""`prev_state` R (yielded) or R+ (preempted): still runnable, so the activation goes on."""
_DEAD: Final = frozenset({b"X", b"Z"})
_BLOCKED_STATES: Final = frozenset("SDITt")


class TracerUnavailable(Exception):  # noqa: N818 - the name states the condition, as errors.py does
    """Tracing cannot start here; the caller falls back to schedstat averages."""


@dataclass(frozen=True, slots=True)
class TracedActivation:
    """One activation of a thread seen from the scheduler; times are CLOCK_MONOTONIC ns (µs steps).

    `latency_ns` = `start_ns` - `wakeup_ns`, the wakeup latency; `run_ns` is the time on a CPU
    between `start_ns` and `end_ns` (less than their difference when the thread was preempted).
    """

    pid: int
    tid: int
    wakeup_ns: int
    start_ns: int
    end_ns: int
    run_ns: int
    latency_ns: int


# Per-thread states of the assembler.
_UNKNOWN: Final = 0
"""Not known to be blocked: tracing just started, or events were lost."""
_BLOCKED: Final = 1
_WOKEN: Final = 2
_RUNNING: Final = 3
_PREEMPTED: Final = 4
_ADRIFT: Final = 5
"""On a CPU or runnable, but the activation's wakeup is not known: its end is awaited, unused."""


class _Thread:
    __slots__ = ("on_cpu_ns", "pid", "run_ns", "start_ns", "state", "tid", "wakeup_ns")

    def __init__(self, tid: int, pid: int) -> None:
        self.tid = tid
        self.pid = pid
        self.state = _UNKNOWN
        self.wakeup_ns = 0
        self.start_ns = 0
        self.on_cpu_ns = 0
        self.run_ns = 0


class ActivationAssembler:
    """Turns `trace_pipe` text into completed activations of the threads in `threads` (tid -> pid).

    `blocked` names the threads known to be asleep when tracing started: their first wakeup starts
    an activation. Any other thread's first activation is only trusted from its first blocking
    switch-out on. Keeps each thread's partial activation between calls of `feed`; lines of other
    threads, other events and anything unparsable are skipped.
    """

    def __init__(self, threads: Mapping[int, int], blocked: Iterable[int] = ()) -> None:
        # Keyed by the tid as the trace spells it: no int() for the lines of other tasks.
        self._threads = {b"%d" % tid: _Thread(tid, pid) for tid, pid in threads.items()}
        for tid in blocked:
            thread = self._threads.get(b"%d" % tid)
            if thread is not None:
                thread.state = _BLOCKED
        self.lost_events = 0
        """Events the kernel dropped (ring buffer overrun); a gap of unknown size counts 1."""
        self.missed_wakeups: Counter[int] = Counter()
        """Per tid: switch-ins of a blocked thread without a wakeup; those activations are lost."""
        self.missed_switch_ins: Counter[int] = Counter()
        """Per tid: woken threads that switched out with no switch-in seen. These activations did
        happen (alive supervision should count them) but their start, run and latency are unknown.
        """

    def feed(self, text: bytes) -> list[TracedActivation]:
        """Activations completed by the whole lines in `text`, in the order they ended."""
        done: list[TracedActivation] = []
        threads = self._threads
        search = _EVENT.search
        for line in text.split(b"\n"):
            match = search(line)
            if match is None:
                lost = _LOST.match(line)
                if lost is not None:
                    self._lose(int(lost[1]) if lost[1] else 1)
                continue
            seconds, micros, prev, prev_state, nxt, woken = match.groups()
            if woken is not None:
                thread = threads.get(woken)
                if thread is not None and thread.state == _BLOCKED:
                    # A wakeup of a thread on a CPU or runnable (it had set a sleep state but not
                    # yet switched out) does not start an activation; a second one keeps the first;
                    # one of a thread in an unknown state might be either.
                    thread.state = _WOKEN
                    thread.wakeup_ns = int(seconds) * 1_000_000_000 + int(micros) * 1000
                continue
            leaving = threads.get(prev)
            coming = threads.get(nxt)
            if leaving is None and coming is None:
                continue
            ts = int(seconds) * 1_000_000_000 + int(micros) * 1000
            if leaving is not None:
                self._switch_out(leaving, ts, prev_state, done)
            if coming is not None:
                self._switch_in(coming, ts)
        return done

    def _switch_out(
        self, thread: _Thread, ts: int, prev_state: bytes, done: list[TracedActivation]
    ) -> None:
        runnable = prev_state[0] == _RUNNABLE
        if thread.state == _WOKEN:
            self.missed_switch_ins[thread.tid] += 1
        elif thread.state == _RUNNING:
            thread.run_ns += ts - thread.on_cpu_ns
            if runnable:
                thread.state = _PREEMPTED
                return
            done.append(
                TracedActivation(
                    thread.pid,
                    thread.tid,
                    thread.wakeup_ns,
                    thread.start_ns,
                    ts,
                    thread.run_ns,
                    thread.start_ns - thread.wakeup_ns,
                )
            )
        thread.state = _ADRIFT if runnable else _BLOCKED
        if prev_state in _DEAD:
            del self._threads[b"%d" % thread.tid]

    def _switch_in(self, thread: _Thread, ts: int) -> None:
        state = thread.state
        if state == _WOKEN:
            thread.state = _RUNNING
            thread.start_ns = thread.on_cpu_ns = ts
            thread.run_ns = 0
        elif state == _PREEMPTED:
            thread.state = _RUNNING
            thread.on_cpu_ns = ts
        else:
            if state == _BLOCKED:
                self.missed_wakeups[thread.tid] += 1
            thread.state = _ADRIFT

    def _lose(self, count: int) -> None:
        self.lost_events += count
        # The gap may hold any of the traced threads' events: no activation open now is reliable.
        for thread in self._threads.values():
            thread.state = _UNKNOWN


def threads_of(pids: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """tid -> pid of the threads to trace: all threads of a process id, only itself for a thread id.

    An id that names a thread other than its process's main thread selects that thread alone, so a
    caller can trace one worker. Ids that do not exist (any more) are left out.
    """
    threads: dict[int, int] = {}
    for pid in pids:
        try:
            tgid = _tgid(pid, proc)
            if tgid != pid:
                threads[pid] = tgid
                continue
            threads.update((int(tid), pid) for tid in os.listdir(f"{proc}/{pid}/task"))  # noqa: PTH208
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return threads


def _asleep(tids: Iterable[int]) -> list[int]:
    asleep = []
    for tid in tids:
        stat = read_stat(tid)
        # R is running or runnable; S, D, I (idle kernel thread), T, t are blocked.
        if stat is not None and stat.state in _BLOCKED_STATES:
            asleep.append(tid)
    return asleep


def _tgid(pid: int, proc: Path) -> int:
    with open(f"{proc}/{pid}/status", "rb") as status:  # noqa: PTH123 - str paths, as in procfs
        for line in status:
            if line.startswith(b"Tgid:"):
                return int(line[5:])
    raise ValueError(f"no Tgid in {proc}/{pid}/status")


class Tracer:
    """A private tracefs instance tracing the scheduler events of some threads.

    Use: `available()`; `start(pids)`; `read()` as often as wanted (each returns the activations
    completed since the last); `read()` once more, then `stop()`. `stop` is safe to call at any
    time and more than once, and always removes the instance.
    """

    def __init__(
        self, tracefs: Path = TRACEFS, instance: str = "piccolo-agent", *, buffer_kb: int = 256
    ) -> None:
        if not instance or "/" in instance or instance in {".", ".."}:
            raise ValueError(f"invalid tracefs instance name {instance!r}")
        self.tracefs = tracefs
        self.directory = tracefs / "instances" / instance
        self.buffer_kb = buffer_kb
        """Ring buffer per CPU; 256 KiB holds about 4,000 events, seconds of a busy thread."""
        self._fd: int | None = None
        self._rest = b""
        self._assembler = ActivationAssembler({})

    @property
    def lost_events(self) -> int:
        """Events the kernel overwrote before `read` got them; activations across them are lost."""
        return self._assembler.lost_events

    @property
    def missed_wakeups(self) -> Counter[int]:
        """Per tid, see `ActivationAssembler.missed_wakeups`."""
        return self._assembler.missed_wakeups

    @property
    def missed_switch_ins(self) -> Counter[int]:
        """Per tid, see `ActivationAssembler.missed_switch_ins`: activations without a start."""
        return self._assembler.missed_switch_ins

    @property
    def running(self) -> bool:
        """Between a successful `start` and `stop`."""
        return self._fd is not None

    def available(self) -> tuple[bool, str]:
        """Whether tracing can work here, and why not; mounts tracefs first if absent and root.

        The message is empty when tracefs was there, and says so when this call mounted it.
        """
        note = ""
        if not (self.tracefs / "instances").is_dir():
            if os.geteuid() != 0:
                return False, f"tracefs is not mounted at {self.tracefs} and mounting it needs root"
            try:
                _mount_tracefs(self.tracefs)
            except OSError as error:
                return False, f"tracefs is absent at {self.tracefs} and mounting it failed: {error}"
            note = f"mounted tracefs at {self.tracefs}"
            _log.info("%s for the scheduler tracer", note)
        missing = [e for e in EVENTS if not (self.tracefs / "events" / e).is_dir()]
        if missing:
            return False, f"the kernel has no {', '.join(missing)} tracepoint"
        if not os.access(self.tracefs / "instances", os.W_OK):
            return False, f"cannot create tracefs instances in {self.tracefs}/instances (not root?)"
        return True, note

    def start(self, pids: Iterable[int]) -> None:
        """Trace the threads of `pids` (see `threads_of`) from now on, in a fresh instance.

        Threads a process starts later are not followed; start again to include them. Raises
        `TracerUnavailable` when none of the pids exists or tracefs refuses; nothing is left behind.
        """
        self.stop()  # also removes an instance left behind by an agent that died without stop()
        threads = threads_of(pids)
        if not threads:
            # An empty set_event_pid means no filter at all: every task on the node would be traced.
            raise TracerUnavailable("none of the processes to trace exists")
        try:
            self.directory.mkdir()
            self._set("tracing_on", "0")
            self._set("trace_clock", "mono")
            self._set("buffer_size_kb", str(self.buffer_kb))
            self._set("options/irq-info", "0")  # shorter lines: the flags are not used
            self._set("set_event_pid", " ".join(map(str, threads)))
            for event in EVENTS:
                self._set(f"events/{event}/enable", "1")
            self._fd = os.open(self.directory / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
            self._set("tracing_on", "1")
            # Read after tracing is on: a thread asleep now either still is, or its wakeup is in
            # the trace; either way its next wakeup starts an activation that can be trusted.
            self._assembler = ActivationAssembler(threads, _asleep(threads))
            self._rest = b""
        except OSError as error:
            self.stop()
            raise TracerUnavailable(f"cannot start tracing in {self.directory}: {error}") from error
        _log.debug("tracing %d threads in %s", len(threads), self.directory)

    def read(self) -> list[TracedActivation]:
        """Activations completed since the last call; never blocks. Empty when not started."""
        if self._fd is None:
            return []
        chunks = [self._rest]
        size = 0
        while size < _READ_LIMIT:
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        text = b"".join(chunks)
        # The pipe may hand out a line in two reads: keep the unfinished end for the next call.
        cut = text.rfind(b"\n") + 1
        self._rest = text[cut:]
        return self._assembler.feed(text[:cut])

    def stop(self) -> None:
        """Stop tracing and remove the instance; activations not yet read are discarded."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.directory.is_dir():
            return
        for name, value in (("tracing_on", "0"), ("events/enable", "0")):
            with contextlib.suppress(OSError):
                self._set(name, value)
        try:
            self.directory.rmdir()
        except OSError as error:
            # EBUSY: someone else holds a file of the instance open; it stays until they close it.
            _log.warning("cannot remove tracefs instance %s: %s", self.directory, error)

    def _set(self, name: str, value: str) -> None:
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def _mount_tracefs(target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


@dataclass(frozen=True, slots=True)
class SchedstatSample:
    """/proc/<pid>/task/<tid>/schedstat: cumulative ns on a CPU and waiting to run; slice count."""

    pid: int
    tid: int
    run_ns: int
    wait_ns: int
    timeslices: int


@dataclass(frozen=True, slots=True)
class SchedstatAverages:
    """Averages over an interval from two schedstat samples: never per-activation values.

    A timeslice is one stay on a CPU, so a preempted activation counts several. For an RT thread
    woken on an idle CPU the kernel books the wakeup delay as run time: `mean_run_ns` is then too
    high and `mean_wait_ns` too low compared with the tracer's run time and latency.
    """

    pid: int
    tid: int
    timeslices: int
    mean_run_ns: float
    """CPU time per timeslice."""
    mean_wait_ns: float
    """Time runnable but waiting for a CPU, per timeslice."""
    kind: Literal["schedstat-average"] = "schedstat-average"


def read_schedstat(pid: int, tid: int | None = None, proc: Path = PROC) -> SchedstatSample | None:
    """Thread `tid` of `pid` (its main thread when None); None once the thread is gone."""
    tid = pid if tid is None else tid
    try:
        with open(f"{proc}/{pid}/task/{tid}/schedstat", "rb") as file:  # noqa: PTH123 - str paths, as in procfs
            run, wait, slices = file.read().split()[:3]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return SchedstatSample(pid, tid, int(run), int(wait), int(slices))


def schedstat_averages(before: SchedstatSample, after: SchedstatSample) -> SchedstatAverages | None:
    """Mean run and wait per timeslice between two samples of one thread; None if it never ran.

    Raises `ValueError` for samples of different threads; counters that went backwards (the tid
    was reused by a new thread) give None too.
    """
    if (before.pid, before.tid) != (after.pid, after.tid):
        raise ValueError(
            f"schedstat samples of different threads: {before.pid}/{before.tid} and "
            f"{after.pid}/{after.tid}"
        )
    slices = after.timeslices - before.timeslices
    run = after.run_ns - before.run_ns
    wait = after.wait_ns - before.wait_ns
    if slices <= 0 or run < 0 or wait < 0:
        return None
    return SchedstatAverages(after.pid, after.tid, slices, run / slices, wait / slices)


__all__ = [
    "ActivationAssembler",
    "SchedstatAverages",
    "SchedstatSample",
    "TracedActivation",
    "Tracer",
    "TracerUnavailable",
    "read_schedstat",
    "schedstat_averages",
    "threads_of",
]
