"""The application's client: what it sends parses back; an absent or busy agent costs nothing."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ingest import client
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
from agent.model import ResourceType
from tests.support.seed import REPO

MAX = 4096


@pytest.fixture
def receiver(socket_dir: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(socket_dir / "ingest.sock"))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def path_of(sock: socket.socket) -> str:
    name: str = sock.getsockname()
    return name


def received(sock: socket.socket) -> Report:
    return parse(sock.recv(MAX + 1), MAX)


def test_every_report_parses_back_as_sent(receiver: socket.socket) -> None:
    reporter = Reporter(path_of(receiver), model="vision-system")
    assert reporter.start("detect", 7, release_ns=90, ts_ns=100) == 7
    assert reporter.end("detect", 7, ts_ns=150)
    assert reporter.report_activation("plan", 200, 260, 3, release_ns=190)
    assert reporter.report_activation("plan", 300, 360, 4)
    assert reporter.heartbeat("detect", ts_ns=400)
    assert reporter.checkpoint("detect", "preprocessed", ts_ns=500)
    assert reporter.metric("inference_time", 12.5, "ms")
    assert reporter.metric("throughput", 30, "1/s")
    assert reporter.scenario("adas-activation", 230, "success")
    assert reporter.state("scenario", "adas-activation", "Active", "driver request")
    assert reporter.state("model", "vision-system", "Running")
    expected: list[Report] = [
        Start("vision-system", "detect", 7, 100, 90),
        End("vision-system", "detect", 7, 150),
        Activation("vision-system", "plan", 3, 200, 260, 190),
        Activation("vision-system", "plan", 4, 300, 360),
        Heartbeat("vision-system", "detect", 400),
        Checkpoint("vision-system", "detect", "preprocessed", 500),
        AppMetric("vision-system", "inference_time", 12.5, "ms"),
        AppMetric("vision-system", "throughput", 30, "1/s"),
        ScenarioExecution("adas-activation", 230, "success"),
        StateReport(ResourceType.SCENARIO, "adas-activation", "Active", "driver request"),
        StateReport(ResourceType.MODEL, "vision-system", "Running", ""),
    ]
    assert [received(receiver) for _ in expected] == expected
    assert (reporter.sent, reporter.dropped, reporter.last_error) == (len(expected), 0, 0)


def test_activation_scope_numbers_activations_per_task_and_times_them(
    receiver: socket.socket,
) -> None:
    reporter = Reporter(path_of(receiver), model="vision-system")
    before = time.monotonic_ns()
    with reporter.activation("detect") as first:
        pass
    with reporter.activation("detect", release_ns=before) as second:
        pass
    with reporter.activation("plan") as other:
        pass
    after = time.monotonic_ns()
    assert (first, second, other) == (0, 1, 0)
    reports = [received(receiver) for _ in range(6)]
    starts = [r for r in reports if isinstance(r, Start)]
    ends = [r for r in reports if isinstance(r, End)]
    assert [(r.task, r.seq) for r in starts] == [("detect", 0), ("detect", 1), ("plan", 0)]
    assert [(r.task, r.seq) for r in ends] == [("detect", 0), ("detect", 1), ("plan", 0)]
    assert starts[1].release_ns == before
    for start, end in zip(starts, ends, strict=True):
        assert before <= start.ts_ns <= end.ts_ns <= after


def test_the_end_is_sent_when_the_activation_raises(receiver: socket.socket) -> None:
    reporter = Reporter(path_of(receiver), model="m")
    with pytest.raises(RuntimeError), reporter.activation("t"):
        raise RuntimeError
    assert [type(received(receiver)) for _ in range(2)] == [Start, End]


def test_start_without_seq_continues_the_task_counter(receiver: socket.socket) -> None:
    reporter = Reporter(path_of(receiver), model="m")
    assert [reporter.start("t") for _ in range(3)] == [0, 1, 2]
    assert reporter.start("t", 40) == 40


def test_names_that_need_escaping_still_make_valid_json(receiver: socket.socket) -> None:
    reporter = Reporter(path_of(receiver), model='m"\\\n')
    reporter.heartbeat('t"')
    reporter.state("model", "x", "Failed", 'quoted "reason" with ümlaut\t')
    # The agent refuses the names, but as bad fields: the JSON itself is intact.
    with pytest.raises(Malformed) as caught:
        received(receiver)
    assert caught.value.reason == "bad_field"
    state = received(receiver)
    assert isinstance(state, StateReport)
    assert state.reason == 'quoted "reason" with ümlaut\t'


def test_an_absent_agent_costs_a_counted_drop_and_nothing_else(socket_dir: Path) -> None:
    reporter = Reporter(socket_dir / "absent.sock", model="m")
    began = time.perf_counter()
    for _ in range(1000):
        assert not reporter.heartbeat("t")
        with reporter.activation("t"):
            pass
    elapsed = time.perf_counter() - began
    assert (reporter.sent, reporter.dropped, reporter.last_error) == (0, 3000, errno.ENOENT)
    assert elapsed < 1.0, f"3000 drops took {elapsed:.3f} s"


def test_a_stale_socket_file_is_a_counted_drop(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(path))
    gone.close()  # the file stays; nobody receives
    reporter = Reporter(path, model="m")
    assert not reporter.heartbeat("t")
    assert (reporter.dropped, reporter.last_error) == (1, errno.ECONNREFUSED)


def test_a_full_queue_drops_without_blocking(socket_dir: Path) -> None:
    path = socket_dir / "busy.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    busy.bind(str(path))  # and never read
    reporter = Reporter(path, model="m")
    began = time.perf_counter()
    outcomes = [reporter.heartbeat("t") for _ in range(5000)]
    elapsed = time.perf_counter() - began
    busy.close()
    # The kernel queues net.unix.max_dgram_qlen + 1 datagrams (or fewer, by the sender's buffer).
    assert outcomes[0]
    assert not outcomes[-1]
    assert reporter.sent + reporter.dropped == 5000
    assert 0 < reporter.sent < 5000
    assert reporter.last_error in {errno.EAGAIN, errno.ENOBUFS}
    assert elapsed < 2.0, f"5000 sends into a full queue took {elapsed:.3f} s"


def test_a_restarted_agent_is_found_again(socket_dir: Path) -> None:
    path = socket_dir / "ingest.sock"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(path))
    first.settimeout(2.0)
    reporter = Reporter(path, model="m")
    assert reporter.heartbeat("t", ts_ns=1)
    assert received(first) == Heartbeat("m", "t", 1)
    first.close()
    path.unlink()
    assert not reporter.heartbeat("t", ts_ns=2)  # the agent is away meanwhile
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(str(path))
    second.settimeout(2.0)
    assert reporter.heartbeat("t", ts_ns=3)
    assert received(second) == Heartbeat("m", "t", 3)
    second.close()
    # A restart between two sends: the connected peer is gone; one send reconnects.
    third = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path.unlink()
    third.bind(str(path))
    third.settimeout(2.0)
    assert reporter.heartbeat("t", ts_ns=4)
    assert received(third) == Heartbeat("m", "t", 4)
    third.close()
    assert (reporter.sent, reporter.dropped) == (3, 1)


def test_a_reporter_without_a_model_sends_only_orchestrator_reports(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(client.MODEL_VARIABLE, raising=False)
    reporter = Reporter(path_of(receiver))
    assert reporter.scenario("s", 1.5, "failure")
    assert received(receiver) == ScenarioExecution("s", 1.5, "failure")
    with pytest.raises(ValueError, match="no model"):
        reporter.heartbeat("t")


def test_module_functions_use_the_environment_or_configure(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_default", None)
    monkeypatch.setenv(client.PATH_VARIABLE, path_of(receiver))
    monkeypatch.setenv(client.MODEL_VARIABLE, "from-env")
    assert client.heartbeat("t")
    assert isinstance(received(receiver), Heartbeat)
    with client.activation("t") as seq:
        assert seq == 0
    start, end = received(receiver), received(receiver)
    assert isinstance(start, Start)
    assert (start.model, start.task, start.seq) == ("from-env", "t", 0)
    assert end == End("from-env", "t", 0, end.ts_ns)  # type: ignore[union-attr]
    client.configure(path_of(receiver), "configured")
    assert client.report_activation("t", 1, 2, 9)
    assert received(receiver) == Activation("configured", "t", 9, 1, 2)
    assert client.default_reporter().model == "configured"
    assert client.start("u") == 0
    assert client.end("u", 0)
    assert client.checkpoint("u", "c")
    assert client.metric("latency", 1, "ms")
    assert client.scenario("s", 1, "success")
    assert client.state("package", "p", "Ready")
    kinds = [type(received(receiver)) for _ in range(6)]
    assert kinds == [Start, End, Checkpoint, AppMetric, ScenarioExecution, StateReport]


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(client.PATH_VARIABLE, raising=False)
    monkeypatch.delenv(client.MODEL_VARIABLE, raising=False)
    reporter = Reporter()
    assert (reporter.path, reporter.model) == ("/run/piccolo-agent/ingest.sock", None)


def test_sending_takes_microseconds(receiver: socket.socket) -> None:
    reporter = Reporter(path_of(receiver), model="vision-system")
    receiver.settimeout(0.0)
    count = 2000
    began = time.perf_counter()
    for seq in range(count):
        reporter.report_activation("detect", seq, seq + 1, seq)
        if seq % 8 == 7:  # keep the short kernel queue from filling
            while True:
                try:
                    receiver.recv(MAX)
                except BlockingIOError:
                    break
    per_send = (time.perf_counter() - began) / count
    # About 5 µs on the development machine; the bound only catches blocking or a slow path.
    assert per_send < 500e-6, f"{per_send * 1e6:.1f} µs per send"


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import agent.ingest.client as client
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"pydantic", "yaml", "aetcd", "psutil"})
agents = sorted(m for m in sys.modules if m.startswith("agent"))
print(heavy, agents)
reporter = client.Reporter(sys.argv[2], model="m")
reporter.heartbeat("t", ts_ns=5)
print(reporter.sent)
"""


def test_the_client_needs_only_the_standard_library(receiver: socket.socket) -> None:
    # -S: no site-packages (the agent's dependencies are not importable); -I: isolated.
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", CHILD, str(REPO), path_of(receiver)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert result.stdout.splitlines() == [
        "[] ['agent', 'agent.ingest', 'agent.ingest.client']",
        "1",
    ]
    assert received(receiver) == Heartbeat("m", "t", 5)


def test_the_client_file_works_when_copied_alone(receiver: socket.socket, socket_dir: Path) -> None:
    copy = socket_dir / "piccolo_client.py"
    shutil.copy(REPO / "agent" / "ingest" / "client.py", copy)
    program = (
        "import sys, piccolo_client; "
        "r = piccolo_client.Reporter(sys.argv[1], model='m'); r.heartbeat('t', ts_ns=6)"
    )
    subprocess.run(
        [sys.executable, "-S", "-c", program, path_of(receiver)],
        cwd=socket_dir,
        check=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert received(receiver) == Heartbeat("m", "t", 6)
