"""A model bound to a process is found by its matcher and followed through its life."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.collectors.process import PIDFILE_RECHECK_S, ProcessCollector, ProcessReader
from agent.config import ProcessBinding
from agent.runtime.procfs import ProcessMatcher

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["cmdline", "pidfile"])
async def test_a_process_bound_model_is_found_measured_and_seen_to_exit(
    tmp_path: Path, how: str
) -> None:
    marker = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 100}"
    process = await asyncio.create_subprocess_exec("sleep", marker)
    pidfile = tmp_path / "model.pid"
    pidfile.write_text(f"{process.pid}\n")
    binding = ProcessBinding.model_validate(
        {"model": "planner", "cmdline": rf"^sleep {marker}$"}
        if how == "cmdline"
        else {"model": "planner", "pidfile": str(pidfile)}
    )
    collector = ProcessCollector("n1", [binding], psutil.virtual_memory().total)
    try:
        await collector.collect()
        await asyncio.sleep(0.2)
        samples = await collector.collect()
        view = collector.views["planner"]
        assert (view.phase, view.pids, view.source) == ("Running", 1, "process")
        assert view.memory_mb is not None
        assert view.memory_mb > 0
        assert view.cpu_percent is not None
        # psutil adds start ticks to /proc/stat's btime, whole seconds: agree within one.
        assert view.started_ns == pytest.approx(
            psutil.Process(process.pid).create_time() * 1e9, abs=1.1e9
        )
        assert {s.metric for s in samples} >= {"phase", "cpu_usage", "memory_usage", "uptime"}
    finally:
        process.kill()
        await process.wait()
    await collector.collect()
    gone = collector.views["planner"]
    assert (gone.phase, gone.reason, gone.error_count) == ("Failed", "process exited", 1)


async def test_a_model_whose_process_never_ran_is_pending() -> None:
    binding = ProcessBinding.model_validate({"model": "ghost", "name": "no-such-process-xyz"})
    collector = ProcessCollector("n1", [binding], psutil.virtual_memory().total)
    await collector.collect()
    assert collector.views["ghost"].phase == "Pending"


async def test_a_pid_file_is_read_again_when_its_process_is_gone_or_after_a_while(
    tmp_path: Path,
) -> None:
    first = await asyncio.create_subprocess_exec("sleep", "60")
    second = await asyncio.create_subprocess_exec("sleep", "60")
    pidfile = tmp_path / "model.pid"
    pidfile.write_text(f"{first.pid}\n")
    now = [100.0]
    reader = ProcessReader({"m": ProcessMatcher(pidfile=pidfile)}, clock=lambda: now[0])
    try:
        assert pids_of(reader.read_all()) == (first.pid,)
        # A new main process while the old one lives: the file is trusted until the recheck.
        pidfile.write_text(f"{second.pid}\n")
        now[0] += 1.0
        assert pids_of(reader.read_all()) == (first.pid,)
        now[0] += PIDFILE_RECHECK_S
        assert pids_of(reader.read_all()) == (second.pid,)
        # Its process gone, the file is read at once (here it names a dead process: none).
        second.kill()
        await second.wait()
        now[0] += 1.0
        assert reader.read_all() == {"m": None}
        pidfile.write_text(f"{first.pid}\n")
        now[0] += 0.5
        assert pids_of(reader.read_all()) == (first.pid,)
    finally:
        reader.close()
        for process in (first, second):
            if process.returncode is None:
                process.kill()
                await process.wait()


def pids_of(readings: dict[str, Any]) -> tuple[int, ...] | None:
    reading = readings["m"]
    return None if reading is None else tuple(reading.pids)


async def test_an_idle_process_keeps_its_view_and_a_busy_one_is_measured_anew(
    tmp_path: Path,
) -> None:
    busy = await asyncio.create_subprocess_exec("sh", "-c", "while :; do :; done")
    pidfile = tmp_path / "busy.pid"
    pidfile.write_text(f"{busy.pid}\n")
    binding = ProcessBinding.model_validate({"model": "busy", "pidfile": str(pidfile)})
    collector = ProcessCollector("n1", [binding], psutil.virtual_memory().total)
    try:
        await collector.collect()
        await asyncio.sleep(0.3)
        await collector.collect()
        running = collector.views["busy"]
        assert running.cpu_percent is not None
        assert running.cpu_percent > 20

        busy.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.1)  # the tick accounting settles
        views = []
        for _ in range(3):
            await collector.collect()
            views.append(collector.views["busy"])
            await asyncio.sleep(0.2)
        # Stopped: after one reading of the last ticks, nothing moves and the view is reused.
        assert views[-1].cpu_percent == 0.0
        assert views[-1] is views[-2]
        samples = await collector.collect()
        uptimes = [s.value for s in samples if s.metric == "uptime"]
        assert uptimes
        assert isinstance(uptimes[0], float)
        assert uptimes[0] > 0.5  # uptime still moves on a reused view

        busy.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.3)
        await collector.collect()
        resumed = collector.views["busy"]
        assert resumed.cpu_percent is not None
        assert resumed.cpu_percent > 20
    finally:
        busy.kill()
        await busy.wait()
        collector.close()
