"""The scheduler tracer against cyclictest, which measures its own wakeup latency.

cyclictest (`-t1 -p80 -i10000 -l300 -a0 --secaligned -v`) runs one SCHED_FIFO 80 thread on CPU 0
that sleeps until absolute timer expiries on whole 10 ms steps of CLOCK_MONOTONIC (`--secaligned`
starts them on a whole second, which also gives the tracer time to start before the first one) and
prints, per loop, the time from the expiry to its own clock read after waking (`-v`, in µs). The
tracer follows that thread alone. Each activation is paired with its loop by its expiry,
`wakeup_ns` rounded down to 10 ms, which gives exact relations and measured tolerances:

- expiry <= wakeup <= switch-in, and (switch-in - expiry) <= cyclictest's latency of that loop, in
  whole µs with no tolerance: the trace truncates to the µs as cyclictest does, on the same clock.
  So the tracer's latency (wakeup -> switch-in) is at most cyclictest's, activation by activation
  and hence at every percentile. cyclictest's span adds the timer's lateness (expiry -> wakeup,
  median 29-47 µs on the 2-core VM) and the return to user space (switch-in -> clock read, median
  7-10 µs): its median exceeds the tracer's by 44-59 µs in 12 runs; the test allows 0-150 µs.
- activations + missed switch-ins == loops exactly, in all 12 runs (the edges included: the thread
  is asleep when tracing starts, and its exit ends the last activation). No event was lost. Missed
  switch-ins, woken activations whose switch-in shows in no tracefs instance at all, were 0-8 of
  300 per run (the test allows 5 %).
- with a SCHED_FIFO 90 hog on the same CPU (2 ms busy, 5 ms asleep) cyclictest's p90 grows from
  87-95 to 1421-1470 µs and the tracer's from 35-36 to 1373-1435 µs: the delay lies between wakeup
  and switch-in, where the tracer measures. The test asks for >= 1 ms growth in both, the tracer's
  >= 80 % of cyclictest's. (A delay before the wakeup, a late timer interrupt, is invisible to it.)
- schedstat averages over the same run: run time per timeslice 28-32 µs against the tracer's
  16-18 µs per activation, as the kernel books the RT wakeup delay as run time.

docs/tracer-validation.md has the numbers of three runs.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.timing.tracer import (
    SchedstatAverages,
    SchedstatSample,
    TracedActivation,
    Tracer,
    read_schedstat,
    schedstat_averages,
)
from tests.conftest import require_binary, unavailable

pytestmark = pytest.mark.integration

INTERVAL_NS = 10_000_000
LOOPS = 300
CPU = 0
MAX_MISSED_SWITCH_INS = LOOPS * 5 // 100
MEDIAN_GAP_US = (0, 150)
"""cyclictest's median latency minus the tracer's, in µs: timer lateness plus return to user."""

# A SCHED_FIFO 90 task on the measured CPU, above cyclictest's 80: 2 ms busy, 5 ms asleep, so a
# third of cyclictest's wakeups find it running and wait for up to 2 ms. It ends by itself.
HOG = f"""
import os, time
os.sched_setaffinity(0, {{{CPU}}})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(90))
end = time.monotonic() + 10
while time.monotonic() < end:
    busy = time.monotonic() + 0.002
    while time.monotonic() < busy:
        pass
    time.sleep(0.005)
"""
_VERBOSE = re.compile(rb"^\s*0:\s*(\d+):\s*(-?\d+)\s*$", re.MULTILINE)


@dataclass
class CyclictestRun:
    """One cyclictest run traced from outside; latencies in µs as cyclictest reports them."""

    tid: int
    summary: dict[str, Any]
    """cyclictest's JSON for its thread: cycles, min, avg, max (µs)."""
    latencies_us: dict[int, int]
    """Per loop, from `-v`."""
    activations: list[TracedActivation]
    missed_switch_ins: int
    missed_wakeups: int
    lost_events: int
    schedstat: SchedstatAverages | None = None
    pairs: list[tuple[int, int, TracedActivation]] = field(default_factory=list)
    """(loop, expiry ns, activation), by the expiry each wakeup follows."""

    def __post_init__(self) -> None:
        expiries = [a.wakeup_ns // INTERVAL_NS * INTERVAL_NS for a in self.activations]
        # Loop k waits for the expiry (k + 1) intervals after the whole second it was aligned to.
        aligned = min(expiries) // 1_000_000_000 * 1_000_000_000
        self.pairs = [
            ((expiry - aligned) // INTERVAL_NS - 1, expiry, activation)
            for expiry, activation in zip(expiries, self.activations, strict=True)
        ]

    def tracer_us(self) -> list[int]:
        return [a.latency_ns // 1000 for _, _, a in self.pairs]

    def cyclictest_us(self) -> list[int]:
        return [self.latencies_us[loop] for loop, _, _ in self.pairs]

    def numbers(self) -> dict[str, object]:
        """What docs/tracer-validation.md tabulates."""
        late = [(a.wakeup_ns - expiry) // 1000 for _, expiry, a in self.pairs]
        to_user = [
            self.latencies_us[loop] - (a.start_ns - expiry) // 1000
            for loop, expiry, a in self.pairs
        ]
        return {
            "loops": self.summary["cycles"],
            "activations": len(self.activations),
            "missed_switch_ins": self.missed_switch_ins,
            "lost": self.lost_events,
            "cyclictest_json_min_avg_max": (
                self.summary["min"],
                self.summary["avg"],
                self.summary["max"],
            ),
            "cyclictest": percentiles(self.cyclictest_us()),
            "tracer": percentiles(self.tracer_us()),
            "timer_late": percentiles(late),
            "to_user": percentiles(to_user),
            "run": percentiles([a.run_ns // 1000 for a in self.activations]),
            "schedstat": self.schedstat,
        }


def percentiles(values: list[int]) -> tuple[int, int, int, int, int]:
    """min, p50, p90, p99, max (nearest rank)."""
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return (ordered[0], rank(0.5), rank(0.9), rank(0.99), ordered[-1])


def measurement_thread(pid: int) -> int:
    """cyclictest's measurement thread: the one that is not the main thread."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]  # noqa: PTH208
        except FileNotFoundError:
            break
        if tids:
            return tids[0]
        time.sleep(0.001)
    pytest.fail("cyclictest started no measurement thread")


def run_cyclictest(tracer: Tracer, directory: Path, *, hog: bool = False) -> CyclictestRun:
    """cyclictest traced by `tracer` from its first loop to its exit; tracing stopped after."""
    binary = require_binary("cyclictest")
    directory.mkdir(parents=True, exist_ok=True)
    summary_file = directory / "cyclictest.json"
    output = directory / "cyclictest.out"
    load = subprocess.Popen([sys.executable, "-c", HOG]) if hog else None
    try:
        with output.open("wb") as stdout:
            process = subprocess.Popen(
                [
                    binary,
                    "-t1",
                    "-p80",
                    f"-i{INTERVAL_NS // 1000}",
                    f"-l{LOOPS}",
                    f"-a{CPU}",
                    "--secaligned",
                    "-m",
                    "-q",
                    "-v",
                    f"--json={summary_file}",
                ],
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        try:
            tid = measurement_thread(process.pid)
            tracer.start([tid])
            first = read_schedstat(process.pid, tid)
            last = first
            activations: list[TracedActivation] = []
            # Up to 2 s to the aligned start, 3 s of loops, and slack.
            deadline = time.monotonic() + 2 + LOOPS * INTERVAL_NS / 1e9 + 10
            while process.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail("cyclictest did not finish in time")
                time.sleep(0.1)
                activations += tracer.read()
                last = read_schedstat(process.pid, tid) or last
            time.sleep(0.05)
            activations += tracer.read()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(5)
            tracer.stop()
    finally:
        if load is not None:
            load.kill()
            load.wait(5)
    assert process.returncode == 0, output.read_text()
    latencies = {int(loop): int(us) for loop, us in _VERBOSE.findall(output.read_bytes())}
    summary = json.loads(summary_file.read_text())["thread"]["0"]
    mine = [a for a in activations if a.tid == tid]
    return CyclictestRun(
        tid=tid,
        summary=summary,
        latencies_us=latencies,
        activations=mine,
        missed_switch_ins=tracer.missed_switch_ins[tid],
        missed_wakeups=tracer.missed_wakeups[tid],
        lost_events=tracer.lost_events,
        schedstat=schedstat_averages(first, last) if first and last else None,
    )


def usable_tracer(instance: str) -> Tracer:
    if os.geteuid() != 0:
        unavailable("scheduler tracing needs root")
    tracer = Tracer(instance=instance)
    available, why = tracer.available()
    if not available:
        unavailable(why)
    return tracer


PAIRING_ATTEMPTS = 3


def pairable_run(tracer: Tracer, directory: Path, *, hog: bool = False) -> CyclictestRun:
    """A run whose activations can be paired with loops by their expiry.

    The pairing rounds a wakeup down to its 10 ms step, which names its loop only while every
    wakeup comes less than one interval after its expiry. cyclictest's own latency bounds that
    (it spans expiry to clock read); a virtual machine descheduled for longer (cyclictest once
    reported 10168 µs here, in a full test run) breaks the premise, not the tracer. Such a run is
    measured again, up to PAIRING_ATTEMPTS times.
    """
    worst = 0
    for attempt in range(PAIRING_ATTEMPTS):
        run = run_cyclictest(tracer, directory / f"attempt-{attempt}", hog=hog)
        worst = max(run.latencies_us.values(), default=0)
        if worst < INTERVAL_NS // 1000:
            return run
    pytest.fail(
        f"cyclictest saw a latency of {worst} µs, over its {INTERVAL_NS // 1000} µs interval, in "
        f"{PAIRING_ATTEMPTS} runs: this machine stalls too long for the loops to be paired"
    )


@pytest.fixture(scope="module")
def idle_run(tmp_path_factory: pytest.TempPathFactory) -> CyclictestRun:
    tracer = usable_tracer(f"piccolo-test-{os.getpid()}")
    run = pairable_run(tracer, tmp_path_factory.mktemp("idle"))
    assert not tracer.directory.exists()
    return run


@pytest.fixture(scope="module")
def hog_run(tmp_path_factory: pytest.TempPathFactory) -> CyclictestRun:
    tracer = usable_tracer(f"piccolo-test-{os.getpid()}")
    return pairable_run(tracer, tmp_path_factory.mktemp("hog"), hog=True)


def test_cyclictest_reports_every_loop(idle_run: CyclictestRun) -> None:
    assert idle_run.summary["cycles"] == LOOPS
    assert sorted(idle_run.latencies_us) == list(range(LOOPS))
    values = list(idle_run.latencies_us.values())
    assert (idle_run.summary["min"], idle_run.summary["max"]) == (min(values), max(values))
    assert idle_run.summary["avg"] == pytest.approx(statistics.mean(values), abs=0.01)


def test_one_activation_per_loop(idle_run: CyclictestRun) -> None:
    loops = [loop for loop, _, _ in idle_run.pairs]
    assert len(set(loops)) == len(loops)
    assert all(0 <= loop < LOOPS for loop in loops)
    assert idle_run.lost_events == 0
    assert idle_run.missed_wakeups == 0
    assert idle_run.missed_switch_ins <= MAX_MISSED_SWITCH_INS
    assert len(idle_run.activations) + idle_run.missed_switch_ins == LOOPS


@pytest.mark.parametrize("variant", ["idle", "hog"])
def test_each_activation_lies_within_cyclictest_latency(
    variant: str, request: pytest.FixtureRequest
) -> None:
    run: CyclictestRun = request.getfixturevalue(f"{variant}_run")
    for loop, expiry, activation in run.pairs:
        assert expiry <= activation.wakeup_ns <= activation.start_ns, activation
        assert (activation.start_ns - expiry) // 1000 <= run.latencies_us[loop], activation
        assert activation.latency_ns // 1000 <= run.latencies_us[loop]
        assert 0 < activation.run_ns <= activation.end_ns - activation.start_ns


def test_latency_distribution_against_cyclictest(idle_run: CyclictestRun) -> None:
    tracer = percentiles(idle_run.tracer_us())
    cyclictest = percentiles(idle_run.cyclictest_us())
    assert all(t <= c for t, c in zip(tracer, cyclictest, strict=True)), (tracer, cyclictest)
    low, high = MEDIAN_GAP_US
    assert low <= cyclictest[1] - tracer[1] <= high, (tracer, cyclictest)


def test_tracer_follows_latency_growth_under_load(
    idle_run: CyclictestRun, hog_run: CyclictestRun
) -> None:
    cyclictest_growth = (
        percentiles(hog_run.cyclictest_us())[2] - percentiles(idle_run.cyclictest_us())[2]
    )
    tracer_growth = percentiles(hog_run.tracer_us())[2] - percentiles(idle_run.tracer_us())[2]
    assert cyclictest_growth >= 1000, hog_run.numbers()
    assert tracer_growth >= 1000, hog_run.numbers()
    assert tracer_growth >= 0.8 * cyclictest_growth, (tracer_growth, cyclictest_growth)
    assert hog_run.lost_events == 0
    assert len(hog_run.activations) + hog_run.missed_switch_ins == LOOPS


def test_schedstat_fallback_gives_averages_only(idle_run: CyclictestRun) -> None:
    averages = idle_run.schedstat
    assert averages is not None
    assert averages.kind == "schedstat-average"
    assert not hasattr(averages, "latency_ns")
    assert not hasattr(averages, "start_ns")
    # Sampled from tracing's start to the last 0.1 s before exit: one timeslice per loop, about.
    assert 0.9 * LOOPS <= averages.timeslices <= 1.1 * LOOPS
    # The kernel books this RT thread's wakeup delay as run time: 28-32 µs a slice against the
    # tracer's 16-18 µs of run per activation idle, and above it in every measured run.
    tracer_mean_run = statistics.mean(a.run_ns for a in idle_run.activations)
    assert tracer_mean_run < averages.mean_run_ns < 4 * tracer_mean_run


def test_schedstat_of_a_live_thread() -> None:
    sample = read_schedstat(os.getpid())
    assert isinstance(sample, SchedstatSample)
    assert sample.run_ns > 0
    assert sample.timeslices > 0


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("mounting tracefs needs root")
    target = tmp_path / "tracing"
    target.mkdir()
    yield target
    subprocess.run(["umount", str(target)], check=False, timeout=10)


def test_available_mounts_tracefs_where_absent(mount_point: Path) -> None:
    available, why = Tracer(mount_point).available()
    assert available, why
    assert why == f"mounted tracefs at {mount_point}"
    assert (mount_point / "instances").is_dir()
    assert Tracer(mount_point).available() == (True, "")
