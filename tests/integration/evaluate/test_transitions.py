"""State machines judged by the whole agent: an orchestrator report that jumps an edge not in the
graph, and a container created but never started (real Podman, etcd, mosquitto)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.ingest.client import Reporter
from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.services import EtcdServer, MosquittoServer, PodmanService
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "/piccolo/monitoring/"


def of(alerts: list[dict[str, Any]], kind: str, status: str) -> dict[str, Any] | None:
    found = [a for a in alerts if a["kind"] == kind and a["status"] == status]
    return found[-1] if found else None


def seconds(stamp: str) -> float:
    """RFC 3339 with nine fraction digits -> seconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


async def test_a_reported_state_that_jumps_an_edge_not_in_the_graph_is_alerted(
    *,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    alerts: list[dict[str, Any]],
    socket_dir: Path,
    tmp_path: Path,
) -> None:
    graph = {
        "type": "scenario",
        "states": ["inactive", "active", "failed"],
        "transitions": {"inactive": ["active"], "active": ["inactive", "failed"], "failed": []},
    }
    config = live_overrides(
        etcd.endpoint,
        socket_dir,
        mosquitto.endpoint,
        state_transition_tracking__resources=[graph],
    )
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        reporter = Reporter(socket_dir / "ingest.sock")
        assert reporter.state("scenario", "adas-activation", "Idle")  # inactive
        assert reporter.state("scenario", "adas-activation", "Playing")  # -> active: allowed
        await asyncio.sleep(0.5)
        assert of(alerts, "unexpected_transition", "firing") is None
        assert reporter.state("scenario", "adas-activation", "Idle")  # -> inactive: allowed
        assert reporter.state("scenario", "adas-activation", "Error", "crashed")  # not an edge
        firing = await eventually(
            lambda: of(alerts, "unexpected_transition", "firing"), 10, "the alert"
        )
        assert firing["resource"] == {"type": "scenario", "id": "adas-activation"}
        assert firing["severity"] == "critical"  # the scenario is ASIL B
        assert (firing["threshold"], firing["value"]) == ("Idle", "Error")
        # failed has no way out in this graph: Idle is unexpected again (the same episode, counted)
        assert reporter.state("scenario", "adas-activation", "Idle")
        assert reporter.state("scenario", "adas-activation", "Playing")  # inactive -> active
        resolved = await eventually(
            lambda: of(alerts, "unexpected_transition", "resolved"), 10, "the resolution"
        )
        assert resolved["id"] == firing["id"]
        reporter.close()
    finally:
        agent.stop()


async def test_a_container_created_and_never_started_is_stuck_loading(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    store: EtcdStore,
    alerts: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    config = overrides(
        resource_state_monitoring__alerting__stuck_states__thresholds={"loading": "2s"},
    )
    name = f"vision-{time.monotonic_ns()}"
    await asyncio.to_thread(
        podman.podman, "create", "--name", name, "--label=piccolo.io/model=vision-system",
        "--network=none", podman.image, "sleep", "600",
    )  # fmt: skip
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        stuck = await eventually(lambda: of(alerts, "stuck_state", "firing"), 20, "stuck_state")
        assert stuck["resource"] == {"type": "model", "id": "vision-system"}
        raw = await store.get(f"{PREFIX}model/vision-system/state".encode())
        assert raw is not None
        state = json.loads(raw)
        assert state["state"] == "Pending"
        late = seconds(stuck["first_seen"]) - seconds(state["since"]) - 2.0
        assert -0.01 <= late <= 0.1, f"stuck_state fired {late * 1000:.0f} ms after 2 s"
        await asyncio.to_thread(podman.podman, "start", name)
        resolved = await eventually(lambda: of(alerts, "stuck_state", "resolved"), 20, "resolved")
        assert resolved["id"] == stuck["id"]
    finally:
        agent.stop()
        await asyncio.to_thread(podman.podman, "rm", "-f", name, check=False)
