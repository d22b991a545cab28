"""Where a process's cgroups are and what they account: cgroup v1, v2, and the hybrid of both.

Three layouts exist in the field, and a node tells which it has only through its mounts:

- **v2** (unified): one `cgroup2` mount, usually `/sys/fs/cgroup`; `/proc/<pid>/cgroup` has the
  single line `0::/path`.
- **v1** (legacy): one `cgroup` mount per hierarchy, each carrying one or more controllers
  (`cpu,cpuacct` are often mounted together); one line `N:controllers:/path` per hierarchy.
- **hybrid**: v1 hierarchies for the controllers plus a `cgroup2` tree beside them (systemd mounts
  it at `/sys/fs/cgroup/unified`) that carries no controllers, or few. Every process is in both.

`cgroup_paths` finds each hierarchy's mount point in `/proc/self/mountinfo` instead of assuming
`/sys/fs/cgroup/<name>`, so co-mounted, renamed and bind-mounted hierarchies resolve too.
`read_cgroup` then reads the accounting files, choosing per metric the hierarchy that actually
accounts it (see `read_cgroup`).

Everything here is synchronous and cheap (a few small files per cgroup); the collectors call it
through `asyncio.to_thread`. A cgroup can vanish between any two reads: that gives `None` values,
never an exception.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from agent.runtime.openfiles import OpenFiles

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# The kernel stores a v1 memory limit as a page count capped at PAGE_COUNTER_MAX (LONG_MAX / page
# size); "no limit" reads back as that cap times the page size: 9223372036854771712 with 4 KiB
# pages.
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
V1_UNLIMITED = (sys.maxsize // _PAGE_SIZE) * _PAGE_SIZE

PSI_RESOURCES = ("cpu", "memory", "io")

_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One mounted cgroup hierarchy, from a line of mountinfo.

    `root` is the hierarchy's path that is visible at `path`: "/" for an ordinary mount, deeper for
    a bind mount of a subtree. `options` are the superblock options; for v1 they name the
    hierarchy's controllers (`cpu`, `cpuacct`, `name=systemd`, ...) beside generic ones (`rw`).
    """

    path: Path
    root: str
    version: Literal[1, 2]
    options: frozenset[str]


@dataclass(frozen=True, slots=True)
class CgroupPaths:
    """Where one process's cgroups are, per controller.

    `cpu`, `cpuacct`, `memory` and `pids` are directories of v1 hierarchies (`None` where that
    controller is not mounted as v1, or the process's cgroup is outside the mounted part);
    `unified` is the process's directory in the v2 tree. Hybrid nodes have both kinds. The paths
    stay valid while the process stays in its cgroups: look them up once per process, not per
    sample.
    """

    cpu: Path | None
    cpuacct: Path | None
    memory: Path | None
    pids: Path | None
    unified: Path | None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """One reading of a cgroup's accounting; `None` where this kernel or layout has no such value.

    - `cpu_usage_ns`: CPU time of all tasks in the cgroup since it was created (v1
      `cpuacct.usage`, v2 `cpu.stat` `usage_usec` x 1000).
    - `nr_periods`, `nr_throttled`, `throttled_ns`: CFS bandwidth enforcement (`cpu.stat`); v1
      reports `throttled_time` in ns, v2 `throttled_usec`. They stay 0 without a CPU quota.
    - `memory_bytes`: v1 `memory.usage_in_bytes`, v2 `memory.current`. Both include page cache, so a
      process that reads files looks bigger than its heap.
    - `memory_working_set_bytes`: usage minus inactive file cache, as the kubelet and cAdvisor
      compute it (v1 `total_inactive_file`, v2 `inactive_file` from `memory.stat`): the memory
      that cannot be dropped cheaply, and the figure to compare with the limit.
    - `memory_peak_bytes`: v1 `memory.max_usage_in_bytes`; v2 `memory.peak` (kernel 5.19+).
    - `memory_limit_bytes`: `None` when unlimited (v1 reads back a near-2**63 value, v2 "max").
    - `oom_kills`: v1 `memory.oom_control` line `oom_kill` (kernel 4.13+); v2 `memory.events`
      `oom_kill`, which counts kills in descendant cgroups too.
    - `pids`: `pids.current` (the root cgroup has none).
    - `psi`: pressure from the v2 directory's `{cpu,memory,io}.pressure`, keyed
      `{resource}_{some|full}_{avg10|avg60|avg300}` (percent) and `{resource}_{some|full}_total_us`
      (cumulative stall time in microseconds). Empty where the kernel has no PSI.
    """

    cpu_usage_ns: int | None
    nr_periods: int | None
    nr_throttled: int | None
    throttled_ns: int | None
    memory_bytes: int | None
    memory_working_set_bytes: int | None
    memory_peak_bytes: int | None
    memory_limit_bytes: int | None
    oom_kills: int | None
    pids: int | None
    psi: Mapping[str, float]


def cgroup_mounts(*, proc: Path = PROC, root: Path = CGROUP_ROOT) -> list[CgroupMount]:
    """The cgroup hierarchies mounted in this process's mount namespace, in mountinfo order.

    Mount points under /sys/fs/cgroup are rebased onto `root`, so that a test (or a chroot) can
    present a cgroup tree elsewhere; the default `root` leaves every path as mountinfo states it.
    """
    mounts: list[CgroupMount] = []
    with (proc / "self" / "mountinfo").open(encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            fields = line.split()
            try:
                separator = fields.index("-", 6)
            except ValueError:
                continue
            fstype = fields[separator + 1]
            if fstype not in {"cgroup", "cgroup2"} or len(fields) < separator + 4:
                continue
            mounts.append(
                CgroupMount(
                    path=_rebase(_unescape(fields[4]), root),
                    root=_unescape(fields[3]),
                    version=2 if fstype == "cgroup2" else 1,
                    options=frozenset(fields[separator + 3].split(",")),
                )
            )
    return mounts


def cgroup_paths(pid: int, *, proc: Path = PROC, root: Path = CGROUP_ROOT) -> CgroupPaths | None:
    """The cgroup directories of process `pid`; `None` if the process is gone.

    Reads `/proc/<pid>/cgroup` and finds, in `/proc/self/mountinfo`, where each of its hierarchies
    is mounted (see `cgroup_mounts` for `root`). The directories are not checked for existence: a
    cgroup removed since gives `None` values from `read_cgroup`.
    """
    try:
        membership = (proc / str(pid) / "cgroup").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return None
    mounts = cgroup_mounts(proc=proc, root=root)
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hierarchy == "0" and not names:
            unified = _locate(path, (m for m in mounts if m.version == 2))
            continue
        controllers = frozenset(names.split(","))
        directory = _locate(
            path, (m for m in mounts if m.version == 1 and controllers <= m.options)
        )
        if directory is not None:
            v1.update(dict.fromkeys(controllers, directory))
    return CgroupPaths(
        cpu=v1.get("cpu"),
        cpuacct=v1.get("cpuacct"),
        memory=v1.get("memory"),
        pids=v1.get("pids"),
        unified=unified,
    )


def read_cgroup(
    paths: CgroupPaths, files: OpenFiles | None = None, *, psi: bool = True
) -> CgroupStats:
    """Read the accounting of the cgroups in `paths`; files that cannot be read give `None`.

    With `files`, the accounting files stay open there for the next reading (see
    `agent.runtime.openfiles`): a collector that samples a cgroup every interval passes one.
    `psi=False` leaves the pressure files unread (an empty `psi`).

    Which hierarchy is read, per metric: a controller mounted as v1 is the one that accounts and
    enforces for that process, so its v1 files win. On a hybrid node the v2 directory has a
    `cpu.stat` too, but without the cpu controller it holds only the base usage counters (no
    throttling lines), and a process the runtime placed in a v1 cgroup may still sit at the v2 root,
    whose `cpu.stat` is the whole machine's. v2 files are read for a controller only where it is not
    mounted as v1 (a pure v2 node), and for PSI, which exists only in v2.
    """
    unified_cpu = (
        _keyed(f"{paths.unified}/cpu.stat", files)
        if paths.unified is not None and (paths.cpu is None or paths.cpuacct is None)
        else {}
    )

    if paths.cpuacct is not None:
        cpu_usage_ns = _read_int(f"{paths.cpuacct}/cpuacct.usage", files)
    else:
        cpu_usage_ns = _scaled(unified_cpu.get("usage_usec"), 1000)

    if paths.cpu is not None:
        cpu_stat = _keyed(f"{paths.cpu}/cpu.stat", files)
        throttled_ns = cpu_stat.get("throttled_time")
    else:
        cpu_stat = unified_cpu
        throttled_ns = _scaled(cpu_stat.get("throttled_usec"), 1000)

    if paths.memory is not None:
        memory = _read_v1_memory(str(paths.memory), files)
    elif paths.unified is not None:
        memory = _read_v2_memory(str(paths.unified), files)
    else:
        memory = (None, None, None, None, None)
    usage, inactive_file, peak, limit, oom_kills = memory
    working_set = None if usage is None or inactive_file is None else max(usage - inactive_file, 0)

    pids_dir = paths.pids if paths.pids is not None else paths.unified
    return CgroupStats(
        cpu_usage_ns=cpu_usage_ns,
        nr_periods=cpu_stat.get("nr_periods"),
        nr_throttled=cpu_stat.get("nr_throttled"),
        throttled_ns=throttled_ns,
        memory_bytes=usage,
        memory_working_set_bytes=working_set,
        memory_peak_bytes=peak,
        memory_limit_bytes=limit,
        oom_kills=oom_kills,
        pids=_read_int(f"{pids_dir}/pids.current", files) if pids_dir is not None else None,
        psi=MappingProxyType(
            _read_psi(str(paths.unified), files) if psi and paths.unified is not None else {}
        ),
    )


_Memory = tuple[int | None, int | None, int | None, int | None, int | None]


def _read_v1_memory(directory: str, files: OpenFiles | None) -> _Memory:
    limit = _read_int(f"{directory}/memory.limit_in_bytes", files)
    return (
        _read_int(f"{directory}/memory.usage_in_bytes", files),
        # total_ is the hierarchical figure, matching usage_in_bytes, which includes descendants.
        _keyed(f"{directory}/memory.stat", files).get("total_inactive_file"),
        _read_int(f"{directory}/memory.max_usage_in_bytes", files),
        None if limit is None or limit >= V1_UNLIMITED else limit,
        _keyed(f"{directory}/memory.oom_control", files).get("oom_kill"),
    )


def _read_v2_memory(directory: str, files: OpenFiles | None) -> _Memory:
    return (
        _read_int(f"{directory}/memory.current", files),
        _keyed(f"{directory}/memory.stat", files).get("inactive_file"),
        _read_int(f"{directory}/memory.peak", files),
        _read_int(f"{directory}/memory.max", files),  # "max" (unlimited) gives None
        _keyed(f"{directory}/memory.events", files).get("oom_kill"),
    )


def _read_psi(directory: str, files: OpenFiles | None) -> dict[str, float]:
    psi: dict[str, float] = {}
    for resource in PSI_RESOURCES:
        # e.g. "some avg10=0.40 avg60=0.63 avg300=0.72 total=17397271"
        for line in (_read_text(f"{directory}/{resource}.pressure", files) or "").splitlines():
            kind, *fields = line.split() or [""]
            for field in fields:
                name, _, value = field.partition("=")
                key = "total_us" if name == "total" else name
                psi[f"{resource}_{kind}_{key}"] = float(value)
    return psi


def _read_text(path: str, files: OpenFiles | None = None) -> str | None:
    """The file's content, or `None` if it cannot be read.

    Absent files are the normal way a kernel or layout lacks a metric; ENODEV and ENOENT come from a
    cgroup removed under us, EOPNOTSUPP from PSI files on a kernel booted with psi=0.
    """
    if files is not None:
        data = files.read(path)
        return None if data is None else data.decode("ascii", errors="replace")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="replace")


def _read_int(path: str, files: OpenFiles | None = None) -> int | None:
    text = _read_text(path, files)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _keyed(path: str, files: OpenFiles | None = None) -> dict[str, int]:
    """A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`): `key value` per line."""
    text = _read_text(path, files)
    if not text:
        return {}
    # One split and a dict of pairs run in C: memory.stat has some 35 lines, read every interval.
    tokens = text.split()
    return {
        key: int(value)
        for key, value in zip(tokens[::2], tokens[1::2], strict=False)
        if value.isdigit()
    }


def _scaled(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def _locate(path: str, mounts: Iterable[CgroupMount]) -> Path | None:
    """The directory of cgroup `path` in the first of `mounts` whose mounted subtree contains it."""
    for mount in mounts:
        if mount.root == "/":
            relative = path.lstrip("/")
        elif path == mount.root or path.startswith(mount.root + "/"):
            relative = path[len(mount.root) :].lstrip("/")
        else:
            continue
        return mount.path / relative if relative else mount.path
    return None


def _rebase(mount_point: str, root: Path) -> Path:
    point = PurePosixPath(mount_point)
    if root == CGROUP_ROOT or not point.is_relative_to(CGROUP_ROOT):
        return Path(point)
    return root / point.relative_to(CGROUP_ROOT)


def _unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes of space, tab, newline and backslash (`\040` ...)."""
    return _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
