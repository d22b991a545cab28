"""cgroup path resolution and accounting reads against synthetic v1, v2 and hybrid trees.

Each tree is a fake /proc (the process's `cgroup` file and `self/mountinfo`) and a fake cgroup
mount area; mountinfo names the real-world mount points under /sys/fs/cgroup, which the readers'
`root` argument rebases into tmp_path. File contents are copied from real kernels (6.x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.runtime.cgroups import (
    V1_UNLIMITED,
    CgroupPaths,
    cgroup_mounts,
    cgroup_paths,
    read_cgroup,
)

PID = 4242

ROOTFS_LINES = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
"""

# systemd's hybrid layout (Debian 10/11 default): cpu and cpuacct co-mounted, v2 at unified/.
HYBRID_MOUNTINFO = (
    ROOTFS_LINES
    + """\
31 24 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:3 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:5 - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,blkio
"""  # noqa: E501 - mountinfo lines, verbatim
)
CONTAINER = "/libpod_parent/libpod-6f2c"
HYBRID_CGROUP = f"""\
12:pids:{CONTAINER}
8:blkio:{CONTAINER}
5:memory:{CONTAINER}
3:cpu,cpuacct:{CONTAINER}
1:name=systemd:{CONTAINER}
0::{CONTAINER}
"""

# This project's CI machines: every v1 controller on its own mount, no optional fields.
SEPARATE_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

V2_MOUNTINFO = (
    ROOTFS_LINES
    + """\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""  # noqa: E501 - mountinfo lines, verbatim
)
SERVICE = "/system.slice/piccolo-model.service"

V1_CPU_STAT = """\
nr_periods 150
nr_throttled 40
throttled_time 2500000000
nr_bursts 0
burst_time 0
"""
V1_MEMORY_STAT = """\
cache 4194304
rss 8388608
rss_huge 0
shmem 0
mapped_file 1048576
inactive_anon 8388608
active_anon 0
inactive_file 3145728
active_file 1048576
unevictable 0
hierarchical_memory_limit 16777216
hierarchical_memsw_limit 9223372036854771712
total_cache 4194304
total_rss 8388608
total_inactive_anon 8388608
total_active_anon 0
total_inactive_file 3145728
total_active_file 1048576
total_unevictable 0
"""
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
# The v2 directory of a v1-controlled cgroup on a hybrid node: base usage only, no throttling.
HYBRID_V2_CPU_STAT = "usage_usec 999\nuser_usec 600\nsystem_usec 399\nnice_usec 0\n"
CPU_PRESSURE = (
    "some avg10=1.50 avg60=0.75 avg300=0.20 total=123456\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)
MEMORY_PRESSURE = (
    "some avg10=0.40 avg60=0.63 avg300=0.72 total=17397271\n"
    "full avg10=0.09 avg60=0.47 avg300=0.53 total=13501815\n"
)
IO_PRESSURE = (
    "some avg10=2.25 avg60=1.00 avg300=0.50 total=998877\n"
    "full avg10=2.00 avg60=0.90 avg300=0.45 total=887766\n"
)

V2_CPU_STAT = """\
usage_usec 5000000
user_usec 4000000
system_usec 1000000
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 300
nr_throttled 25
throttled_usec 750000
nr_bursts 0
burst_usec 0
"""
V2_MEMORY_STAT = """\
anon 10485760
file 6291456
kernel 1048576
kernel_stack 65536
sock 0
shmem 0
file_mapped 2097152
inactive_anon 10485760
active_anon 0
inactive_file 4194304
active_file 2097152
unevictable 0
"""
V2_MEMORY_EVENTS = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"


@dataclass
class FakeNode:
    """A fake /proc and cgroup mount area under tmp_path."""

    proc: Path
    cgroup: Path

    def mountinfo(self, text: str) -> None:
        write(self.proc / "self" / "mountinfo", text)

    def process(self, pid: int, membership: str) -> None:
        write(self.proc / str(pid) / "cgroup", membership)

    def files(self, directory: str, contents: dict[str, str]) -> Path:
        """Write controller files into `cgroup/<directory>`; returns that directory."""
        path = self.cgroup / directory.lstrip("/")
        for name, text in contents.items():
            write(path / name, text)
        return path

    def paths(self, pid: int = PID) -> CgroupPaths:
        paths = cgroup_paths(pid, proc=self.proc, root=self.cgroup)
        assert paths is not None
        return paths


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(proc=tmp_path / "proc", cgroup=tmp_path / "cgroup")


def hybrid_container(node: FakeNode) -> CgroupPaths:
    node.mountinfo(HYBRID_MOUNTINFO)
    node.process(PID, HYBRID_CGROUP)
    node.files(
        f"cpu,cpuacct{CONTAINER}",
        {"cpuacct.usage": "123456789\n", "cpu.stat": V1_CPU_STAT},
    )
    node.files(
        f"memory{CONTAINER}",
        {
            "memory.usage_in_bytes": "13631488\n",
            "memory.stat": V1_MEMORY_STAT,
            "memory.max_usage_in_bytes": "16248832\n",
            "memory.limit_in_bytes": "16777216\n",
            "memory.oom_control": V1_OOM_CONTROL,
        },
    )
    node.files(f"pids{CONTAINER}", {"pids.current": "3\n"})
    node.files(
        f"unified{CONTAINER}",
        {
            "cpu.stat": HYBRID_V2_CPU_STAT,
            "cpu.pressure": CPU_PRESSURE,
            "memory.pressure": MEMORY_PRESSURE,
            "io.pressure": IO_PRESSURE,
        },
    )
    return node.paths()


def test_hybrid_paths_come_from_mountinfo_with_cpu_and_cpuacct_comounted(node: FakeNode) -> None:
    paths = hybrid_container(node)

    comounted = node.cgroup / "cpu,cpuacct" / "libpod_parent" / "libpod-6f2c"
    assert paths == CgroupPaths(
        cpu=comounted,
        cpuacct=comounted,
        memory=node.cgroup / "memory" / "libpod_parent" / "libpod-6f2c",
        pids=node.cgroup / "pids" / "libpod_parent" / "libpod-6f2c",
        unified=node.cgroup / "unified" / "libpod_parent" / "libpod-6f2c",
    )


def test_hybrid_reads_the_v1_controllers_and_psi_from_the_v2_directory(node: FakeNode) -> None:
    stats = read_cgroup(hybrid_container(node))

    # v1 cpuacct, not the v2 base counter (999 µs), is the accounting controller here.
    assert stats.cpu_usage_ns == 123456789
    assert (stats.nr_periods, stats.nr_throttled, stats.throttled_ns) == (150, 40, 2500000000)
    assert stats.memory_bytes == 13631488
    assert stats.memory_working_set_bytes == 13631488 - 3145728
    assert stats.memory_peak_bytes == 16248832
    assert stats.memory_limit_bytes == 16 * 2**20
    assert stats.oom_kills == 2
    assert stats.pids == 3
    assert stats.psi["cpu_some_avg10"] == 1.5
    assert stats.psi["cpu_some_total_us"] == 123456
    assert stats.psi["memory_some_avg60"] == 0.63
    assert stats.psi["memory_full_avg10"] == 0.09
    assert stats.psi["io_some_avg10"] == 2.25
    assert stats.psi["io_full_avg300"] == 0.45
    assert len(stats.psi) == 3 * 2 * 4


def test_separately_mounted_cpu_and_cpuacct_resolve_to_their_own_mounts(node: FakeNode) -> None:
    node.mountinfo(SEPARATE_MOUNTINFO)
    node.process(
        PID,
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/afd4\n2:cpuacct:/\n1:cpu:/\n0::/\n",
    )

    paths = node.paths()

    assert paths == CgroupPaths(
        cpu=node.cgroup / "cpu",
        cpuacct=node.cgroup / "cpuacct",
        memory=node.cgroup / "memory" / "process_api" / "afd4",
        pids=node.cgroup / "pids",
        unified=node.cgroup / "unified",
    )


def test_v2_reads_everything_from_the_unified_directory(node: FakeNode) -> None:
    node.mountinfo(V2_MOUNTINFO)
    node.process(PID, f"0::{SERVICE}\n")
    directory = node.files(
        SERVICE,
        {
            "cpu.stat": V2_CPU_STAT,
            "memory.current": "16777216\n",
            "memory.stat": V2_MEMORY_STAT,
            "memory.peak": "20971520\n",
            "memory.max": "max\n",
            "memory.events": V2_MEMORY_EVENTS,
            "pids.current": "7\n",
            "cpu.pressure": CPU_PRESSURE,
            "memory.pressure": MEMORY_PRESSURE,
            "io.pressure": IO_PRESSURE,
        },
    )

    paths = node.paths()
    stats = read_cgroup(paths)

    assert paths == CgroupPaths(cpu=None, cpuacct=None, memory=None, pids=None, unified=directory)
    assert stats.cpu_usage_ns == 5_000_000_000
    assert (stats.nr_periods, stats.nr_throttled, stats.throttled_ns) == (300, 25, 750_000_000)
    assert stats.memory_bytes == 16777216
    assert stats.memory_working_set_bytes == 16777216 - 4194304
    assert stats.memory_peak_bytes == 20971520
    assert stats.memory_limit_bytes is None
    assert stats.oom_kills == 1
    assert stats.pids == 7
    assert stats.psi["io_some_avg10"] == 2.25


def test_v2_limit_is_read_and_a_kernel_without_memory_peak_gives_none(node: FakeNode) -> None:
    node.mountinfo(V2_MOUNTINFO)
    node.process(PID, f"0::{SERVICE}\n")
    node.files(
        SERVICE,
        {"memory.current": "1048576\n", "memory.max": "16777216\n", "memory.stat": V2_MEMORY_STAT},
    )

    stats = read_cgroup(node.paths())

    assert stats.memory_limit_bytes == 16777216
    assert stats.memory_peak_bytes is None
    # More inactive file cache than usage (the counters are read at different moments): clamp.
    assert stats.memory_working_set_bytes == 0


def test_v2_without_the_cpu_controller_has_usage_but_no_throttling(node: FakeNode) -> None:
    directory = node.files("unified/app", {"cpu.stat": HYBRID_V2_CPU_STAT})

    stats = read_cgroup(
        CgroupPaths(cpu=None, cpuacct=None, memory=None, pids=None, unified=directory)
    )

    assert stats.cpu_usage_ns == 999_000
    assert (stats.nr_periods, stats.nr_throttled, stats.throttled_ns) == (None, None, None)


def test_v1_unlimited_memory_reads_as_no_limit(node: FakeNode) -> None:
    # The value a 4 KiB-page x86-64 kernel shows for "no limit" (LONG_MAX rounded down to a page).
    directory = node.files(
        "memory/free",
        {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "4096\n"},
    )

    stats = read_cgroup(
        CgroupPaths(cpu=None, cpuacct=None, memory=directory, pids=None, unified=None)
    )

    assert V1_UNLIMITED <= 9223372036854771712
    assert stats.memory_limit_bytes is None
    assert stats.memory_bytes == 4096
    assert stats.memory_working_set_bytes is None  # no memory.stat to subtract from


def test_legacy_v1_without_a_v2_mount_has_no_unified_directory_and_no_psi(
    node: FakeNode,
) -> None:
    node.mountinfo(
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    node.process(PID, "3:memory:/app\n2:cpu,cpuacct:/app\n0::/\n")
    node.files("cpu,cpuacct/app", {"cpuacct.usage": "42\n"})

    paths = node.paths()
    stats = read_cgroup(paths)

    assert paths.unified is None
    assert paths.pids is None
    assert stats.cpu_usage_ns == 42
    assert stats.pids is None
    assert stats.psi == {}


def test_mounts_elsewhere_and_bind_mounted_subtrees_resolve(node: FakeNode, tmp_path: Path) -> None:
    # A hierarchy mounted outside /sys/fs/cgroup, under a name with a space (octal-escaped in
    # mountinfo), and a memory hierarchy of which only the /docker subtree is bind-mounted.
    elsewhere = tmp_path / "cgroups here"
    escaped = str(elsewhere).replace(" ", "\\040")
    node.mountinfo(
        f"40 22 0:29 / {escaped}/cpu rw - cgroup cgroup rw,cpuacct,cpu\n"
        f"41 22 0:32 /docker {escaped}/memory rw - cgroup cgroup rw,memory\n"
    )
    node.process(PID, "3:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    node.process(PID + 1, "3:memory:/other/abc\n2:cpu,cpuacct:/docker/abc\n")

    inside = node.paths(PID)
    outside = node.paths(PID + 1)

    assert inside.cpu == elsewhere / "cpu" / "docker" / "abc"
    assert inside.memory == elsewhere / "memory" / "abc"
    assert outside.memory is None  # not visible through this mount
    assert [(mount.path, mount.root) for mount in cgroup_mounts(proc=node.proc)] == [
        (elsewhere / "cpu", "/"),
        (elsewhere / "memory", "/docker"),
    ]


def test_a_process_that_is_gone_has_no_paths(node: FakeNode) -> None:
    node.mountinfo(HYBRID_MOUNTINFO)

    assert cgroup_paths(PID, proc=node.proc, root=node.cgroup) is None


def test_a_vanished_cgroup_reads_as_nothing_without_raising(tmp_path: Path) -> None:
    gone = tmp_path / "removed"

    stats = read_cgroup(CgroupPaths(cpu=gone, cpuacct=gone, memory=gone, pids=gone, unified=gone))

    assert stats.cpu_usage_ns is None
    assert stats.nr_throttled is None
    assert stats.memory_bytes is None
    assert stats.memory_limit_bytes is None
    assert stats.oom_kills is None
    assert stats.pids is None
    assert stats.psi == {}


def test_mount_options_name_the_v1_controllers(node: FakeNode) -> None:
    node.mountinfo(HYBRID_MOUNTINFO)

    mounts = {mount.path.name: mount for mount in cgroup_mounts(proc=node.proc, root=node.cgroup)}

    assert set(mounts) == {"unified", "systemd", "cpu,cpuacct", "memory", "pids", "blkio"}
    assert mounts["unified"].version == 2
    assert {"cpu", "cpuacct"} <= mounts["cpu,cpuacct"].options
    assert "name=systemd" in mounts["systemd"].options
    assert all(mount.version == 1 for name, mount in mounts.items() if name != "unified")
