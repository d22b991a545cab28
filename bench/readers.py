"""Cost of reading every process: `read_stat` beside psutil and the bare reads, in one run.

Prints one JSON line, microseconds per process (median over rounds):
  {"processes": N, "read_stat_us": ..., "psutil_us": ..., "raw_stat_statm_us": ...,
   "raw_stat_us": ..., "rounds": R, ...}
- read_stat: `agent.runtime.procfs.read_stat` for every current pid.
- psutil: `psutil.process_iter` with pid, name, cpu_times, memory_info, num_threads, status, as a
  collector built on psutil would call it (its Process cache warm, as in a running daemon).
- raw_stat_statm: os.open/os.read/os.close of /proc/<pid>/stat and statm and nothing else: the
  floor for what read_stat reads. raw_stat: stat alone.
- pread_stat_statm: the same two files kept open (`agent.runtime.openfiles.OpenFiles`, as the
  collectors keep the files of the processes they watch) and re-read with pread; they are opened
  by an untimed read first.
Each round takes the pid list afresh and runs the four back to back, so that they see the same
processes and the same machine load. Others can import `measure` (bench/collect.py does).

Run it with the project's venv: `.venv/bin/python bench/readers.py [--rounds 30]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.runtime import procfs
from agent.runtime.openfiles import OpenFiles, raise_fd_limit
from bench.harness import raw_read

PSUTIL_ATTRS = ["pid", "name", "cpu_times", "memory_info", "num_threads", "status"]


def _raw(pids: list[int], names: tuple[str, ...]) -> None:
    raw_read(pids, names)


def _read_stat(pids: list[int]) -> None:
    for pid in pids:
        procfs.read_stat(pid)


def _pread(files: OpenFiles, pids: list[int]) -> None:
    for pid in pids:
        files.read(f"/proc/{pid}/stat")
        files.read(f"/proc/{pid}/statm")


def _psutil() -> int:
    return sum(1 for _ in psutil.process_iter(PSUTIL_ATTRS))


def measure(rounds: int = 30) -> dict[str, float | int]:
    """Median µs per process of each reader over `rounds` rounds, plus the process counts."""
    samples: dict[str, list[float]] = {
        "read_stat_us": [],
        "psutil_us": [],
        "raw_stat_statm_us": [],
        "raw_stat_us": [],
        "pread_stat_statm_us": [],
    }
    counts: list[int] = []
    _psutil()  # psutil builds its Process objects on the first call; a daemon pays that once
    raise_fd_limit()
    files = OpenFiles(limit=1 << 16)
    for _ in range(rounds):
        pids = procfs.pids()
        counts.append(len(pids))

        started = time.perf_counter()
        _read_stat(pids)
        samples["read_stat_us"].append((time.perf_counter() - started) / len(pids) * 1e6)

        started = time.perf_counter()
        yielded = _psutil()
        samples["psutil_us"].append((time.perf_counter() - started) / yielded * 1e6)

        started = time.perf_counter()
        _raw(pids, ("stat", "statm"))
        samples["raw_stat_statm_us"].append((time.perf_counter() - started) / len(pids) * 1e6)

        started = time.perf_counter()
        _raw(pids, ("stat",))
        samples["raw_stat_us"].append((time.perf_counter() - started) / len(pids) * 1e6)

        _pread(files, pids)  # opens what is new this round
        started = time.perf_counter()
        _pread(files, pids)
        samples["pread_stat_statm_us"].append((time.perf_counter() - started) / len(pids) * 1e6)

    result: dict[str, float | int] = {"processes": int(statistics.median(counts))}
    result |= {name: round(statistics.median(values), 1) for name, values in samples.items()}
    result["read_stat_over_floor"] = round(result["read_stat_us"] / result["raw_stat_statm_us"], 2)
    result["psutil_over_read_stat"] = round(result["psutil_us"] / result["read_stat_us"], 2)
    result["pread_over_raw"] = round(result["pread_stat_statm_us"] / result["raw_stat_statm_us"], 2)
    result["rounds"] = rounds
    files.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.rounds)))


if __name__ == "__main__":
    main()
