"""Models that run as plain processes: bound in config to a systemd unit, a name, a command-line
regular expression or a pid file (`resource_monitoring.process.bindings`).

The same model metrics as for containers, read from procfs: CPU % of one core from utime+stime,
memory as resident set, start time from the kernel's start ticks, network from the processes'
network namespace (left out when it is the host's). A bound model with no process is Pending until
one was seen, and Failed once its processes are gone.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.collectors.models import samples_of
from agent.model import EventView, ModelView
from agent.runtime.procfs import (
    CLK_TCK,
    DEAD_STATES,
    HOST_NETNS,
    ProcessMatcher,
    ProcStat,
    boot_time_ns,
    find_processes,
    net_dev,
    net_totals,
    netns_inode,
    read_stat,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.config import ProcessBinding
    from agent.model import Sample

MB = 2**20


@dataclass(frozen=True, slots=True)
class _Reading:
    at: float
    pids: tuple[int, ...]
    cpu_ticks: int
    rss_bytes: int
    start_ns: int
    rx_bytes: int | None
    tx_bytes: int | None


def matcher_of(binding: ProcessBinding) -> ProcessMatcher:
    return ProcessMatcher(
        name=binding.name,
        cmdline=binding.cmdline,
        pidfile=binding.pidfile,
        systemd_unit=binding.systemd_unit,
    )


def _pidfile_stat(pidfile: Path) -> list[ProcStat]:
    """The process a pid file names, read once (`find_processes` would read its stat twice)."""
    try:
        fd = os.open(pidfile, os.O_RDONLY)
    except OSError:
        return []
    try:
        text = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    if not text.isdigit() or int(text) == 0:
        return []
    stat = read_stat(int(text))
    return [] if stat is None or stat.state in DEAD_STATES else [stat]


def read_processes(matcher: ProcessMatcher, boot_ns: int) -> _Reading | None:
    if matcher.pidfile is not None:
        stats = _pidfile_stat(matcher.pidfile)
    else:
        pids = sorted(find_processes(matcher))
        stats = [s for s in (read_stat(pid) for pid in pids) if s is not None]
    if not stats:
        return None
    rx = tx = None
    first = stats[0].pid
    if netns_inode(first) not in (HOST_NETNS, None) and (counters := net_dev(first)) is not None:
        total = net_totals(counters)
        rx, tx = total.rx_bytes, total.tx_bytes
    return _Reading(
        at=time.monotonic(),
        pids=tuple(s.pid for s in stats),
        cpu_ticks=sum(s.utime_ticks + s.stime_ticks for s in stats),
        rss_bytes=sum(s.rss_bytes for s in stats),
        start_ns=boot_ns + min(s.start_ticks for s in stats) * 1_000_000_000 // CLK_TCK,
        rx_bytes=rx,
        tx_bytes=tx,
    )


class ProcessCollector:
    def __init__(
        self, node: str, bindings: Sequence[ProcessBinding], node_memory_bytes: int
    ) -> None:
        self.views: dict[str, ModelView] = {}
        self._node = node
        self._matchers = {b.model: matcher_of(b) for b in bindings}
        self._node_memory = node_memory_bytes
        self._boot_ns = boot_time_ns()
        self._previous: dict[str, _Reading] = {}
        self._seen: set[str] = set()
        self._errors: dict[str, int] = {}
        self._events: dict[str, list[EventView]] = {}

    def _read_all(self) -> dict[str, _Reading | None]:
        return {model: read_processes(m, self._boot_ns) for model, m in self._matchers.items()}

    def _view(self, model: str, reading: _Reading | None) -> ModelView:
        before = self._previous.get(model)
        if reading is None:
            self._previous.pop(model, None)
            if model in self._seen:
                if before is not None:
                    self._errors[model] = self._errors.get(model, 0) + 1
                    self._note(model, "exited", "the model's processes are gone", "warning")
                return self._base(model, "Failed", "process exited")
            return self._base(model, "Pending", "no process found yet")
        if model not in self._seen or (before is not None and before.start_ns != reading.start_ns):
            self._note(model, "start", f"process started (pids {list(reading.pids)})", "info")
        self._seen.add(model)
        self._previous[model] = reading
        same = before is not None and before.start_ns == reading.start_ns
        elapsed = reading.at - before.at if same and before is not None else 0.0

        def rate(now: int | None, then: int | None, scale: float) -> float | None:
            if now is None or then is None or elapsed <= 0:
                return None
            return max(0, now - then) / elapsed / scale

        previous = before if same else None
        return self._base(
            model,
            "Running",
            "running",
            started_ns=reading.start_ns,
            created_ns=reading.start_ns,
            ready=True,
            cpu_percent=rate(
                reading.cpu_ticks, previous.cpu_ticks if previous else None, CLK_TCK / 100
            ),
            memory_mb=reading.rss_bytes / MB,
            memory_percent=reading.rss_bytes / self._node_memory * 100,
            network_rx_mbps=rate(reading.rx_bytes, previous.rx_bytes if previous else None, MB),
            network_tx_mbps=rate(reading.tx_bytes, previous.tx_bytes if previous else None, MB),
            pids=len(reading.pids),
        )

    def _note(self, model: str, kind: str, message: str, severity: str) -> None:
        events = self._events.setdefault(model, [])
        events.append(EventView(kind, time.time_ns(), message, severity))
        del events[:-10]

    def _base(self, model: str, phase: str, reason: str, **measured: Any) -> ModelView:
        """The model's view, built once (a `replace` on top would cost a second build)."""
        events = tuple(self._events.get(model, ()))
        errors = [e for e in events if e.severity != "info"]
        return ModelView(
            name=model,
            node=self._node,
            phase=phase,
            reason=reason,
            source="process",
            error_count=self._errors.get(model, 0),
            last_error=errors[-1].message if errors else None,
            events=events,
            **measured,
        )

    async def collect(self) -> Sequence[Sample]:
        readings = await asyncio.to_thread(self._read_all)
        self.views = {model: self._view(model, r) for model, r in readings.items()}
        return samples_of(self.views.values())
