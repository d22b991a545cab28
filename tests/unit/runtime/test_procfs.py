"""procfs readers and process matchers against a synthetic /proc (and cgroup tree) in tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from agent.runtime.procfs import (
    CLK_TCK,
    PAGE_SIZE,
    NetCounters,
    ProcessMatcher,
    ProcessScanner,
    ProcStat,
    boot_time_ns,
    find_processes,
    net_dev,
    net_totals,
    pids,
    read_cmdline,
    read_stat,
)

# A real /proc/<pid>/stat line of `sleep` (kernel 6.x), with placeholders for what tests vary.
STAT_LINE = (
    "{pid} ({comm}) {state} {ppid} 3550 28379 0 -1 4194304 134 0 0 0 {utime} {stime} 0 0 20 0 "
    "{threads} 0 {start} {vsize} {rss} 18446744073709551615 94720122449920 94720122467849 "
    "140729507398480 0 0 0 0 6 0 0 0 0 17 1 0 0 0 0 0 94720122481936 94720122483200 "
    "94720906686464 140729507404518 140729507404528 140729507404528 140729507405801 0\n"
)

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   81487  1362    0    0    0     0          0         0    81487    1362    0    0    0     0       0          0
  eth0: 377285232    9606    0    0    0     0          0         0   579387    5334    0    0    0     0       0          0
cni-podman0:    1816      26    0    0    0     0          0        26     1184      12    0    2    0     0       0          0
"""  # noqa: E501 - the kernel's layout, verbatim


def add_process(
    proc: Path,
    pid: int,
    comm: str,
    cmdline: list[str] | None = None,
    *,
    state: str = "S",
    ppid: int = 1,
) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    (directory / "stat").write_text(
        STAT_LINE.format(
            pid=pid,
            comm=comm,
            state=state,
            ppid=ppid,
            utime=7,
            stime=3,
            threads=2,
            start=243761,
            vsize=2617344,
            rss=318,
        )
    )
    # statm: size resident shared text lib data dt, in pages; rss comes from here, not from stat.
    (directory / "statm").write_text(f"{2617344 // PAGE_SIZE} 436 408 5 0 89 0\n")
    arguments = cmdline if cmdline is not None else [comm]
    (directory / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in arguments))


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    for entry in ("self", "sys", "thread-self"):
        (root / entry).mkdir()
    return root


def test_read_stat_parses_a_comm_with_spaces_and_parentheses(proc: Path) -> None:
    add_process(proc, 4242, "my (odd) name) x", state="R", ppid=77)

    stat = read_stat(4242, proc)

    assert stat == ProcStat(
        pid=4242,
        comm="my (odd) name) x",
        state="R",
        ppid=77,
        utime_ticks=7,
        stime_ticks=3,
        start_ticks=243761,
        num_threads=2,
        rss_bytes=436 * PAGE_SIZE,
        vsize_bytes=2617344,
    )


def test_readers_of_a_process_that_is_gone_return_none(proc: Path) -> None:
    assert read_stat(4242, proc) is None
    assert read_cmdline(4242, proc) is None
    assert net_dev(4242, proc) is None


def test_a_process_that_exits_between_stat_and_statm_is_gone(proc: Path) -> None:
    add_process(proc, 4242, "short-lived")
    (proc / "4242" / "statm").unlink()

    assert read_stat(4242, proc) is None


def test_read_cmdline_splits_on_nul_and_keeps_spaces_inside_arguments(proc: Path) -> None:
    add_process(proc, 10, "python3", ["/usr/bin/python3", "-c", "print('a b')"])
    add_process(proc, 2, "kthreadd", [])

    assert read_cmdline(10, proc) == ["/usr/bin/python3", "-c", "print('a b')"]
    assert read_cmdline(2, proc) == []


def test_net_dev_reads_each_interface_and_totals_leave_out_loopback(proc: Path) -> None:
    add_process(proc, 10, "server")
    (proc / "10" / "net").mkdir()
    (proc / "10" / "net" / "dev").write_text(NET_DEV)

    counters = net_dev(10, proc)

    assert counters is not None
    assert counters["eth0"] == NetCounters(
        rx_bytes=377285232, rx_packets=9606, tx_bytes=579387, tx_packets=5334
    )
    assert counters["cni-podman0"] == NetCounters(1816, 26, 1184, 12)
    assert set(counters) == {"lo", "eth0", "cni-podman0"}
    assert net_totals(counters) == NetCounters(377285232 + 1816, 9606 + 26, 579387 + 1184, 5346)
    assert net_totals({}) == NetCounters()


def test_pids_lists_only_numeric_entries(proc: Path) -> None:
    for pid in (1, 42, 31337):
        add_process(proc, pid, "p")

    assert sorted(pids(proc)) == [1, 42, 31337]


def test_boot_time_agrees_with_the_kernels_btime() -> None:
    # btime is whole seconds; the two differ by the truncation at most (plus clock reads).
    assert abs(boot_time_ns() / 1e9 - psutil.boot_time()) < 1.01
    assert boot_time_ns() < time.time_ns()
    assert CLK_TCK > 0


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "exactly one"),
        ({"name": "a", "cmdline": "b"}, "exactly one"),
        ({"name": ""}, "empty"),
        ({"cmdline": "(unclosed"}, "regular expression"),
        ({"systemd_unit": "../../etc"}, "unit name"),
        ({"systemd_unit": "a/b.service"}, "unit name"),
    ],
)
def test_a_matcher_needs_exactly_one_valid_criterion(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ProcessMatcher(**fields)  # type: ignore[arg-type]


def test_name_matches_comm_or_argv0_basename_and_skips_zombies(proc: Path) -> None:
    add_process(proc, 100, "inference", ["/opt/bin/inference", "--model", "x"])
    # comm is cut to 15 characters; argv[0] has the whole name.
    add_process(proc, 101, "perception-fron", ["/opt/bin/perception-frontend"])
    # A process that renamed its main thread: comm differs, argv[0] still names it.
    add_process(proc, 102, "worker-0", ["inference"])
    add_process(proc, 103, "inference", [], state="Z")
    add_process(proc, 104, "perception-fron", ["/opt/bin/perception-fronted-2"])
    add_process(proc, 105, "kworker/0:1", [])

    assert find_processes(ProcessMatcher(name="inference"), proc) == [100, 102]
    assert find_processes(ProcessMatcher(name="perception-frontend"), proc) == [101]
    assert find_processes(ProcessMatcher(name="absent"), proc) == []


def test_cmdline_regex_searches_the_space_joined_arguments(proc: Path) -> None:
    add_process(proc, 100, "python3", ["python3", "-m", "planner", "--fast"])
    add_process(proc, 101, "python3", ["python3", "-m", "planner_tests"])
    add_process(proc, 102, "kthreadd", [])

    assert find_processes(ProcessMatcher(cmdline=r"-m planner\b"), proc) == [100]
    assert find_processes(ProcessMatcher(cmdline=r"^python3 "), proc) == [100, 101]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("100\n", [100]), ("  100", [100]), ("", []), ("garbage", []), ("0", []), ("103", [])],
)
def test_pidfile_gives_its_pid_while_that_process_is_alive(
    proc: Path, tmp_path: Path, content: str, expected: list[int]
) -> None:
    add_process(proc, 100, "daemon")
    add_process(proc, 103, "daemon", [], state="Z")
    pidfile = tmp_path / "daemon.pid"
    pidfile.write_text(content)

    assert find_processes(ProcessMatcher(pidfile=pidfile), proc) == expected


def test_missing_pidfile_means_no_process(proc: Path, tmp_path: Path) -> None:
    assert find_processes(ProcessMatcher(pidfile=tmp_path / "absent.pid"), proc) == []


HYBRID_MOUNTINFO = """\
32 31 0:29 / /sys/fs/cgroup/unified rw,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,relatime shared:5 - cgroup cgroup rw,xattr,name=systemd
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime shared:10 - cgroup cgroup rw,pids
"""


def unit_cgroup(directory: Path, *members: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in members))


@pytest.fixture
def cgroup(proc: Path, tmp_path: Path) -> Path:
    (proc / "self" / "mountinfo").write_text(HYBRID_MOUNTINFO)
    for pid in (100, 101, 102, 200, 300):
        add_process(proc, pid, "unit-process")
    add_process(proc, 103, "unit-process", [], state="Z")
    return tmp_path / "cgroup"


def test_systemd_unit_collects_its_cgroup_and_sub_cgroups(proc: Path, cgroup: Path) -> None:
    unit = cgroup / "unified" / "system.slice" / "podman-model.service"
    unit_cgroup(unit / "supervisor", 100)
    unit_cgroup(unit / "libpod-payload" / "nested", 101, 102, 103)
    unit_cgroup(unit)

    found = find_processes(ProcessMatcher(systemd_unit="podman-model"), proc, cgroup_root=cgroup)

    assert found == [100, 101, 102]


def test_systemd_unit_prefers_the_v2_tree_and_falls_back_to_v1(proc: Path, cgroup: Path) -> None:
    unit_cgroup(cgroup / "unified" / "system.slice" / "a.service", 100)
    unit_cgroup(cgroup / "pids" / "system.slice" / "a.service", 200)
    unit_cgroup(cgroup / "pids" / "system.slice" / "b.service", 300)

    def find(unit: str) -> list[int]:
        return find_processes(ProcessMatcher(systemd_unit=unit), proc, cgroup_root=cgroup)

    assert find("a.service") == [100]
    assert find("b.service") == [300]
    assert find("c.service") == []


def test_systemd_unit_is_found_in_nested_slices(proc: Path, cgroup: Path) -> None:
    unit_cgroup(cgroup / "systemd" / "app.slice" / "app-vision.slice" / "camera.service", 200)
    unit_cgroup(cgroup / "systemd" / "init.scope", 100)

    def find(unit: str) -> list[int]:
        return find_processes(ProcessMatcher(systemd_unit=unit), proc, cgroup_root=cgroup)

    assert find("camera.service") == [200]
    assert find("init.scope") == [100]


def set_process(proc: Path, pid: int, comm: str, cmdline: list[str], state: str = "S") -> None:
    """Change a synthetic process in place, as an exec or a death would."""
    directory = proc / str(pid)
    stat = (directory / "stat").read_text()
    tail = stat.rpartition(") ")[2]
    (directory / "stat").write_text(f"{pid} ({comm}) {state} {tail.split(' ', 1)[1]}")
    (directory / "comm").write_text(comm + "\n")
    (directory / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in cmdline))


def test_the_scanner_finds_what_find_processes_finds_for_every_matcher_at_once(
    proc: Path, tmp_path: Path
) -> None:
    add_process(proc, 100, "inference", ["/opt/bin/inference", "--model", "x"])
    add_process(proc, 101, "perception-fron", ["/opt/bin/perception-frontend"])
    add_process(proc, 102, "worker-0", ["inference"])
    add_process(proc, 103, "inference", [], state="Z")
    add_process(proc, 104, "python3", ["python3", "-m", "planner", "--fast"])
    add_process(proc, 105, "kworker/0:1", [])
    pidfile = tmp_path / "p.pid"
    pidfile.write_text("104\n")
    matchers = [
        ProcessMatcher(name="inference"),
        ProcessMatcher(name="perception-frontend"),
        ProcessMatcher(cmdline=r"-m planner\b"),
        ProcessMatcher(cmdline=r"^/opt/bin/"),
        ProcessMatcher(pidfile=pidfile),
    ]
    found = ProcessScanner(proc).find(matchers)
    assert found == {m: find_processes(m, proc) for m in matchers}
    assert found[matchers[0]] == [100, 102]
    assert found[matchers[3]] == [100, 101]


def test_the_scanner_sees_new_processes_at_once_and_changed_ones_within_its_recheck(
    proc: Path,
) -> None:
    now = [0.0]
    add_process(proc, 100, "python3", ["python3", "launcher.py"])
    add_process(proc, 101, "sh", ["sh", "-c", "exec planner"])
    scanner = ProcessScanner(proc, recheck_s=10.0, clock=lambda: now[0])
    planner = ProcessMatcher(cmdline=r"-m planner")
    by_name = ProcessMatcher(name="planner")
    assert scanner.find([planner, by_name]) == {planner: [], by_name: []}

    # Known processes that exec'd or rewrote their arguments: trusted as read until rechecked.
    set_process(proc, 101, "planner", ["planner"])
    set_process(proc, 100, "python3", ["python3", "-m", "planner"])
    # A new process is read at once.
    add_process(proc, 102, "planner", ["/usr/bin/planner", "--fast"])
    now[0] = 1.0
    assert scanner.find([planner, by_name]) == {planner: [], by_name: [102]}
    now[0] = 10.5
    assert scanner.find([planner, by_name]) == {planner: [100], by_name: [101, 102]}


def test_a_pid_reused_by_another_process_is_not_taken_for_the_one_that_matched(
    proc: Path,
) -> None:
    now = [0.0]
    add_process(proc, 100, "planner", ["planner"])
    scanner = ProcessScanner(proc, recheck_s=10.0, clock=lambda: now[0])
    by_name = ProcessMatcher(name="planner")
    assert scanner.find([by_name]) == {by_name: [100]}
    # The process exits and another takes its pid between two calls: another start time.
    stat = proc / "100" / "stat"
    stat.write_text(stat.read_text().replace(" 243761 ", " 243999 "))
    set_process(proc, 100, "bash", ["bash"])
    now[0] = 1.0
    assert scanner.find([by_name]) == {by_name: []}
    assert scanner.find([by_name]) == {by_name: []}


def test_the_scanner_drops_a_process_that_became_a_zombie(proc: Path) -> None:
    add_process(proc, 100, "python3", ["python3", "-m", "planner"])
    scanner = ProcessScanner(proc)
    matcher = ProcessMatcher(cmdline="planner")
    assert scanner.find([matcher]) == {matcher: [100]}
    set_process(proc, 100, "python3", ["python3", "-m", "planner"], state="Z")
    (proc / "100" / "cmdline").write_bytes(b"")
    assert scanner.find([matcher]) == {matcher: []}
