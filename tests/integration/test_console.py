"""`query`, `status` and `top` as a user runs them, against a whole agent and a real etcd; `top`
in a real terminal (tmux)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.seed import REPO
from tests.support.services import EtcdServer
from tests.support.waiting import eventually_sync as wait_until

pytestmark = pytest.mark.integration


def cli(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def agent(etcd: EtcdServer, socket_dir: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path / "agent", live_overrides(etcd.endpoint, socket_dir)).start()
    proc.wait_for_log("ready in", 30)
    proc.wait_for_log("this agent is now the elected agent", 30)
    yield proc
    proc.kill()


def test_query_asks_the_agent_and_with_etcd_needs_none(agent: AgentProcess) -> None:
    def answered() -> dict[str, Any] | None:
        done = cli(
            "query", "metrics", "node", "VisionHPC", "--names", "cpu_usage", "--json",
            config=agent.config_path,
        )  # fmt: skip
        if done.returncode != 0:
            return None
        document = json.loads(done.stdout)
        latest = document["metrics"][0]["latest"]
        return document if latest is not None else None

    document = wait_until(answered, 20, "cpu_usage through query")
    assert document["source"] == "etcd"
    text = cli("query", "metrics", "node", "VisionHPC", config=agent.config_path)
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].split() == [
        "METRIC", "VALUE", "UNIT", "AT", "WINDOWS", "MIN", "MAX",
    ]  # fmt: skip
    agent.kill()
    # No agent: query says so and exits 1; --etcd reads etcd itself.
    refused = cli("query", "events", "model", "sensor-fusion", config=agent.config_path)
    assert refused.returncode == 1
    assert "no agent answers at" in refused.stderr
    direct = cli(
        "query", "events", "model", "sensor-fusion", "--etcd", "--json", config=agent.config_path
    )
    assert direct.returncode == 0, direct.stderr
    events = json.loads(direct.stdout)["events"]
    assert [e["type"] for e in events] == ["node_absent"]
    bad = cli("query", "state", "model", "no-such-model", "--etcd", config=agent.config_path)
    assert bad.returncode == 1
    assert "404" in bad.stderr


def test_status_is_live_tells_where_it_read_and_fails_when_nothing_answers(
    agent: AgentProcess, tmp_path: Path
) -> None:
    def live() -> dict[str, Any] | None:
        done = cli("status", "--json", config=agent.config_path)
        document = json.loads(done.stdout)
        return document if document["live"] else None

    document = wait_until(live, 20, "live values in status --json")
    assert document["agent"] == {"answering": True, "detail": "healthy"}
    assert str(document["source"]).startswith("etcd ")
    assert set(document["live"]) == {"adas-planner", "vision-system"}
    text = cli("status", config=agent.config_path)
    assert "agent 0.1.0 answering (healthy)" in text.stdout
    assert "live values from the agent" in text.stdout
    # Nothing to read: no etcd, no buffer, no agent.
    config = tmp_path / "alone.yaml"
    config.write_text(
        f"manifests: {{paths: ['{REPO / 'config' / 'manifests'}']}}\n"
        "data_storage: {configuration: {endpoints: ['127.0.0.1:9'], dial_timeout: 1s}}\n"
        "api: {listen: '127.0.0.1:9'}\n"
    )
    nothing = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "empty")},
    )
    assert nothing.returncode == 1
    assert "not answering" in nothing.stdout
    assert "no buffer at" in nothing.stdout
    assert "nothing could be read" in nothing.stderr


def test_top_draws_80_by_24_sorts_and_quits_on_q(agent: AgentProcess) -> None:
    tmux = require_binary("tmux")
    session = f"piccolo-top-{uuid.uuid4().hex[:6]}"
    command = f"{sys.executable} -m agent top --config {agent.config_path}"
    subprocess.run(
        [
            tmux,
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "24",
            "-c",
            str(REPO),
            command,
        ],
        check=True,
        timeout=10,
    )

    def pane() -> str:
        done = subprocess.run(
            [tmux, "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout

    def alive() -> bool:
        done = subprocess.run(
            [tmux, "has-session", "-t", session], capture_output=True, check=False
        )
        return done.returncode == 0

    try:
        screen = wait_until(lambda: pane() if "vision-system" in pane() else None, 20, "top")
        lines = screen.splitlines()
        assert all(len(line) <= 80 for line in lines)
        assert len(lines) <= 24
        assert lines[0].startswith("piccolo-agent top - node VisionHPC")
        assert any(line.startswith("MODEL") for line in lines)
        assert any(line.startswith("ALERTS FIRING") for line in lines)
        subprocess.run([tmux, "send-keys", "-t", session, "c"], check=True, timeout=10)
        wait_until(lambda: "sort cpu" in pane() or None, 10, "the sort by CPU")
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(), "top did not quit on q"
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True, check=False)


def test_report_stamps_times_itself_and_wall_clock_times_are_refused_by_both(
    agent: AgentProcess, socket_dir: Path
) -> None:
    sock = str(socket_dir / "ingest.sock")
    base = [
        "report",
        "activation",
        "--socket",
        sock,
        "--model",
        "vision-system",
        "--task",
        "detect",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "agent", *base, "--seq", "1", "--start", "now", "--duration", "9ms"],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wall = str(time.time_ns())
    refused = subprocess.run(
        [sys.executable, "-m", "agent", *base, "--seq", "2", "--start", wall, "--duration", "9ms"],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "is a wall-clock time (as date +%s%N prints)" in refused.stderr
    # Sent by anything else, the agent refuses it and counts it.
    message = {
        "v": 1, "type": "activation", "model": "vision-system", "task": "detect", "seq": 3,
        "start_ns": time.time_ns(), "end_ns": time.time_ns() + 9_000_000,
    }  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(json.dumps(message).encode(), sock)

    def counted() -> str | None:
        host, port = agent.config["api"]["listen"].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        connection.close()
        line = 'piccolo_agent_ingest_dropped_total{node="VisionHPC",reason="wall_clock_time"} 1'
        return body if line in body else None

    wait_until(counted, 15, "the wall_clock_time drop in /metrics")
