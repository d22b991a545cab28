"""The whole agent with real Podman and etcd: model and package status documents, and `status`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess
from tests.support.seed import REPO
from tests.support.services import EtcdServer, PodmanService
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "/piccolo/monitoring/"


async def document(store: EtcdStore, key: str) -> dict[str, Any] | None:
    raw = await store.get((PREFIX + key).encode())
    return None if raw is None else json.loads(raw)


async def wait_for(store: EtcdStore, key: str, test: Any, seconds: float = 20) -> dict[str, Any]:
    """The document at `key` once it passes `test`."""
    last: dict[str, Any] | None = None

    async def passing() -> dict[str, Any] | None:
        nonlocal last
        last = await document(store, key)
        return last if last is not None and test(last) else None

    return await eventually(passing, seconds, lambda: f"{key} to pass (last: {last})", interval=0.1)


async def test_models_and_packages_reach_etcd_and_status_shows_them(
    podman: PodmanService, etcd: EtcdServer, store: EtcdStore, tmp_path: Path
) -> None:
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "data_storage.configuration.endpoints": [etcd.endpoint],
            "resource_monitoring.container.socket": str(podman.socket),
            "resource_monitoring.container.collection_interval": "500ms",
        },
    )
    agent.start()
    try:
        pending = await wait_for(
            store, "model/vision-system", lambda d: d["status"]["phase"] == "Pending"
        )
        assert pending["status"]["reason"] == "no container for this model"
        await asyncio.to_thread(
            podman.run_container,
            f"vision-{time.monotonic_ns()}",
            "--label=piccolo.io/model=vision-system",
            "--memory=64m",
            command=["sleep", "120"],
        )
        running = await wait_for(
            store, "model/vision-system", lambda d: d["status"]["phase"] == "Running"
        )
        status = running["status"]
        assert status["containerStatuses"][0]["ready"] is True
        assert status["metrics"]["loadStatus"] == "Loaded"
        assert status["metrics"]["safetyMetrics"]["asilLevel"] == "B"
        package = await wait_for(
            store,
            "package/vision-processing",
            lambda d: d["status"]["metrics"]["deploymentStatus"] == "Deployed",
        )
        assert package["status"]["metrics"]["version"] == "2.3"
        timed = await wait_for(
            store,
            "package/vision-processing",
            lambda d: d["status"]["metrics"]["deploymentTime"] is not None,
        )
        assert timed["status"]["lastTransitionTime"] is not None
        assert timed["status"]["metrics"]["lastUpdateTime"] is not None
        state = await document(store, "model/vision-system/state")
        assert state is not None
        assert (state["previous"], state["state"]) == ("Pending", "Running")
        memory = await wait_for(
            store,
            "model/vision-system/metrics/memory_usage_percent",
            lambda d: d["value"] is not None,
        )
        assert 0 < memory["value"] < 100

        config = agent.config_path
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("node VisionHPC: agent 0.1.0")
        vision = next(line for line in lines if line.startswith("vision-system "))
        assert vision.split()[1:3] == ["Running", "yes"]
        deployed = next(line for line in lines if line.startswith("vision-processing "))
        assert deployed.split()[1:4] == ["Deployed", "running", "1/1"]
    finally:
        assert agent.stop() == 0
