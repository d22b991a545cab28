"""A model bound to a process is found by its matcher and followed through its life."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psutil
import pytest

from agent.collectors.process import ProcessCollector
from agent.config import ProcessBinding

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
