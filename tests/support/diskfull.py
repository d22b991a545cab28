"""Filling a real filesystem, for the tests of what the agent does when its disk is full."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.ingest.client import Reporter
from tests.support.agentproc import AgentProcess
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from tests.support.services import EtcdServer

SCENARIO = "adas-activation"


def fill(directory: Path, *, leave: int = 0) -> Path:
    """Fills the filesystem of `directory` with one file until `leave` bytes are free (or none)."""
    filler = directory / "filler"
    with filler.open("ab") as out:
        chunk = b"\0" * 65536
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                out.write(chunk[: min(len(chunk), free)])
                out.flush()
            except OSError:
                break
    return filler


@dataclass
class DiskFullRun:
    """What one run of `disk_full_scenario` measured."""

    reports: int = 0
    """State reports sent (each a transition: append-only records, severity info)."""
    transitions_arrived: int = 0
    """Transitions of the scenario in etcd at the end."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Records the agents logged as dropped, by severity (both runs)."""
    first_exit: int | None = None
    restart_quarantined: bool = False
    continue_s: float | None = None
    """From freeing the space to the agent writing again (its 'stopped dropping' line)."""
    drain_s: float | None = None
    """From etcd's return to an empty buffer."""
    buffer_bytes_at_full: int = 0
    free_bytes_at_full: int = 0


_DROPPED = re.compile(r"buffer stopped dropping \((\w+)\); (\d+) were dropped(?: \(([^)]*)\))?")


def logged_drops(log: str) -> Counter[str]:
    """Records dropped, by severity, from an agent's burst lines."""
    counts: Counter[str] = Counter()
    for match in _DROPPED.finditer(log):
        for part in (match.group(3) or "").split(", "):
            if part:
                name, count = part.rsplit(" ", 1)
                counts[name] += int(count)
    return counts


def _pending(state_dir: Path) -> int:
    path = state_dir / "buffer.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def _send_all(socket: Path, count: int) -> None:
    reporter = Reporter(socket)
    try:
        for i in range(count):
            state = "Active" if i % 2 == 0 else "Inactive"
            while not reporter.state("scenario", SCENARIO, state, f"report {i}"):
                time.sleep(0.0005)  # the socket's queue is full: wait, never lose one
            if i % 500 == 499:
                # Paced (at most about 25,000 a second): what is measured is the disk, not the
                # recorder's queue, which a blocking burst on a loaded machine can overrun.
                time.sleep(0.02)
    finally:
        reporter.close()


async def disk_full_scenario(
    work: Path,
    fs: Path,
    etcd: EtcdServer,
    overrides: dict[str, Any],
    reports: int,
) -> DiskFullRun:
    """The agent's state directory on the small filesystem `fs`, etcd away: `reports` state
    reports, a restart on a filesystem filled to the last byte, then space and etcd return."""
    from agent.config import EtcdConnection  # noqa: PLC0415 - aetcd loads slowly
    from agent.store.etcd import EtcdStore  # noqa: PLC0415

    run = DiskFullRun(reports=reports)
    socket = Path(overrides["ingest.socket"])
    etcd.stop()
    agent = AgentProcess(work / "agent", overrides)
    agent.state_dir = fs / "state"
    agent.start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.to_thread(_send_all, socket, reports)
        await asyncio.to_thread(agent.wait_for_log, "filesystem nearly full", 30)
        await asyncio.sleep(2)  # the last reports written (or dropped)
        st = os.statvfs(fs)
        run.free_bytes_at_full = st.f_bavail * st.f_frsize
        run.buffer_bytes_at_full = (agent.state_dir / "buffer.sqlite3").stat().st_size
        run.first_exit = await asyncio.to_thread(agent.stop, 30)
    finally:
        agent.kill()
    first_log = agent.log()
    filler = fill(fs)
    agent.start()  # the same state directory, the filesystem full to the last byte
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        run.restart_quarantined = any(".corrupt-" in p.name for p in agent.state_dir.iterdir())
        freed = time.monotonic()
        filler.unlink()
        marker = len(agent.log())
        await eventually(
            lambda: "buffer stopped dropping" in agent.log()[marker:], 30, "writes to resume"
        )
        run.continue_s = round(time.monotonic() - freed, 3)
        etcd.start()
        back = time.monotonic()
        await eventually(
            lambda: _pending(agent.state_dir) == 0, 120, "the buffer to drain", interval=0.2
        )
        run.drain_s = round(time.monotonic() - back, 3)
        store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,)))
        try:
            prefix = f"/piccolo/monitoring/scenario/{SCENARIO}/transitions/".encode()
            run.transitions_arrived = len(await store.get_prefix(prefix))
        finally:
            await store.close()
        await asyncio.to_thread(agent.stop, 30)
    finally:
        agent.kill()
    run.dropped = logged_drops(first_log) + logged_drops(agent.log()[len(first_log) :])
    return run
