"""Dependency impact judged by the whole agent: a model's container killed (real Podman, etcd,
mosquitto) turns its package and scenario Error and raises one alert naming them."""

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

PREFIX = "/piccolo/monitoring/"


async def value(store: EtcdStore, key: str) -> Any:
    raw = await store.get(f"{PREFIX}{key}".encode())
    return None if raw is None else json.loads(raw)["value"]


async def test_a_killed_model_impacts_its_package_and_scenario_with_one_alert(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    store: EtcdStore,
    alerts: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    config = overrides(
        resource_monitoring__scenario__collection_interval="500ms",
    )
    name = f"vision-{time.monotonic_ns()}"
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.to_thread(
            podman.run_container,
            name,
            "--label=piccolo.io/model=vision-system",
            command=["sleep", "600"],
        )
        scenario = "scenario/adas-activation/metrics/dependency_status"
        package = "package/vision-processing/metrics/dependency_status"

        async def package_ok() -> bool:
            return bool(await value(store, package) == "OK")

        await eventually(package_ok, 20, "the package OK with its model running")
        # adas-software's models are not running here: the scenario is Warning, not Error.
        assert await value(store, scenario) == "Warning"
        killed = time.monotonic()
        await asyncio.to_thread(podman.podman, "kill", name)

        def impact() -> dict[str, Any] | None:
            found = [a for a in alerts if a["kind"] == "dependency_impact"]
            return found[0] if found else None

        alert = await eventually(impact, 20, "the dependency_impact alert")
        took_ms = (time.monotonic() - killed) * 1000
        assert alert["status"] == "firing"
        assert alert["severity"] == "critical"  # propagation rule from_state: failed
        assert alert["resource"] == {"type": "model", "id": "vision-system"}
        assert "package/vision-processing" in alert["message"]
        assert "scenario/adas-activation" in alert["message"]

        async def errors() -> bool:
            statuses = (await value(store, scenario), await value(store, package))
            return statuses == ("Error", "Error")

        await eventually(errors, 20, "the package and the scenario in Error in etcd")

        async def document() -> dict[str, Any] | None:
            raw = await store.get(f"{PREFIX}scenario/adas-activation".encode())
            status: dict[str, Any] = json.loads(raw)["status"] if raw else {}
            details = status.get("metrics", {}).get("dependencyDetails", [])
            wanted = {"resourceType": "Package", "resourceName": "vision-processing"}
            if any(d.items() >= wanted.items() and d["status"] == "Error" for d in details):
                return status
            return None

        status = await eventually(document, 20, "the scenario document's dependencyDetails")
        packages = {p["name"]: p["status"] for p in status["activePackages"]}
        assert packages["vision-processing"] == "error"
        await asyncio.sleep(1)
        impacts = [a for a in alerts if a["kind"] == "dependency_impact"]
        assert len(impacts) == 1, [(a["resource"], a["value"], a["message"]) for a in impacts]
        events = await store.get_prefix(f"{PREFIX}scenario/adas-activation/events/".encode())
        kinds = [json.loads(v)["type"] for _, v in events]
        assert "dependency_impact" in kinds
        assert took_ms < 5000
    finally:
        agent.stop()
        await asyncio.to_thread(podman.podman, "rm", "-f", name, check=False)
