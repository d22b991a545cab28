"""Thresholds judged by the whole agent on a real container (Podman), alerts at a real broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess
from tests.support.services import PodmanService
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MiB = 2**20


def fill_shm(podman: PodmanService, container: str, mib: int) -> None:
    """Make the container hold `mib` MiB of shared memory (charged to its memory cgroup), growing
    or shrinking one file in place, so that the usage never dips on the way."""
    command = (
        f"touch /dev/shm/fill; truncate -s {mib}M /dev/shm/fill; "
        f"dd if=/dev/zero of=/dev/shm/fill bs=1M count={mib} conv=notrunc 2>/dev/null"
    )
    podman.podman("exec", container, "sh", "-c", command)


async def test_memory_past_warning_then_critical_escalates_holds_and_resolves(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    store: EtcdStore,
    alerts: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    config = overrides(
        performance_monitoring__metrics=[
            {"name": "memory_usage", "threshold_warning": "70%", "threshold_critical": "90%"}
        ],
    )
    agent = AgentProcess(tmp_path / "agent", config).start()
    name = f"vision-{time.monotonic_ns()}"
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.to_thread(
            podman.run_container,
            name,
            "--label=piccolo.io/model=vision-system",
            "--memory=100m",
            "--memory-swap=100m",
            "--shm-size=100m",
            command=["sleep", "600"],
        )

        def threshold_alerts() -> list[dict[str, Any]]:
            mine = {"type": "model", "id": "vision-system"}
            return [a for a in alerts if a["kind"] == "threshold" and a["resource"] == mine]

        def latest(status: str, severity: str | None = None) -> dict[str, Any] | None:
            matching = [
                a
                for a in threshold_alerts()
                if a["status"] == status and severity in (None, a["severity"])
            ]
            return matching[-1] if matching else None

        await asyncio.to_thread(fill_shm, podman, name, 75)
        warning = await eventually(lambda: latest("firing", "warning"), 15, "the warning")
        assert warning["metric"] == "memory_usage_percent"
        assert warning["threshold"] == 70.0
        assert 70 <= warning["value"] < 90

        await asyncio.to_thread(fill_shm, podman, name, 93)
        critical = await eventually(lambda: latest("firing", "critical"), 15, "the escalation")
        assert critical["id"] == warning["id"], "escalation keeps the episode"
        assert critical["threshold"] == 90.0

        # Hovering just under the warning level (above 70 % less 5 %): no flapping, no resolution.
        await asyncio.to_thread(fill_shm, podman, name, 68)
        await eventually(
            lambda: latest("firing", "warning") not in (None, warning) or None,
            15,
            "the fall back to warning",
        )
        await asyncio.sleep(3)
        assert latest("resolved") is None, threshold_alerts()

        await asyncio.to_thread(fill_shm, podman, name, 0)
        resolved = await eventually(lambda: latest("resolved"), 15, "the resolution")
        assert resolved["id"] == warning["id"]
        statuses = [(a["status"], a["severity"]) for a in threshold_alerts()]
        assert (
            statuses.count(("resolved", "critical")) + statuses.count(("resolved", "warning")) == 1
        )

        async def events() -> list[dict[str, Any]]:
            entries = await store.get_prefix(b"/piccolo/monitoring/model/vision-system/events/")
            found = [json.loads(v) for _, v in entries]
            return [e for e in found if e["type"] == "threshold"]

        recorded = await eventually(lambda: _at_least(events, 4), 15, "threshold events in etcd")
        assert {e["severity"] for e in recorded} >= {"warning", "critical", "info"}
        log = agent.log()
        assert "alert threshold firing critical of model vision-system" in log
    finally:
        agent.stop()
        podman.podman("rm", "-f", name, check=False)


async def _at_least(probe: Any, count: int) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = await probe()
    return found if len(found) >= count else None
