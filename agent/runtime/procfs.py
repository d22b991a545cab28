"""Readers of /proc: per-process CPU and memory, command lines, network counters, process lookup.

`read_stat` is the collectors' hot path, run for every watched process every interval: one open
and read each of `/proc/<pid>/stat` and `/proc/<pid>/statm`, a bare minimum of Python around them.
stat has an rss field too, but the kernel fills it from per-CPU batched counters that lag by up to
32 pages per CPU and counter (27 pages off for an idle `sleep` on kernel 6.18); statm (like
`status`) sums them exactly and is what psutil reports, so rss comes from statm.
`bench/readers.py` measures the cost beside psutil and the bare reads.

Everything here is synchronous; the collectors call it through `asyncio.to_thread`. A process can
exit between any two reads: readers of one process return `None` then, never raise.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.runtime.cgroups import CGROUP_ROOT, PROC, CgroupMount, cgroup_mounts
from agent.runtime.openfiles import OpenFiles

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

# Exited but not yet reaped (Z), or being torn down (X): such a process has no resources left.
DEAD_STATES = frozenset({"Z", "X", "x"})
# Characters systemd allows in unit names; anything else (a "/" above all) is not a unit.
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+")
_GONE = (FileNotFoundError, ProcessLookupError)


def boot_time_ns() -> int:
    """Wall-clock time of boot in ns since the epoch; `start_ticks` count from it.

    Derived the way the kernel derives `btime` in /proc/stat (wall clock minus CLOCK_BOOTTIME), but
    to the nanosecond; like `btime` it moves when the wall clock is stepped.
    """
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """A process's /proc/<pid>/stat line (and resident size from statm), in useful units.

    `utime_ticks`/`stime_ticks` are CPU time in clock ticks (divide by `CLK_TCK`); `start_ticks` is
    the start time in ticks after boot (`boot_time_ns() + start_ticks * 1e9 / CLK_TCK` is the wall
    clock start). `rss_bytes` is statm's resident, psutil's `memory_info().rss` (anonymous + file +
    shmem pages); both memory figures are 0 for kernel threads and zombies.
    """

    pid: int
    comm: str
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    start_ticks: int
    num_threads: int
    rss_bytes: int
    vsize_bytes: int


@dataclass(frozen=True, slots=True)
class NetCounters:
    """Traffic counters as the network namespace sees them: rx is what it received."""

    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0


@dataclass(frozen=True, slots=True)
class ProcessMatcher:
    """How a model that is not a container finds its processes; exactly one field is set.

    - `name`: the kernel's process name (comm), or the basename of argv[0] (comm is cut to 15
      characters, and some programs rename their main thread).
    - `cmdline`: a regular expression searched in the arguments joined by single spaces.
    - `pidfile`: a file holding the main pid, as daemons write them.
    - `systemd_unit`: every process in the unit's cgroup ("foo" means "foo.service").
    """

    name: str | None = None
    cmdline: str | None = None
    pidfile: Path | None = None
    systemd_unit: str | None = None

    def __post_init__(self) -> None:
        chosen = [
            field
            for field in ("name", "cmdline", "pidfile", "systemd_unit")
            if getattr(self, field) is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "a process matcher needs exactly one of name, cmdline, pidfile, systemd_unit; "
                f"got {', '.join(chosen) or 'none'}"
            )
        if self.name == "":
            raise ValueError("a process name cannot be empty")
        if self.cmdline is not None:
            try:
                re.compile(self.cmdline)
            except re.error as error:
                message = f"invalid cmdline regular expression {self.cmdline!r}: {error}"
                raise ValueError(message) from error
        if self.systemd_unit is not None and (
            not _UNIT_NAME.fullmatch(self.systemd_unit) or self.systemd_unit.startswith(".")
        ):
            raise ValueError(f"invalid systemd unit name {self.systemd_unit!r}")


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """Process `pid`'s /proc/<pid>/stat and statm; `None` if there is no such process (any more)."""
    prefix = f"{proc}/{pid}/"
    try:
        # stat is at most about 1 KiB: 52 numbers and a comm of at most 64 bytes; statm 7 numbers.
        stat = _read_small(prefix + "stat")
        statm = _read_small(prefix + "statm")
    except _GONE:
        return None
    return parse_stat(pid, stat, statm)


def parse_stat(pid: int, stat: bytes, statm: bytes) -> ProcStat | None:
    """A ProcStat from the contents of /proc/<pid>/stat and statm; `None` if they are cut short."""
    # comm is "(...)" and may itself hold spaces and parentheses: it ends at the last ")".
    head, _, tail = stat.rpartition(b")")
    if not head or not statm:
        return None
    # Only the first 23 fields are wanted; positional arguments because this runs for every process
    # every interval, and keywords cost a frozen dataclass about twice as much to build.
    fields = tail.split(None, 22)
    return ProcStat(
        pid,
        head[head.find(b"(") + 1 :].decode(errors="surrogateescape"),  # comm
        fields[0].decode(),  # state
        int(fields[1]),  # ppid
        int(fields[11]),  # utime
        int(fields[12]),  # stime
        int(fields[19]),  # starttime
        int(fields[17]),  # num_threads
        int(statm.split(None, 2)[1]) * PAGE_SIZE,  # resident, in pages
        int(fields[20]),  # vsize, in bytes (the exact total_vm, as statm's size)
    )


def read_cmdline(pid: int, proc: Path = PROC) -> list[str] | None:
    """Process `pid`'s arguments; `[]` for kernel threads and zombies, `None` if it is gone."""
    data = _read_bytes(proc / str(pid) / "cmdline")
    if data is None:
        return None
    if not data:
        return []
    return [os.fsdecode(argument) for argument in data.removesuffix(b"\0").split(b"\0")]


def net_dev(
    pid: int, proc: Path = PROC, files: OpenFiles | None = None
) -> dict[str, NetCounters] | None:
    """Per-interface counters of the network namespace process `pid` is in; `None` if it is gone.

    This is the namespace's own point of view: for a container, rx is traffic into the container.
    (Podman 4.3's stats API reports the host end of the veth, where the directions are swapped.)
    """
    data = (
        files.read(f"{proc}/{pid}/net/dev")
        if files is not None
        else _read_bytes(proc / str(pid) / "net" / "dev")
    )
    if data is None:
        return None
    counters: dict[str, NetCounters] = {}
    # Two header lines, then "  eth0: rx_bytes rx_packets errs drop fifo frame compressed
    # multicast tx_bytes tx_packets ...". Interface names cannot contain ":".
    for line in data.decode(errors="replace").splitlines()[2:]:
        name, _, numbers = line.partition(":")
        values = numbers.split()
        if len(values) < 10:
            continue
        counters[name.strip()] = NetCounters(
            rx_bytes=int(values[0]),
            rx_packets=int(values[1]),
            tx_bytes=int(values[8]),
            tx_packets=int(values[9]),
        )
    return counters


def net_totals(counters: Mapping[str, NetCounters]) -> NetCounters:
    """The sum over all interfaces but loopback, whose traffic never leaves the namespace."""
    rx_bytes = rx_packets = tx_bytes = tx_packets = 0
    for name, counter in counters.items():
        if name != "lo":
            rx_bytes += counter.rx_bytes
            rx_packets += counter.rx_packets
            tx_bytes += counter.tx_bytes
            tx_packets += counter.tx_packets
    return NetCounters(rx_bytes, rx_packets, tx_bytes, tx_packets)


def pids(proc: Path = PROC) -> list[int]:
    """The ids of all processes (thread group leaders; threads are not listed)."""
    # Names, not Path objects: this runs every interval over a few hundred entries.
    return [int(entry) for entry in os.listdir(proc) if entry.isdecimal()]  # noqa: PTH208


def find_processes(
    matcher: ProcessMatcher, proc: Path = PROC, *, cgroup_root: Path = CGROUP_ROOT
) -> list[int]:
    """The live processes `matcher` selects, in ascending pid order.

    - `name` and `cmdline` scan every process, reading all it needs afresh (a `ProcessScanner`
      with nothing known yet): a collector that runs them every interval keeps a scanner.
    - `pidfile` gives the pid it names while that process is alive; a daemon that died without
      removing its file can leave a pid the kernel later reuses, which this cannot tell apart.
    - `systemd_unit` reads `cgroup.procs` of the unit's cgroup and of those below it (a unit that
      delegates, such as a container runtime, has its processes in sub-cgroups). The cgroup is
      found as `<slice>/<unit>` in the cgroup mounts (`cgroup_root` as for `cgroup_mounts`): the
      v2 tree first, then v1 `name=systemd`, then the v1 controllers.

    Processes that have exited but are not yet reaped (zombies) are left out.
    """
    if matcher.name is not None or matcher.cmdline is not None:
        return ProcessScanner(proc).find([matcher])[matcher]
    if matcher.pidfile is not None:
        return _by_pidfile(matcher.pidfile, proc)
    if matcher.systemd_unit is not None:
        return sorted(_by_unit(matcher.systemd_unit, proc, cgroup_root))
    raise AssertionError("ProcessMatcher admits exactly one field")


RECHECK_S = 10.0
"""How long the scanner trusts what it read of a process (its name and command line)."""


@dataclass(slots=True)
class _Seen:
    """What the scanner knows of one process."""

    comm: str
    checked_at: float
    arguments: list[str] | None = None
    """None until a matcher needed them."""
    joined: str = ""
    program: str | None = None
    """The basename of argv[0]."""
    start_ticks: int | None = None
    """Known once the process matched: a different start time means a new process."""


def _hits(
    entry: _Seen,
    by_name: list[ProcessMatcher],
    by_cmdline: list[tuple[ProcessMatcher, re.Pattern[str]]],
) -> list[ProcessMatcher]:
    hits = [m for m in by_name if m.name in (entry.comm, entry.program)]
    if by_cmdline and entry.joined:
        hits.extend(m for m, pattern in by_cmdline if pattern.search(entry.joined))
    return hits


class ProcessScanner:
    """Finds the processes of name and cmdline matchers with one pass over /proc per call.

    `find_processes` reads files of every process for each matcher; a collector whose bindings
    scan the node every interval would read a few thousand files a second. The scanner lists
    /proc at every call and reads the name (comm) and, where a matcher needs it, the command line
    of a process it has not seen before; what it read of a known process it trusts for
    `recheck_s` (the rechecks are spread over that time, by pid). So:

    - a new process is matched at the next call;
    - a known process that execs another program, or rewrites its arguments, is matched (or no
      longer matched) within `recheck_s`;
    - a matching process is checked at every call: a zombie is left out, and a process that
      reuses the pid of one that matched (another start time) is read afresh.

    Matchers by pid file or systemd unit are not scanning matchers: they go to `find_processes`.
    """

    def __init__(
        self,
        proc: Path = PROC,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
        cgroup_root: Path = CGROUP_ROOT,
    ) -> None:
        self._proc = proc
        self._recheck_s = recheck_s
        self._clock = clock
        self._cgroup_root = cgroup_root
        self._seen: dict[int, _Seen] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}

    def find(self, matchers: Iterable[ProcessMatcher]) -> dict[ProcessMatcher, list[int]]:
        """The live processes of each matcher, in ascending pid order, as `find_processes`."""
        found: dict[ProcessMatcher, list[int]] = {}
        scanning: list[ProcessMatcher] = []
        for matcher in matchers:
            if matcher.name is None and matcher.cmdline is None:
                found[matcher] = find_processes(matcher, self._proc, cgroup_root=self._cgroup_root)
            else:
                found[matcher] = []
                scanning.append(matcher)
        if scanning:
            self._scan(scanning, found)
        else:
            self._seen.clear()
        return found

    def _pattern(self, text: str) -> re.Pattern[str]:
        pattern = self._patterns.get(text)
        if pattern is None:
            pattern = self._patterns[text] = re.compile(text)
        return pattern

    def _look(self, pid: int, now: float, *, arguments: bool, first: bool) -> _Seen | None:
        """A fresh look at process `pid` (its comm, and its arguments if wanted); None if gone."""
        try:
            comm = os.fsdecode(_read_small(f"{self._proc}/{pid}/comm").removesuffix(b"\n"))
        except FileNotFoundError:  # gone, or a procfs without comm files: stat has the name
            stat = read_stat(pid, self._proc)
            if stat is None:
                return None
            comm = stat.comm
        except OSError:
            return None
        # First looks are spread over the recheck time, so that rechecks do not come in bursts.
        entry = _Seen(comm, now - (pid % 16) * self._recheck_s / 16 if first else now)
        if arguments:
            self._arguments(pid, entry)
        return entry

    def _arguments(self, pid: int, entry: _Seen) -> list[str]:
        if entry.arguments is None:
            entry.arguments = read_cmdline(pid, self._proc) or []
            entry.joined = " ".join(entry.arguments)
            entry.program = (
                os.path.basename(entry.arguments[0]) if entry.arguments else None  # noqa: PTH119
            )
        return entry.arguments

    def _scan(self, matchers: list[ProcessMatcher], found: dict[ProcessMatcher, list[int]]) -> None:
        names = {m.name for m in matchers if m.name is not None}
        by_name = [m for m in matchers if m.name is not None]
        by_cmdline = [(m, self._pattern(m.cmdline)) for m in matchers if m.cmdline is not None]
        now = self._clock()
        seen: dict[int, _Seen] = {}
        for pid in pids(self._proc):
            entry = self._seen.get(pid)
            if entry is None or now - entry.checked_at > self._recheck_s:
                entry = self._look(pid, now, arguments=False, first=entry is None)
                if entry is None:
                    continue  # gone
            if by_cmdline or not names <= {entry.comm}:
                self._arguments(pid, entry)
            hits = _hits(entry, by_name, by_cmdline)
            if hits:
                # A zombie keeps its comm and its arguments are cached: ask its state, and its
                # start time, which tells a new process that got the same pid.
                stat = read_stat(pid, self._proc)
                if stat is None or stat.state in DEAD_STATES:
                    continue
                if entry.start_ticks not in (None, stat.start_ticks):
                    seen[pid] = self._look(pid, now, arguments=True, first=False) or entry
                    continue  # matched at the next call, if it does
                entry.start_ticks = stat.start_ticks
                for matcher in hits:
                    found[matcher].append(pid)
            seen[pid] = entry
        self._seen = seen
        for matcher in matchers:
            found[matcher].sort()


def _by_pidfile(pidfile: Path, proc: Path) -> list[int]:
    try:
        text = pidfile.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return []
    # An empty or half-written file reads as "no process yet", like a missing one.
    if not text.isdecimal() or int(text) == 0:
        return []
    stat = read_stat(int(text), proc)
    return [] if stat is None or stat.state in DEAD_STATES else [stat.pid]


def _by_unit(unit: str, proc: Path, cgroup_root: Path) -> Iterable[int]:
    if "." not in unit:
        unit += ".service"

    def preference(mount: CgroupMount) -> int:
        if mount.version == 2:
            return 0
        return 1 if "name=systemd" in mount.options else 2

    for mount in sorted(cgroup_mounts(proc=proc, root=cgroup_root), key=preference):
        directory = _unit_cgroup(mount.path, unit)
        if directory is not None:
            return _cgroup_members(directory, proc)
    return []


def _unit_cgroup(mount: Path, unit: str) -> Path | None:
    """`<mount>/<slice>/.../<unit>`, searching slices breadth first (system.slice comes early).

    systemd nests slices by name ("a-b.slice" lives in "a.slice"), and units live in slices, so
    only directories named *.slice need to be searched.
    """
    level = [mount]
    while level:
        below: list[Path] = []
        for directory in level:
            candidate = directory / unit
            if candidate.is_dir():
                return candidate
            try:
                with os.scandir(directory) as entries:
                    below.extend(
                        Path(entry.path)
                        for entry in entries
                        if entry.name.endswith(".slice") and entry.is_dir(follow_symlinks=False)
                    )
            except OSError:
                continue
        level = below
    return None


def _cgroup_members(directory: Path, proc: Path) -> list[int]:
    members: list[int] = []
    for current, _, _ in os.walk(directory):
        data = _read_bytes(Path(current) / "cgroup.procs")
        members.extend(int(line) for line in (data or b"").split())
    live = []
    for pid in members:
        stat = read_stat(pid, proc)
        if stat is not None and stat.state not in DEAD_STATES:
            live.append(pid)
    return live


def _read_small(path: str) -> bytes:
    """One read of a file that fits in it; raises if it (or its process) is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _read_bytes(path: Path) -> bytes | None:
    """The whole file, or `None` if it (or the process it describes) does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except _GONE:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as error:
        # ESRCH: the process exited between open and read; ENODEV: its cgroup was removed.
        if error.errno in {errno.ESRCH, errno.ENODEV, errno.ENOENT}:
            return None
        raise
    finally:
        os.close(fd)
    return b"".join(chunks)


def netns_inode(pid: int | str) -> int | None:
    """The inode of the process's network namespace (`self` for the agent's); None if gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino  # noqa: PTH116 - a plain stat, hot path
    except OSError:
        return None


HOST_NETNS = netns_inode("self")
