"""Anomaly detection in a whole agent against real Podman, etcd and mosquitto: a container that
suddenly allocates memory raises `anomaly` once its baseline is learned, never while learning;
the baseline survives a restart; a damaged baseline file is relearned with an event."""

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
LEARN_S = 6.0


def anomaly_config(overrides: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return overrides(
        anomaly_detection={
            "enabled": True,
            "methods": [
                {"type": "statistical", "metrics": ["memory_usage"], "sensitivity": "medium"}
            ],
            "baseline": {"auto_learn": True, "learning_period": f"{LEARN_S}s"},
        },
    )


def learning_left(agent: AgentProcess) -> float | None:
    import http.client  # noqa: PLC0415 - only here

    host, port = agent.config["api"]["listen"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request(
            "GET",
            "/api/v1/monitoring/resources/model/vision-system/metrics"
            "?metric_names=memory_usage_anomaly_learning&source=local",
        )
        document = json.loads(connection.getresponse().read())
    except OSError:
        return None  # not listening yet
    finally:
        connection.close()
    metrics = document.get("metrics") or []
    latest = metrics[0]["latest"] if metrics else None
    return None if latest is None else float(latest["value"])


async def test_sudden_allocation_is_an_anomaly_after_learning_and_the_baseline_persists(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    alerts: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    name = f"vision-{time.monotonic_ns()}"
    # Steady for 20 s (learning takes 6 s and 30 samples at 250 ms), then 60 MB at once.
    script = "sleep 20; x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 600"
    await asyncio.to_thread(
        podman.run_container,
        name,
        "--label=piccolo.io/model=vision-system",
        command=["sh", "-c", script],
    )
    started, wall_started = time.monotonic(), time.time()
    agent = AgentProcess(tmp_path / "agent", anomaly_config(overrides)).start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)

        def fired() -> dict[str, Any] | None:
            found = [
                a
                for a in alerts
                if a["kind"] == "anomaly"
                and a["status"] == "firing"
                and a["resource"]["type"] == "model"
            ]
            return found[0] if found else None

        alert = await eventually(fired, 40, "the anomaly alert")
        arrived = time.monotonic() - started
        assert arrived >= 20, f"an anomaly {arrived:.1f} s in, before the allocation"
        # Nothing of the model fired before the allocation, while learning or steady. (The
        # node's memory_usage is judged too, the method naming a metric, not a type; on a
        # shared machine other processes move it, so it is not part of this check.)
        allocation = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_started + 19.5))
        model = [
            a
            for a in alerts
            if a["kind"] == "anomaly" and a["resource"] == {"type": "model", "id": "vision-system"}
        ]
        assert all(a["first_seen"] >= allocation for a in model), model
        assert alert["resource"] == {"type": "model", "id": "vision-system"}
        assert alert["metric"] == "memory_usage"
        assert alert["severity"] == "warning"
        # The payload is the episode's latest state (a queued alert is brought up to date in
        # place): the value and the expected range of its newest anomalous point.
        low, high = (float(v) for v in str(alert["threshold"]).split(".."))
        assert low < high
        assert isinstance(alert["value"], int | float)
        assert "is anomalous" in alert["message"]
        assert arrived < 20 + 10, f"the anomaly came {arrived - 20:.1f} s after the allocation"
        assert "score" in alert["message"]
        assert await asyncio.to_thread(learning_left, agent) == 0.0
        assert agent.stop() == 0
        baselines = agent.state_dir / "anomaly-baselines.json"
        saved = json.loads(baselines.read_text())
        assert saved["format"] == 1
        assert "model/vision-system/memory_usage" in saved["series"]

        # The same series after a restart is not learning again.
        agent.start()
        await asyncio.to_thread(agent.wait_for_log, "anomaly baselines of", 30)

        def learned() -> float | None:
            left = learning_left(agent)
            return None if left is None else left + 1.0  # 1.0: learned (truthy)

        assert await eventually(lambda: asyncio.to_thread(learned), 15, "the series") == 1.0
    finally:
        agent.kill()
        await asyncio.to_thread(podman.podman, "rm", "-f", name, check=False)


async def test_a_damaged_baseline_file_is_relearned_with_an_event(
    *, overrides: Callable[..., dict[str, Any]], store: EtcdStore, tmp_path: Path
) -> None:
    agent = AgentProcess(tmp_path / "agent", anomaly_config(overrides))
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    (agent.state_dir / "anomaly-baselines.json").write_text('{"format": 1, "series": {"x": [')
    agent.start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.to_thread(agent.wait_for_log, "anomaly baselines", 10)

        async def event() -> dict[str, Any] | None:
            found = await store.get_prefix(f"{PREFIX}node/VisionHPC/events/".encode())
            for _, raw in found:
                document = json.loads(raw)
                if document["type"] == "anomaly_baselines_damaged":
                    return dict(document)
            return None

        document = await eventually(event, 20, "the anomaly_baselines_damaged event")
        assert "relearning every series" in document["message"]
        assert (agent.state_dir / "anomaly-baselines.damaged").exists()
    finally:
        agent.kill()
