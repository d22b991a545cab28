"""The agent's end of the ingest socket: receive, parse, filter, deliver, count.

```
 datagram ──► parse ──► accept(report)? ──► deliver(report)      stats.delivered
               │ Malformed     │ False           │ raises
               ▼               ▼                 ▼
       dropped[reason]  dropped["unknown_resource"]  dropped["queue_full" | "internal_error"]
```

Every datagram read is counted once in `stats.received` and then either in `stats.delivered` or
in exactly one drop counter, synchronously, so `received == delivered + sum(dropped)` holds
whenever the event loop is not inside `datagram_received`.

Reading: the socket is drained by a reader callback on the event loop that takes up to
`READ_BATCH` datagrams per wake-up. asyncio's datagram transport reads one datagram per loop
iteration into a fresh 256 KiB buffer; draining measured 6-8 times more datagrams per second
on the development machine, which matters because the kernel queue in front of us is short (next
paragraph). Each read asks for `max_datagram_bytes + 1` bytes: Unix datagrams are never split,
and a longer one arrives truncated to that size, so `len(data) > max_datagram_bytes` still
recognises it as `too_large`. With a trivial `deliver`, the whole path (recv, parse, accept,
deliver, counting) cost 16-20 µs of CPU per report there: 50,000-64,000 reports/s on one core.

Bursts: on Linux the receive queue of a Unix datagram socket holds at most
`net.unix.max_dgram_qlen` + 1 datagrams, whatever `SO_RCVBUF` says (measured on 6.18: 11
datagrams with a receive buffer of 8 KiB or 8 MiB, from one sender or three). The kernel default
is 10; systemd's sysctl.d/50-default.conf raises it to 512. The value in force when the socket is
made is in `stats.queue_limit`, and a value below `RECOMMENDED_QUEUE_LIMIT` is logged at start.
Senders that find the queue full drop their report and count it (see agent.ingest.client).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.ingest.protocol import MALFORMED_REASONS, Malformed, Refused, Report, parse

_log = logging.getLogger(__name__)

DROP_REASONS: Final[tuple[str, ...]] = (
    *MALFORMED_REASONS,
    "unknown_resource",
    "wall_clock_time",
    "too_many_tasks",
    "queue_full",
    "internal_error",
)
"""Every drop counter: the parse failures, then `accept` saying no, `deliver` refusing
(`Refused`: one task name more than a model may have, or a timing report stamped with the
wall clock instead of CLOCK_MONOTONIC), `deliver` raising `asyncio.QueueFull`
(the pipeline is behind), and any other exception (a bug, logged)."""

READ_BATCH: Final = 256
"""Datagrams read per wake-up at most, so a flood cannot starve the other tasks of the loop."""

LOG_INTERVAL_S: Final = 60.0
"""Each drop reason is logged at most once per interval, with the count since its last line."""

RECOMMENDED_QUEUE_LIMIT: Final = 512
DRAIN_LIMIT_UNKNOWN_QLEN: Final = 4096
"""Reads a drain makes at most when net.unix.max_dgram_qlen could not be read."""
QUEUE_LIMIT_FILE: Final = Path("/proc/sys/net/unix/max_dgram_qlen")
MAX_SOCKET_PATH_BYTES: Final = 107
"""sun_path holds 108 bytes including the terminating NUL."""


@dataclass(slots=True)
class IngestStats:
    """Counters since start; the agent exports them as its own health metrics."""

    received: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    read_errors: int = 0
    """recv() failures other than "nothing to read"; none are expected on a Unix socket."""
    queue_limit: int | None = None
    """net.unix.max_dgram_qlen when the socket was made; None when it could not be read."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(slots=True)
class _DropLog:
    last_logged: float
    since: int = 0


class IngestServer:
    """Receives reports on a Unix datagram socket at `path` and hands them to `deliver`.

    `accept(report)` decides whether a report concerns something this agent supervises (for
    example a model in the inventory); False drops it as `unknown_resource`. `delivered()`, when
    given, is called after each batch of datagrams read in one go (work that needs doing once per
    batch rather than once per report). `deliver(report)`
    must not block: it is called on the event loop for every accepted report, synchronously
    (typically `queue.put_nowait`; raising `asyncio.QueueFull` counts as `queue_full`).

    The socket file gets `mode` (default 0660) and, when `group` (a name or a numeric id) is
    given, that group; the agent must belong to the group to hand the socket to it.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_datagram_bytes: int,
        mode: int = 0o660,
        group: str | None = None,
        accept: Callable[[Report], bool],
        deliver: Callable[[Report], None],
        delivered: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.max_datagram_bytes = max_datagram_bytes
        self.mode = mode
        self.group = group
        self.stats = IngestStats()
        self._accept = accept
        self._deliver = deliver
        self._delivered = delivered
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._identity: tuple[int, int] | None = None
        self._drop_logs: dict[str, _DropLog] = {}
        self._clock = time.monotonic

    async def start(self) -> None:
        """Bind the socket and start reading on the running loop.

        A socket file left by a receiver that is gone is replaced. Raises `OSError` when the
        socket cannot be made: the path is longer than 107 bytes, is not a socket, is in use by
        a live receiver, or the directory refuses it; `ValueError` for a group that does not
        exist. Nothing is left behind on failure.
        """
        if self._sock is not None:
            raise RuntimeError("the ingest server is already started")
        gid = _group_id(self.group) if self.group is not None else -1
        encoded = os.fsencode(self.path)
        if len(encoded) > MAX_SOCKET_PATH_BYTES:
            raise OSError(
                errno.ENAMETOOLONG,
                f"socket path is {len(encoded)} bytes; a Unix socket path has at most "
                f"{MAX_SOCKET_PATH_BYTES}",
                str(self.path),
            )
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.settimeout(0.0)  # non-blocking
            # SO_RCVBUF is left alone: it does not bound a Unix datagram queue (module docstring).
            sock.bind(str(self.path))
            # Bound under the service's UMask=0077; the mode must be set explicitly. Until
            # then the socket is only more private than intended, never less.
            if gid != -1:
                os.chown(self.path, -1, gid)
            self.path.chmod(self.mode)
            info = self.path.stat()
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        self._identity = (info.st_dev, info.st_ino)
        self.stats.queue_limit = _queue_limit()
        if self.stats.queue_limit is not None and (
            self.stats.queue_limit < RECOMMENDED_QUEUE_LIMIT
        ):
            _log.warning(
                "net.unix.max_dgram_qlen is %d: the ingest socket queues at most %d reports "
                "while the agent is busy; set it to %d or more (sysctl.d) for bursts",
                self.stats.queue_limit,
                self.stats.queue_limit + 1,
                RECOMMENDED_QUEUE_LIMIT,
            )
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read_ready)
        _log.info(
            "ingest socket %s ready (mode %04o, max %d bytes per report)",
            self.path,
            self.mode,
            self.max_datagram_bytes,
        )

    def close(self) -> None:
        """Stop reading and remove the socket file (unless another receiver replaced it)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            info = self.path.lstat()
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()

    def _read_ready(self) -> None:
        self._read(READ_BATCH)

    def drain(self) -> int:
        """Read everything that was queued on the socket when this call began; returns the count.

        A verdict taken after `drain` has seen every report whose `sendto` returned before it
        (agent.timing.service). The kernel queue holds at most `queue_limit` + 1 datagrams, so
        that many reads (or the queue running empty) reach everything queued at the start, even
        while senders keep adding to it.
        """
        return self._read((self.stats.queue_limit or DRAIN_LIMIT_UNKNOWN_QLEN) + 1)

    def _read(self, limit: int) -> int:
        """Read and handle up to `limit` datagrams, then end the batch; returns how many."""
        sock = self._sock
        if sock is None:
            return 0
        size = self.max_datagram_bytes + 1
        read = 0
        while read < limit:
            try:
                data = sock.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.stats.read_errors += 1
                _log.warning("reading the ingest socket failed: %s", exc)
                break
            read += 1
            self.datagram_received(data)
        self._batch_done()
        return read

    def _batch_done(self) -> None:
        if self._delivered is not None:
            try:
                self._delivered()
            except Exception:  # noqa: BLE001 - a bug downstream must not stop the intake
                _log.exception("ingest: the end-of-batch callback failed")

    def datagram_received(self, data: bytes) -> None:
        """Parse, filter and deliver one datagram; never raises, never blocks."""
        stats = self.stats
        stats.received += 1
        try:
            report = parse(data, self.max_datagram_bytes)
            if not self._accept(report):
                self._dropped("unknown_resource", describe(report))
                return
            self._deliver(report)
        except Malformed as exc:
            self._dropped(exc.reason, f"field {exc.field}" if exc.field else "")
        except Refused as exc:
            self._dropped(exc.reason, describe(report))
        except asyncio.QueueFull:
            self._dropped("queue_full", "the pipeline is behind")
        except Exception as exc:  # noqa: BLE001 - a bug downstream must not stop the intake
            self._dropped("internal_error", "", exc)
        else:
            stats.delivered += 1

    def _dropped(self, reason: str, detail: str, exc: Exception | None = None) -> None:
        self.stats.dropped[reason] += 1
        now = self._clock()
        entry = self._drop_logs.get(reason)
        if entry is not None and now - entry.last_logged < LOG_INTERVAL_S:
            entry.since += 1
            return
        earlier = entry.since if entry is not None else 0
        self._drop_logs[reason] = _DropLog(now)
        more = f" ({earlier} more since the last message)" if earlier else ""
        if exc is not None:
            _log.error("ingest: handling a report failed%s", more, exc_info=exc)
        else:
            detail = f": {detail}" if detail else ""
            _log.warning("ingest: dropped a report as %s%s%s", reason, detail, more)


def describe(report: Report) -> str:
    """A report in words for the log: its kind and what it names, not a dataclass repr."""
    kind = type(report).__name__.lower()
    model = getattr(report, "model", None)
    if model is not None:
        task = getattr(report, "task", None) or getattr(report, "name", None)
        return f"{kind} of {model}" + (f"/{task}" if task else "")
    scenario = getattr(report, "scenario", None)
    if scenario is not None:
        return f"scenario execution of {scenario}"
    kind_of = getattr(report, "resource_type", "")
    return f"state of {kind_of} {getattr(report, 'id', '?')}"


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"ingest socket group {group!r} does not exist") from None


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody receives on; refuse to touch anything else."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket; not replacing it", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # left by a receiver that is gone
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process receives on this socket", str(path))


def _queue_limit() -> int | None:
    try:
        return int(QUEUE_LIMIT_FILE.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


__all__ = ["DROP_REASONS", "IngestServer", "IngestStats"]
