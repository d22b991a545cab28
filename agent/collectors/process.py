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
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.collectors.models import Memo, samples_of
from agent.model import EventView, ModelView
from agent.runtime.openfiles import OpenFiles
from agent.runtime.procfs import (
    CLK_TCK,
    DEAD_STATES,
    HOST_NETNS,
    ProcessMatcher,
    ProcessScanner,
    ProcStat,
    boot_time_ns,
    net_dev,
    net_totals,
    netns_inode,
    parse_stat,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from agent.config import ProcessBinding
    from agent.model import Sample

MB = 2**20


class _Reading(NamedTuple):
    at: float
    pids: tuple[int, ...]
    cpu_ticks: int
    rss_bytes: int
    start_ns: int
    rx_bytes: int | None
    tx_bytes: int | None
    host_netns: bool = False

    def same_as(self, other: _Reading) -> bool:
        """Every value equal (only the time differs): nothing ran, nothing moved."""
        return (
            self.cpu_ticks == other.cpu_ticks
            and self.rss_bytes == other.rss_bytes
            and self.start_ns == other.start_ns
            and self.pids == other.pids
            and self.rx_bytes == other.rx_bytes
            and self.tx_bytes == other.tx_bytes
        )


def matcher_of(binding: ProcessBinding) -> ProcessMatcher:
    return ProcessMatcher(
        name=binding.name,
        cmdline=binding.cmdline,
        pidfile=binding.pidfile,
        systemd_unit=binding.systemd_unit,
    )


PIDFILE_RECHECK_S = 10.0
"""While the process a pid file named lives, the file is read again only this often (a daemon
that starts a new main process before the old one exits is seen within this time)."""


def _read_pidfile(pidfile: Path) -> int | None:
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    # An empty or half-written file reads as "no process yet", like a missing one.
    return int(text) if text.isdigit() and int(text) != 0 else None


def _identical(stats: list[ProcStat], before: list[ProcStat]) -> bool:
    return len(stats) == len(before) and all(a is b for a, b in zip(stats, before, strict=True))


class ProcessReader:
    """Reads the processes of every binding; what it learnt stays for the next interval.

    The stat and statm files of watched processes stay open (`OpenFiles`), a pid file is read
    again only when its process is gone or every `PIDFILE_RECHECK_S`, a process's network
    namespace is looked up once per process (pid and start time), and the name and cmdline
    matchers share one pass over /proc (`ProcessScanner`).
    """

    def __init__(
        self,
        matchers: Mapping[str, ProcessMatcher],
        *,
        clock: Callable[[], float] = time.monotonic,
        files: OpenFiles | None = None,
    ) -> None:
        self._matchers = dict(matchers)
        self._clock = clock
        self._boot_ns = boot_time_ns()
        self._files = files if files is not None else OpenFiles()
        self._scanner = ProcessScanner(clock=clock)
        self._pidfiles: dict[str, tuple[int, float]] = {}
        """Model -> (pid the pid file named, when the file was read)."""
        self._netns: dict[int, tuple[int, int | None]] = {}
        """pid -> (start ticks, network namespace inode) of the processes read last time."""
        self._raw: dict[int, tuple[bytes, bytes, ProcStat]] = {}
        """pid -> its stat and statm as last read, and what they parse to."""
        self._last: dict[str, tuple[list[ProcStat], _Reading]] = {}

    def read_all(self) -> dict[str, _Reading | None]:
        now = self._clock()
        scanning = [m for m in self._matchers.values() if m.pidfile is None]
        found = self._scanner.find(scanning) if scanning else {}
        readings: dict[str, _Reading | None] = {}
        watched: dict[int, tuple[int, int | None]] = {}
        for model, matcher in self._matchers.items():
            if matcher.pidfile is not None:
                stats = self._pidfile_stats(model, matcher.pidfile, now)
            else:
                stats = self._live(found[matcher])
            last = self._last.get(model)
            if stats and last is not None and _identical(stats, last[0]):
                for stat in stats:  # the same processes, every file byte for byte as before
                    watched[stat.pid] = self._namespace(stat)
                reading: _Reading | None = last[1]._replace(at=self._clock())
            else:
                reading = self._reading(stats, watched) if stats else None
            readings[model] = reading
            if reading is None:
                self._last.pop(model, None)
            else:
                self._last[model] = (stats, reading)
        for pid in self._netns.keys() - watched.keys():
            self._files.forget(f"/proc/{pid}/stat")
            self._files.forget(f"/proc/{pid}/statm")
            self._raw.pop(pid, None)
        self._netns = watched
        return readings

    def close(self) -> None:
        self._files.close()

    def _stat(self, pid: int) -> ProcStat | None:
        """`read_stat` through the open files; unchanged contents give the same object back."""
        prefix = f"/proc/{pid}/"
        stat = self._files.read(prefix + "stat")
        statm = self._files.read(prefix + "statm") if stat else None
        if not stat or not statm:
            self._files.forget(prefix + "stat")
            self._files.forget(prefix + "statm")
            self._raw.pop(pid, None)
            return None
        known = self._raw.get(pid)
        if known is not None and known[0] == stat and known[1] == statm:
            return known[2]
        parsed = parse_stat(pid, stat, statm)
        if parsed is not None:
            self._raw[pid] = (stat, statm, parsed)
        return parsed

    def _live(self, pids: Sequence[int]) -> list[ProcStat]:
        stats = []
        for pid in pids:
            stat = self._stat(pid)
            if stat is not None and stat.state not in DEAD_STATES:
                stats.append(stat)
        return stats

    def _pidfile_stats(self, model: str, pidfile: Path, now: float) -> list[ProcStat]:
        known = self._pidfiles.get(model)
        if known is not None and now - known[1] < PIDFILE_RECHECK_S:
            stats = self._live((known[0],))
            if stats:
                return stats
        pid = _read_pidfile(pidfile)
        if pid is None:
            self._pidfiles.pop(model, None)
            return []
        self._pidfiles[model] = (pid, now)
        return self._live((pid,))

    def _namespace(self, stat: ProcStat) -> tuple[int, int | None]:
        """(start ticks, network namespace inode) of the process, looked up once per process."""
        known = self._netns.get(stat.pid)
        if known is None or known[0] != stat.start_ticks:
            known = (stat.start_ticks, netns_inode(stat.pid))
        return known

    def _reading(
        self, stats: list[ProcStat], watched: dict[int, tuple[int, int | None]]
    ) -> _Reading:
        for stat in stats:
            watched[stat.pid] = self._namespace(stat)
        rx = tx = None
        first = stats[0]
        namespace = watched[first.pid][1]
        if namespace not in (HOST_NETNS, None) and (counters := net_dev(first.pid)) is not None:
            total = net_totals(counters)
            rx, tx = total.rx_bytes, total.tx_bytes
        return _Reading(
            at=self._clock(),
            pids=tuple(s.pid for s in stats),
            cpu_ticks=sum(s.utime_ticks + s.stime_ticks for s in stats),
            rss_bytes=sum(s.rss_bytes for s in stats),
            start_ns=self._boot_ns + min(s.start_ticks for s in stats) * 1_000_000_000 // CLK_TCK,
            rx_bytes=rx,
            tx_bytes=tx,
            host_netns=namespace == HOST_NETNS,
        )


class ProcessCollector:
    def __init__(
        self, node: str, bindings: Sequence[ProcessBinding], node_memory_bytes: int
    ) -> None:
        self.views: dict[str, ModelView] = {}
        self._node = node
        self._matchers = {b.model: matcher_of(b) for b in bindings}
        self._node_memory = node_memory_bytes
        self._reader = ProcessReader(self._matchers)
        self._previous: dict[str, _Reading] = {}
        self._seen: set[str] = set()
        self._errors: dict[str, int] = {}
        self._events: dict[str, list[EventView]] = {}
        self._steady: dict[str, ModelView] = {}
        self._memo: Memo = {}
        """Model -> its view from a reading equal to the one before (all rates 0): an idle
        process's next equal reading gives this same view instead of building it again."""

    def _read_all(self) -> dict[str, _Reading | None]:
        return self._reader.read_all()

    def close(self) -> None:
        self._reader.close()

    def _view(self, model: str, reading: _Reading | None) -> ModelView:
        before = self._previous.get(model)
        if reading is None:
            self._previous.pop(model, None)
            self._steady.pop(model, None)
            if model in self._seen:
                if before is not None:
                    self._errors[model] = self._errors.get(model, 0) + 1
                    self._note(model, "exited", "the model's processes are gone", "warning")
                return self._base(model, "Failed", "process exited")
            return self._base(model, "Pending", "no process found yet")
        if before is not None and before.same_as(reading):
            steady = self._steady.get(model)
            self._previous[model] = reading
            if steady is not None:
                return steady  # nothing moved: rates stay 0, every value as it was
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
        view = self._base(
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
            host_network=reading.host_netns,
        )
        if before is not None and before.same_as(reading) and elapsed > 0:
            self._steady[model] = view
        else:
            self._steady.pop(model, None)
        return view

    def _note(self, model: str, kind: str, message: str, severity: str) -> None:
        self._steady.pop(model, None)
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
        return samples_of(self.views.values(), self._memo)
