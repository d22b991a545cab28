"""Small kernel files read every interval, kept open and re-read with pread(2).

procfs and cgroupfs generate a file's content at each read from offset 0, so an open descriptor
serves every later sample: one pread instead of open, read and close. `bench/readers.py` measures
it: /proc/<pid>/stat and statm kept open cost 8.0-10.6 µs per process on a 2-core VM, against
21.6-26.3 µs for opening, reading and closing them (two runs).

A descriptor stays bound to what it opened: a /proc/<pid>/ file of a process that exited reads
ESRCH even after the pid is reused, and a file of a removed cgroup reads ENODEV even after a
cgroup of the same path is created again. A failed read therefore forgets the descriptor and
answers `None`; the next read of that path opens it afresh (the new process, the new cgroup), and
callers that care about identity compare the process's start time, as they must anyway.

Each open file costs a descriptor and, in the kernel, a seq_file page; `limit` bounds how many one
instance keeps, and all instances together keep at most half of the soft RLIMIT_NOFILE (the rest
is for sockets, the buffer, and reading files the plain way). Beyond either bound, files are read
the plain way. `raise_fd_limit` lifts the soft limit (systemd's default is 1024) towards 16384.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource

READ_SIZE = 65536
DEFAULT_LIMIT = 2048
WANTED_NOFILE = 16384


def raise_fd_limit(wanted: int = WANTED_NOFILE) -> int:
    """Lift the soft limit on open files towards `wanted` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def _open(path: str) -> int | None:
    """A descriptor for `path`, or None if it cannot be opened (absent, gone).

    Running out of descriptors raises: a file that cannot be opened for that reason is not gone,
    and a collector must fail its cycle rather than report a live process as exited.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in _OUT_OF_DESCRIPTORS:
            raise
        return None


def _read_once(path: str) -> bytes | None:
    fd = _open(path)
    if fd is None:
        return None
    try:
        return _read_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    """The whole content, read with pread from offset 0 (a fresh descriptor or a kept one)."""
    data = os.pread(fd, READ_SIZE, 0)
    if len(data) < READ_SIZE:
        return data
    chunks = [data]
    while chunk := os.pread(fd, READ_SIZE, READ_SIZE * len(chunks)):
        chunks.append(chunk)
    return b"".join(chunks)


def _budget() -> int:
    """How many descriptors all instances together may keep: half the soft limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft // 2


class OpenFiles:
    """Paths (as strings) to open descriptors; `read` answers the file's current content."""

    kept = 0
    """Descriptors kept by all instances."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._fds: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, path: str) -> bytes | None:
        """The content of `path` now; `None` if it cannot be opened or read (gone, no such file)."""
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self.limit or OpenFiles.kept >= _budget():
                return _read_once(path)
            fd = _open(path)
            if fd is None:
                return None
            self._fds[path] = fd
            OpenFiles.kept += 1
        try:
            return _read_all(fd)
        except OSError:
            self.forget(path)
            return None

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
            OpenFiles.kept -= 1

    def forget_under(self, prefix: str) -> None:
        """Close every file whose path starts with `prefix` (a process or cgroup that went)."""
        for path in [p for p in self._fds if p.startswith(prefix)]:
            self.forget(path)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        OpenFiles.kept -= len(self._fds)
        self._fds.clear()
