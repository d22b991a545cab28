"""The ingest server on a real Unix socket: delivery, accounting under a flood, permissions, CLI."""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import logging
import os
import random
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from agent.config import Ingest
from agent.ingest import server as server_module
from agent.ingest.client import Reporter
from agent.ingest.protocol import (
    Activation,
    AppMetric,
    Checkpoint,
    End,
    Heartbeat,
    Malformed,
    Report,
    ScenarioExecution,
    Start,
    StateReport,
    parse,
)
from agent.ingest.server import DROP_REASONS, IngestServer
from agent.model import ResourceType

pytestmark = pytest.mark.integration

MAX = 4096
KNOWN = {"vision-system", "adas-activation"}


def known(report: Report) -> bool:
    if isinstance(report, ScenarioExecution):
        return report.scenario in KNOWN
    if isinstance(report, StateReport):
        return report.id in KNOWN
    return report.model in KNOWN


class Harness:
    def __init__(self, path: Path, **options: object) -> None:
        self.reports: list[Report] = []
        self.path = path
        self.server = IngestServer(
            path,
            max_datagram_bytes=MAX,
            accept=known,
            deliver=self.reports.append,
            **options,  # type: ignore[arg-type]
        )

    async def settle(self, received: int) -> None:
        await settle(self.server, received)


async def settle(server: IngestServer, received: int, timeout_s: float = 20.0) -> None:
    """Wait until `server` has read `received` datagrams."""
    async with asyncio.timeout(timeout_s):
        # The counters have no event to wait on: poll them, as a reader of the stats does.
        while server.stats.received < received:  # noqa: ASYNC110
            await asyncio.sleep(0.002)


@pytest.fixture
async def harness(socket_dir: Path) -> AsyncIterator[Harness]:
    harness = Harness(socket_dir / "ingest.sock")
    await harness.server.start()
    yield harness
    harness.server.close()


def accounted(harness: Harness) -> None:
    stats = harness.server.stats
    assert stats.received == stats.delivered + stats.dropped_total


async def test_valid_reports_are_delivered_in_order(harness: Harness) -> None:
    reporter = Reporter(harness.path, model="vision-system")
    reporter.start("detect", 1, 5, ts_ns=10)
    reporter.end("detect", 1, ts_ns=20)
    reporter.report_activation("detect", 30, 40, 2)
    reporter.heartbeat("detect", ts_ns=50)
    reporter.checkpoint("detect", "pre", ts_ns=60)
    reporter.metric("latency", 3.5, "ms")
    reporter.scenario("adas-activation", 230, "success")
    reporter.state("scenario", "adas-activation", "Active")
    await harness.settle(8)
    assert harness.reports == [
        Start("vision-system", "detect", 1, 10, 5),
        End("vision-system", "detect", 1, 20),
        Activation("vision-system", "detect", 2, 30, 40),
        Heartbeat("vision-system", "detect", 50),
        Checkpoint("vision-system", "detect", "pre", 60),
        AppMetric("vision-system", "latency", 3.5, "ms"),
        ScenarioExecution("adas-activation", 230, "success"),
        StateReport(ResourceType.SCENARIO, "adas-activation", "Active", ""),
    ]
    assert harness.server.stats.delivered == 8
    accounted(harness)


async def test_the_socket_is_0660_and_replaces_a_stale_file(socket_dir: Path) -> None:
    path = socket_dir / "ingest.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # left behind by an agent that died
    harness = Harness(path)
    old_umask = os.umask(0o077)  # as the service's UMask=0077
    try:
        await harness.server.start()
    finally:
        os.umask(old_umask)
    try:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert Reporter(path, model="vision-system").heartbeat("t")
        await harness.settle(1)
    finally:
        harness.server.close()
    assert not path.exists()


async def test_mode_and_group_are_set_as_configured(socket_dir: Path) -> None:
    # Root may give the socket any group; anyone else only one of their own.
    gid = 4242 if os.geteuid() == 0 else os.getgid()
    path = socket_dir / "ingest.sock"
    harness = Harness(path, mode=0o620, group=str(gid))
    await harness.server.start()
    try:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o620, gid)
    finally:
        harness.server.close()
    by_name = Harness(path, group=grp.getgrgid(os.getgid()).gr_name)
    await by_name.server.start()
    try:
        assert path.stat().st_gid == os.getgid()
    finally:
        by_name.server.close()


@pytest.mark.parametrize(("written", "mode"), [("0640", 0o640), ("0o600", 0o600), (0o660, 0o660)])
async def test_the_configured_mode_reaches_the_socket(
    socket_dir: Path, written: object, mode: int
) -> None:
    config = Ingest.model_validate({"mode": written})
    harness = Harness(socket_dir / "ingest.sock", mode=config.mode, group=config.group)
    await harness.server.start()
    try:
        assert stat.S_IMODE(harness.path.stat().st_mode) == mode
    finally:
        harness.server.close()


@pytest.mark.parametrize("written", [660, "0999", "rw-rw----", True])
def test_a_mode_that_is_not_octal_is_a_config_error(written: object) -> None:
    with pytest.raises(ValidationError, match="write it in octal"):
        Ingest.model_validate({"mode": written})


async def test_an_unknown_group_is_refused_and_leaves_nothing(socket_dir: Path) -> None:
    harness = Harness(socket_dir / "ingest.sock", group="no-such-group-pcl")
    with pytest.raises(ValueError, match="no-such-group-pcl"):
        await harness.server.start()
    assert not harness.path.exists()


async def test_a_live_receiver_or_a_plain_file_is_never_replaced(socket_dir: Path) -> None:
    path = socket_dir / "ingest.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(path))
    try:
        with pytest.raises(OSError, match="another process receives") as caught:
            await Harness(path).server.start()
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket", encoding="utf-8")
    with pytest.raises(OSError, match="not a socket"):
        await Harness(path).server.start()
    assert path.read_text(encoding="utf-8") == "not a socket"


async def test_a_path_too_long_for_a_unix_socket_is_refused(socket_dir: Path) -> None:
    path = socket_dir / ("x" * 120)
    with pytest.raises(OSError, match="at most 107") as caught:
        await Harness(path).server.start()
    assert caught.value.errno == errno.ENAMETOOLONG


async def test_close_leaves_a_socket_that_replaced_ours(harness: Harness) -> None:
    harness.path.unlink()
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    successor.bind(str(harness.path))
    try:
        harness.server.close()
        harness.server.close()
        assert harness.path.exists()
    finally:
        successor.close()


def _noise(rng: random.Random) -> list[bytes]:
    valid = [
        b'{"v":1,"type":"heartbeat","model":"vision-system","task":"detect","ts_ns":1}',
        (
            b'{"v":1,"type":"activation","model":"vision-system","task":"detect","seq":1,'
            b'"start_ns":5,"end_ns":9}'
        ),
        b'{"v":1,"type":"heartbeat","model":"elsewhere","task":"detect","ts_ns":1}',
        b'{"v":1,"type":"scenario","scenario":"adas-activation","duration_ms":1,"result":"success"}',
    ]
    datagrams: list[bytes] = []
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            datagrams.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        elif kind == 1:
            mutated = bytearray(rng.choice(valid))
            for _ in range(3):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            datagrams.append(bytes(mutated))
        elif kind == 2:
            datagrams.append(rng.choice(valid)[: rng.randrange(1, 60)])
        elif kind == 3:
            datagrams.append(b" " * (MAX + 1 + rng.randrange(3000)))
        else:
            datagrams.append(rng.choice(valid))
    return datagrams


def _expected(datagram: bytes) -> str:
    try:
        report = parse(datagram, MAX)
    except Malformed as exc:
        return exc.reason
    return "delivered" if known(report) else "unknown_resource"


def _send_blocking(path: Path, datagrams: list[bytes]) -> None:
    # A blocking sender waits while the kernel queue is full, so every datagram arrives.
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.connect(str(path))
    with sender:
        for datagram in datagrams:
            sender.send(datagram)


async def test_a_flood_of_noise_is_counted_exactly_and_the_server_stays_healthy(
    harness: Harness,
) -> None:
    datagrams = _noise(random.Random(11))  # noqa: S311 - reproducible noise, not secrets
    expected = Counter(_expected(d) for d in datagrams)
    await asyncio.to_thread(_send_blocking, harness.path, datagrams)
    await harness.settle(len(datagrams))
    stats = harness.server.stats
    assert stats.received == len(datagrams)
    accounted(harness)
    counted = {reason: n for reason, n in stats.dropped.items() if n}
    assert counted == {r: n for r, n in expected.items() if r != "delivered"}
    assert stats.delivered == expected["delivered"]
    assert {"too_large", "not_utf8", "not_json", "unknown_resource"} <= set(counted)
    # Still healthy: a valid report afterwards is delivered.
    before = len(harness.reports)
    assert Reporter(harness.path, model="vision-system").heartbeat("after", ts_ns=7)
    await harness.settle(len(datagrams) + 1)
    assert harness.reports[before:] == [Heartbeat("vision-system", "after", 7)]


async def test_datagrams_far_beyond_the_limit_are_too_large(harness: Harness) -> None:
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sender:
        for size in (MAX + 1, 70_000, 200_000):
            sender.sendto(b"{" + b" " * (size - 2) + b"}", str(harness.path))
    await harness.settle(3)
    assert harness.server.stats.dropped["too_large"] == 3
    accounted(harness)


async def test_reports_about_unknown_resources_are_counted(harness: Harness) -> None:
    Reporter(harness.path, model="not-on-this-node").heartbeat("t")
    Reporter(harness.path).scenario("other-scenario", 1, "failure")
    await harness.settle(2)
    assert harness.server.stats.dropped["unknown_resource"] == 2
    assert harness.reports == []
    accounted(harness)


async def test_failures_downstream_are_counted_and_logged_once_per_interval(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def deliver(report: Report) -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError(f"bug on {report}")
        raise asyncio.QueueFull

    server = IngestServer(
        socket_dir / "ingest.sock", max_datagram_bytes=MAX, accept=known, deliver=deliver
    )
    await server.start()
    try:
        reporter = Reporter(socket_dir / "ingest.sock", model="vision-system")
        with caplog.at_level(logging.WARNING, logger=server_module.__name__):
            for _ in range(10):
                reporter.heartbeat("t")
                await asyncio.sleep(0)
            await settle(server, 10)
    finally:
        server.close()
    assert (server.stats.dropped["internal_error"], server.stats.dropped["queue_full"]) == (5, 5)
    assert server.stats.delivered == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("queue_full" in w for w in warnings) == 1


async def test_every_drop_reason_has_a_counter_from_the_start(harness: Harness) -> None:
    assert list(harness.server.stats.dropped) == list(DROP_REASONS)
    assert set(harness.server.stats.dropped.values()) == {0}


# --- piccolo-agent report, end to end


def _cli(path: Path) -> list[str]:
    return ["--socket", str(path)]


async def test_piccolo_agent_report_sends_each_type(harness: Harness) -> None:
    socket_option = _cli(harness.path)
    commands = [
        ["heartbeat", "--model", "vision-system", "--task", "detect", "--ts-ns", "5"],
        ["start", "--model", "vision-system", "--task", "detect", "--seq", "3", "--ts-ns", "10"],
        ["end", "--model", "vision-system", "--task", "detect", "--seq", "3", "--ts-ns", "20"],
        [
            "activation",
            *("--model", "vision-system", "--task", "detect", "--seq", "4"),
            *("--start-ns", "30", "--end-ns", "45", "--release-ns", "25"),
        ],
        [
            "checkpoint",
            *("--model", "vision-system", "--task", "detect", "--checkpoint", "pre"),
            *("--ts-ns", "50"),
        ],
        [
            "metric",
            *("--model", "vision-system", "--name", "inference_time"),
            *("--value", "12.5", "--unit", "ms"),
        ],
        [
            "scenario",
            *("--scenario", "adas-activation", "--duration-ms", "230", "--result", "success"),
        ],
        [
            "state",
            *("--type", "scenario", "--id", "adas-activation", "--state", "Active"),
            *("--reason", "driver request"),
        ],
    ]
    for command in commands:
        assert main(["report", *command, *socket_option]) == EXIT_OK
    await harness.settle(len(commands))
    assert harness.reports == [
        Heartbeat("vision-system", "detect", 5),
        Start("vision-system", "detect", 3, 10),
        End("vision-system", "detect", 3, 20),
        Activation("vision-system", "detect", 4, 30, 45, 25),
        Checkpoint("vision-system", "detect", "pre", 50),
        AppMetric("vision-system", "inference_time", 12.5, "ms"),
        ScenarioExecution("adas-activation", 230.0, "success"),
        StateReport(ResourceType.SCENARIO, "adas-activation", "Active", "driver request"),
    ]


async def test_the_console_script_reports_and_defaults_the_time_to_now(harness: Harness) -> None:
    before = time.monotonic_ns()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "report",
        "heartbeat",
        *("--model", "vision-system", "--task", "detect"),
        env={**os.environ, "PICCOLO_AGENT_INGEST": str(harness.path)},
    )
    assert await process.wait() == EXIT_OK
    await harness.settle(1)
    (report,) = harness.reports
    assert isinstance(report, Heartbeat)
    assert before <= report.ts_ns <= time.monotonic_ns()


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda d: d / "absent.sock", "is piccolo-agent running?"),
        (lambda d: _stale(d / "stale.sock"), "nobody receives on"),
    ],
)
def test_report_exits_1_when_the_agent_cannot_take_it(
    socket_dir: Path,
    capsys: pytest.CaptureFixture[str],
    make_path: Callable[[Path], Path],
    message: str,
) -> None:
    path = make_path(socket_dir)
    command = ["report", "heartbeat", "--model", "m", "--task", "t", *_cli(path)]
    assert main(command) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("warning: ")
    assert message in err


def _stale(path: Path) -> Path:
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(path))
    gone.close()
    return path


@pytest.mark.parametrize(
    "arguments",
    [
        ["heartbeat", "--model", "a/b", "--task", "t"],
        ["heartbeat", "--model", "m", "--task", "x" * 129],
        ["heartbeat", "--model", "m"],
        ["start", "--model", "m", "--task", "t", "--seq", "-1"],
        ["metric", "--model", "m", "--name", "memory_usage", "--value", "1", "--unit", "MB"],
        ["metric", "--model", "m", "--name", "latency", "--value", "inf", "--unit", "ms"],
        ["scenario", "--scenario", "s", "--duration-ms", "-5", "--result", "success"],
        ["state", "--type", "node", "--id", "n", "--state", "Ready"],
        [],
    ],
)
def test_report_refuses_arguments_the_agent_would_drop(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["report", *arguments, "--socket", "/nonexistent/ingest.sock"])
    assert caught.value.code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_the_examples_of_the_protocol_document_parse() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "ingest-protocol.md").read_text(encoding="utf-8")
    lines = [line for line in doc.splitlines() if line.startswith('{"v":1')]
    types = [type(parse(line.encode(), MAX)).__name__ for line in lines]
    assert types == [
        "Start",
        "End",
        "Activation",
        "Heartbeat",
        "Checkpoint",
        "AppMetric",
        "ScenarioExecution",
        "StateReport",
    ]
    assert all(json.loads(line)["v"] == 1 for line in lines)
