"""What the benchmarks share: the run's deadline and signals, the guard that cleans up after a
killed run, and per-process CPU accounting."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType

import psutil

from tests.support.services import parent_death_hook

# Cleans up when the benchmark dies without doing so itself (SIGKILL, a crash): it gets SIGTERM
# from the kernel when its parent goes (PR_SET_PDEATHSIG), then kills the processes whose pids
# the file lists (the agent running now), waits `settle` seconds for the other children to stop
# on their own SIGTERM, removes the containers with `label` (if one is given) and the folder.
_GUARD = """
import os, shutil, signal, subprocess, sys, time
pids_file, parent, work, settle, label = sys.argv[1:6]
def clean(*_):
    try:
        pids = [int(word) for word in open(pids_file).read().split()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(float(settle))
    if label:
        subprocess.run(["podman", "rm", "--force", "--time=0", "--filter", "label=" + label],
                       capture_output=True, timeout=120)
    shutil.rmtree(work, ignore_errors=True)
    os._exit(0)
signal.signal(signal.SIGTERM, clean)
if os.getppid() != int(parent):
    clean()
while True:
    signal.pause()
"""


def start_guard(
    work: Path,
    pids_file: Path,
    *,
    settle_s: float = 0.0,
    podman_label: str = "",
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """The guard of this run (see `_GUARD`); SIGKILL it once the run has cleaned up itself.

    It runs in a session of its own, so that a Ctrl-C of the run does not kill it first.
    """
    if not pids_file.exists():
        pids_file.write_text("", encoding="ascii")
    arguments = [str(pids_file), str(os.getpid()), str(work), str(settle_s), podman_label]
    return subprocess.Popen(
        [sys.executable, "-c", _GUARD, *arguments],
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
    )


class Deadline(Exception):  # noqa: N818 - the name says what happened
    """The whole run took longer than its bound."""


def on_alarm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise Deadline("the benchmark ran past its deadline")


def on_term(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


def cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds of a process so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread group: main (the event loop), python (other Python threads), comm."""
    totals: dict[str, float] = {}
    with contextlib.suppress(psutil.Error):
        for thread in psutil.Process(pid).threads():
            if thread.id == pid:
                name = "main"
            else:
                try:
                    comm = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
                except OSError:
                    continue
                name = "python-threads" if comm.startswith("python") else comm
            totals[name] = totals.get(name, 0.0) + thread.user_time + thread.system_time
    return totals


def raw_read(pids: Iterable[int], names: tuple[str, ...] = ("stat", "statm")) -> None:
    """The floor of reading processes: open, read and close each /proc file, nothing parsed."""
    for pid in pids:
        for name in names:
            try:
                fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.read(fd, 4096)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
