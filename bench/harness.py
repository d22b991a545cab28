"""What the benchmarks share: the run's deadline and signals, and per-process CPU accounting."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

import psutil


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
