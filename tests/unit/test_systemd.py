from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from agent.systemd import Notifier, StderrHandler, priority, resource_fields


@pytest.fixture
def receiver(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(1.0)
    return sock


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_notify_sends_one_datagram_of_fields(tmp_path: Path, receiver: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier.ready("running")
    assert received(receiver) == {"READY": "1", "STATUS": "running"}
    assert notifier.reloading()
    message = received(receiver)
    assert message["RELOADING"] == "1"
    assert int(message["MONOTONIC_USEC"]) > 0
    assert notifier.stopping("bye")
    assert received(receiver) == {"STOPPING": "1", "STATUS": "bye"}
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"piccolo-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(1.0)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
    assert received(sock) == {"WATCHDOG": "1"}


def test_no_socket_means_no_notifications() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")


def test_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).status("x")


def test_watchdog_interval_respects_watchdog_pid() -> None:
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_s == 10.0
    mine = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": mine}).watchdog_s == 4.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None


def test_stderr_lines_carry_priority_and_fields() -> None:
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("agent", logging.WARNING, __file__, 1, "two\nlines", None, None)
    record.__dict__.update(resource_fields("model", "vision-system"))
    assert handler.format(record) == (
        "<4>two\n<4>lines piccolo_resource_type=model piccolo_resource_id=vision-system"
    )
    assert priority(logging.LogRecord("a", logging.DEBUG, "", 1, "", None, None)) == 7
    assert priority(logging.LogRecord("a", logging.CRITICAL, "", 1, "", None, None)) == 2
