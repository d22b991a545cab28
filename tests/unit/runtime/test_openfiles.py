"""Kernel files kept open and re-read: fresh content each read, and nothing held for the dead."""

from __future__ import annotations

import os
import resource
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.runtime.cgroups import cgroup_mounts
from agent.runtime.openfiles import OpenFiles, raise_fd_limit


def test_each_read_gives_the_content_of_now(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("1\n")
    files = OpenFiles()
    assert files.read(str(path)) == b"1\n"
    with path.open("r+") as rewrite:  # in place, as the kernel's files change
        rewrite.write("22\n")
    assert files.read(str(path)) == b"22\n"
    assert len(files) == 1


def test_a_file_larger_than_one_read_comes_whole(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 200_000)
    assert files_read(path) == b"x" * 200_000


def files_read(path: Path) -> bytes | None:
    files = OpenFiles()
    try:
        return files.read(str(path))
    finally:
        files.close()


def test_a_process_that_exits_reads_none_and_its_file_is_closed() -> None:
    child = subprocess.Popen(["sleep", "30"])
    files = OpenFiles()
    path = f"/proc/{child.pid}/stat"
    try:
        first = files.read(path)
        assert first is not None
        assert first.startswith(f"{child.pid} (sleep)".encode())
        assert len(files) == 1
    finally:
        child.kill()
        child.wait()
    assert files.read(path) is None
    assert len(files) == 0


def test_beyond_its_limit_it_reads_without_keeping(tmp_path: Path) -> None:
    files = OpenFiles(limit=2)
    for index in range(4):
        (tmp_path / str(index)).write_text(str(index))
    assert [files.read(str(tmp_path / str(i))) for i in range(4)] == [b"0", b"1", b"2", b"3"]
    assert len(files) == 2
    assert files.read(str(tmp_path / "absent")) is None
    files.forget_under(str(tmp_path))
    assert len(files) == 0


def test_a_removed_cgroup_reads_none_and_a_new_one_of_that_path_is_read_afresh() -> None:
    writable = [
        m.path
        for m in cgroup_mounts()
        if (m.version == 1 and "memory" in m.options) or m.version == 2
    ]
    directory = None
    for mount in writable:
        candidate = mount / f"piccolo-test-{uuid.uuid4().hex[:8]}"
        try:
            candidate.mkdir()
        except OSError:
            continue
        directory = candidate
        break
    if directory is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no writable cgroup hierarchy: CI runs as root and must have one")
        pytest.skip("no writable cgroup hierarchy (not root?)")
    path = str(directory / "cgroup.procs")
    files = OpenFiles()
    try:
        assert files.read(path) == b""
        directory.rmdir()
        assert files.read(path) is None
        directory.mkdir()
        assert files.read(path) == b""
    finally:
        files.close()
        if directory.exists():
            directory.rmdir()


def test_the_soft_fd_limit_is_raised_within_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_fd_limit(4096)
        expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        assert limit == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_all_instances_together_keep_at_most_half_the_soft_fd_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    first, second = OpenFiles(), OpenFiles()
    try:
        # Half of the limit may be kept; the numbers above the highest in use leave room for it.
        highest = max(int(entry.name) for entry in Path("/proc/self/fd").iterdir())
        limit = 2 * (highest + 1) + 400
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        room = limit // 2 - OpenFiles.kept
        count = room + 50
        for index in range(count):
            (tmp_path / str(index)).write_text(str(index))
        for index in range(count):
            files = first if index % 2 else second
            assert files.read(str(tmp_path / str(index))) == str(index).encode()
        assert len(first) + len(second) == room  # the rest were read without being kept
    finally:
        first.close()
        second.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_running_out_of_descriptors_raises_rather_than_reading_as_gone(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = OpenFiles()
    try:
        # The kernel hands out the lowest free number, refused from the soft limit on.
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        with pytest.raises(OSError, match="Too many open files"):
            files.read(str(path))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        files.close()
