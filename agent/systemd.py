"""systemd integration: sd_notify datagrams, the watchdog interval, and journald logging.

sd_notify is one datagram of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or an
abstract name when it starts with `@`); it is written here directly, so notification works without
systemd-python. Native journald logging with structured fields uses systemd-python (extra
`systemd`) when it is installed and journald's socket exists; otherwise log lines go to stderr with
`<N>` priority prefixes, which journald understands when it captures the service's stderr. This is
the only module that imports systemd-python.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Literal

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
FIELDS_ATTR = "journal_fields"
"""`logging` extra key holding a `dict[str, str]` of journal fields, e.g. PICCOLO_RESOURCE_ID."""

_log = logging.getLogger(__name__)


def resource_fields(resource_type: str, resource_id: str) -> dict[str, dict[str, str]]:
    """`extra=` for a log call that concerns one resource."""
    return {
        FIELDS_ATTR: {"PICCOLO_RESOURCE_TYPE": resource_type, "PICCOLO_RESOURCE_ID": resource_id}
    }


class Notifier:
    """Sends sd_notify messages; a no-op (returning False) where no notify socket is set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if name.startswith("@"):
            self._address = b"\0" + name[1:].encode()
        elif name.startswith("/"):
            self._address = name
        self._sock: socket.socket | None = None
        self._failed = False
        self._watchdog_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_s(self) -> float | None:
        """The watchdog timeout systemd set for this process (`WATCHDOG_USEC`), in seconds."""
        return self._watchdog_s

    def send(self, **fields: str | int) -> bool:
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                _log.warning("cannot notify systemd at %r: %s", self._address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) match this reload to its request.
        return self.send(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def priority(record: logging.LogRecord) -> int:
    """The syslog priority of a log record (debug 7 ... critical 2)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if record.levelno >= level:
            return _PRIORITY[level]
    return 7


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = getattr(record, FIELDS_ATTR, None)
    return dict(fields) if isinstance(fields, dict) else {}


class JournalHandler(logging.Handler):
    """Sends each record to journald with PRIORITY, SYSLOG_IDENTIFIER and the record's fields.

    While journald cannot be reached, records go to stderr instead: a log line is never lost to a
    journald restart.
    """

    def __init__(self, journal: ModuleType, identifier: str) -> None:
        super().__init__()
        self._journal = journal
        self._identifier = identifier
        self._fallback = StderrHandler()
        self._journal_down = False

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging's name
        super().setFormatter(fmt)
        self._fallback.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._journal.send(
                message,
                PRIORITY=str(priority(record)),
                SYSLOG_IDENTIFIER=self._identifier,
                LOGGER=record.name,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **_fields(record),
            )
        except OSError as exc:
            if not self._journal_down:
                self._journal_down = True
                self._fallback.emit(
                    logging.makeLogRecord(
                        {
                            "msg": f"journald unreachable ({exc}); logging to stderr meanwhile",
                            "levelno": logging.WARNING,
                            "levelname": "WARNING",
                        }
                    )
                )
            self._fallback.emit(record)
        except Exception:  # noqa: BLE001 - logging must never take the agent down
            self.handleError(record)
        else:
            self._journal_down = False


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """`<N>message key=value` lines: journald reads the priority when it captures stderr."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k.lower()}={v}" for k, v in _fields(record).items())
        line = f"{text} {fields}" if fields else text
        prefix = f"<{priority(record)}>"
        return "\n".join(prefix + part for part in line.splitlines() or [""])


def _journal_module() -> ModuleType | None:
    # The optional extra is imported only when journald is the target.
    with contextlib.suppress(ImportError):
        return importlib.import_module("systemd.journal")
    return None


def _journald_listening() -> bool:
    """Whether journald receives on its socket now (a stale socket file refuses connections)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(str(JOURNAL_SOCKET))
    except OSError:
        return False
    return True


def configure_logging(
    level: str,
    target: Literal["auto", "journald", "stderr"],
    identifier: str,
) -> str:
    """Install the agent's log handler on the root logger; returns the target chosen."""
    journal = None
    if target == "journald" or (target == "auto" and _journald_listening()):
        journal = _journal_module()
    handler: logging.Handler
    if journal is not None:
        handler = JournalHandler(journal, identifier)
        chosen = "journald"
    else:
        handler = StderrHandler()
        chosen = "stderr"
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if target == "journald" and journal is None:
        _log.warning("logging.target is journald, but systemd-python is not installed")
    return chosen
