"""The agent as systemd runs it: a subprocess with a real notify socket and a real journald."""

from __future__ import annotations

import itertools
import shutil
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from agent.app import STOP_MARGIN_S, STOP_STAGES
from tests.support.agentproc import AgentProcess
from tests.support.seed import REPO
from tests.support.services import Journald, NotifySocket

pytestmark = pytest.mark.integration

WATCHDOG_S = 1.0
BLOCK_S = 3.0
STOP_BUDGET_S = sum(stage.timeout_s for stage in STOP_STAGES) + STOP_MARGIN_S


@dataclass
class RunningAgent:
    proc: AgentProcess
    notify: NotifySocket

    @property
    def config(self) -> Path:
        return self.proc.config_path

    @property
    def identifier(self) -> str:
        return self.proc.identifier

    @property
    def running(self) -> bool:
        return self.proc.running

    def signal(self, sig: signal.Signals) -> float:
        return self.proc.signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        self.proc.kill()
        return self.proc.log()


class StartAgent(Protocol):
    def __call__(
        self, *, env: dict[str, str] | None = None, **overrides: object
    ) -> RunningAgent: ...


@pytest.fixture
def start_agent(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[StartAgent]:
    started: list[AgentProcess] = []

    def start(*, env: dict[str, str] | None = None, **overrides: object) -> RunningAgent:
        environ = {
            **notify_socket.env,
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
            "PICCOLO_AGENT_TEST_HOOKS": "1",
            "PICCOLO_AGENT_TEST_BLOCK_S": str(BLOCK_S),
            **(env or {}),
        }
        dotted = {key.replace("__", "."): value for key, value in overrides.items()}
        proc = AgentProcess(tmp_path / f"agent{len(started)}", dotted, environ).start()
        started.append(proc)
        return RunningAgent(proc, notify_socket)

    yield start
    for proc in started:
        proc.kill()


def test_ready_then_watchdog_pets_at_half_the_timeout(start_agent: StartAgent) -> None:
    agent = start_agent()
    ready = agent.notify.wait_for("READY", "1", timeout=10)
    assert agent.running
    time.sleep(3.2)
    pets = [t for t in agent.notify.watchdog_times() if t > ready]
    gaps = [b - a for a, b in itertools.pairwise(pets)]
    assert len(pets) >= 5, pets
    assert 0.4 <= statistics.median(gaps) <= 0.6, gaps
    assert max(gaps) < WATCHDOG_S, gaps
    statuses = agent.notify.values("STATUS")
    assert statuses[0] == "starting"
    assert any(s.startswith("running: node VisionHPC, 2 models") for s in statuses), statuses


def test_ready_comes_after_the_first_collection(start_agent: StartAgent) -> None:
    agent = start_agent()
    agent.notify.wait_for("READY", "1", timeout=10)
    ready_status = next(
        m.fields["STATUS"] for m in agent.notify.messages if m.fields.get("READY") == "1"
    )
    assert "0 collections" not in ready_status, ready_status


def test_blocked_event_loop_stops_the_pets(start_agent: StartAgent) -> None:
    agent = start_agent()
    agent.notify.wait_for("READY", "1", timeout=10)
    agent.notify.wait_for("WATCHDOG", "1", timeout=3)
    blocked_at = agent.signal(signal.SIGUSR2)
    time.sleep(BLOCK_S + 1.5)
    pets = agent.notify.watchdog_times()
    before = max(t for t in pets if t <= blocked_at)
    after = min(t for t in pets if t > blocked_at)
    # systemd would have fired: no pet for longer than the watchdog timeout while blocked ...
    assert after - before > WATCHDOG_S + 1.0, (before, after)
    assert after >= blocked_at + BLOCK_S - 0.1
    # ... and the pets come back once the loop runs again.
    assert any(t > after for t in agent.notify.watchdog_times())


def test_sigterm_gives_stopping_and_exit_0_within_the_budget(start_agent: StartAgent) -> None:
    agent = start_agent()
    agent.notify.wait_for("READY", "1", timeout=10)
    sent = agent.signal(signal.SIGTERM)
    stopping = agent.notify.wait_for("STOPPING", "1", timeout=5)
    assert agent.wait(timeout=STOP_BUDGET_S) == 0
    assert stopping - sent < 1.0
    stages = [s for s in agent.notify.values("STATUS") if s.startswith("stopping: ")]
    assert stages == [f"stopping: {stage.name}" for stage in STOP_STAGES]


def test_hung_stop_stage_times_out_and_the_agent_still_exits_0(start_agent: StartAgent) -> None:
    agent = start_agent(env={"PICCOLO_AGENT_TEST_SLOW_STOP_S": "60"})
    agent.notify.wait_for("READY", "1", timeout=10)
    sent = agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=STOP_BUDGET_S) == 0
    flush = next(s for s in STOP_STAGES if s.name == "flush_outputs")
    assert time.monotonic() - sent >= flush.timeout_s - 0.2
    assert "stop stage flush_outputs exceeded" in agent.output()


def test_second_sigint_forces_the_stop(start_agent: StartAgent) -> None:
    agent = start_agent(env={"PICCOLO_AGENT_TEST_SLOW_STOP_S": "60"})
    agent.notify.wait_for("READY", "1", timeout=10)
    agent.signal(signal.SIGINT)
    agent.notify.wait_for("STATUS", "stopping: flush_outputs", timeout=5)
    forced = agent.signal(signal.SIGINT)
    assert agent.wait(timeout=3) == 1
    assert time.monotonic() - forced < 2.0
    assert "second SIGINT: forcing the stop" in agent.output()


def test_sighup_with_a_broken_config_keeps_running(start_agent: StartAgent) -> None:
    agent = start_agent()
    ready = agent.notify.wait_for("READY", "1", timeout=10)
    good = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(good + "\nbuffer:\n  sync: sometimes\n", encoding="utf-8")
    sent = agent.signal(signal.SIGHUP)
    reloading = agent.notify.wait_for("RELOADING", "1", timeout=5, after=ready)
    again = agent.notify.wait_for("READY", "1", timeout=5, after=reloading)
    assert reloading >= sent - 0.01
    statuses = agent.notify.values("STATUS")
    assert any(s.endswith("(last reload rejected)") for s in statuses), statuses
    # Still alive and feeding the watchdog on the old configuration.
    agent.notify.wait_for("WATCHDOG", "1", timeout=2, after=again)
    assert agent.running
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=STOP_BUDGET_S) == 0


def test_sighup_applies_a_valid_config_but_keeps_the_node_identity(
    start_agent: StartAgent,
) -> None:
    agent = start_agent()
    ready = agent.notify.wait_for("READY", "1", timeout=10)
    config = agent.proc.config
    config["manifests"]["paths"] = [str(REPO / "config" / "manifests" / "vision-processing.yaml")]
    config["node"]["name"] = "ChassisECU"
    agent.proc.write_config(config)
    agent.signal(signal.SIGHUP)
    reloading = agent.notify.wait_for("RELOADING", "1", timeout=5, after=ready)
    agent.notify.wait_for("READY", "1", timeout=5, after=reloading)
    statuses = agent.notify.values("STATUS")
    expected = "running: node VisionHPC, 1 model, 1 package, 0 scenarios"
    assert any(s.startswith(expected) for s in statuses), statuses
    agent.proc.wait_for_log("changes to node take effect at the next start")
    # Each model the reload took off this node is named.
    agent.proc.wait_for_log("is no longer in this node's inventory")


@pytest.mark.parametrize("text", ["", "  \n\n"], ids=["empty", "whitespace"])
def test_sighup_with_an_empty_config_keeps_the_inventory(
    start_agent: StartAgent, text: str
) -> None:
    agent = start_agent()
    ready = agent.notify.wait_for("READY", "1", timeout=10)
    before = agent.notify.values("STATUS")[-1]
    agent.config.write_text(text, encoding="utf-8")  # as a truncated write leaves it
    agent.signal(signal.SIGHUP)
    reloading = agent.notify.wait_for("RELOADING", "1", timeout=5, after=ready)
    agent.notify.wait_for("READY", "1", timeout=5, after=reloading)
    after = agent.notify.values("STATUS")[-1]
    assert after.endswith("(last reload rejected)"), after
    assert after.split(";")[0] == before.split(";")[0]  # the same models, packages, scenarios
    agent.proc.wait_for_log("the file is empty")
    assert "no longer in this node's inventory" not in agent.output()


def test_logs_land_in_journald_with_their_fields(
    start_agent: StartAgent, journald: Journald
) -> None:
    agent = start_agent(logging__target="journald")
    agent.notify.wait_for("READY", "1", timeout=10)
    ready = journald.read(agent.identifier, match={"PRIORITY": "6"}, timeout=5)
    assert any(e["MESSAGE"].startswith("ready in ") for e in ready), ready
    models = journald.read(
        agent.identifier,
        match={"PICCOLO_RESOURCE_TYPE": "model", "PICCOLO_RESOURCE_ID": "vision-system"},
    )
    assert len(models) == 1
    assert models[0]["MESSAGE"].startswith("monitoring model vision-system (ASIL B")
    agent.config.write_text("buffer: [\n", encoding="utf-8")
    agent.signal(signal.SIGHUP)
    rejected = journald.read(agent.identifier, match={"PRIORITY": "3"}, timeout=5)
    assert any("reload rejected" in e["MESSAGE"] for e in rejected), rejected
    assert any("invalid YAML" in e["MESSAGE"] for e in rejected), rejected


def test_a_changed_manifest_folder_is_applied_like_a_reload(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    shutil.copy(REPO / "config" / "manifests" / "vision-processing.yaml", folder)
    missing = tmp_path / "not-there-yet"
    agent = start_agent(manifests__paths=[str(folder), str(missing)], manifests__watch="200ms")
    ready = agent.notify.wait_for("READY", "1", timeout=10)
    agent.proc.wait_for_log(f"manifest folder {missing} does not exist (yet)")
    statuses = agent.notify.values("STATUS")
    assert any("1 model, 1 package" in s for s in statuses), statuses
    shutil.copy(REPO / "config" / "manifests" / "adas-software.yaml", folder)
    agent.notify.wait_for("RELOADING", "1", timeout=10, after=ready)
    agent.proc.wait_for_log("the manifest files changed: applying them")
    agent.proc.wait_for_log("reloaded: running: node VisionHPC, 2 models, 2 packages")
