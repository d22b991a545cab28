from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.evaluate.packages import PackageFacts, deployment, package_status
from agent.manifests import Package, load_manifests
from agent.model import ModelView
from tests.support.seed import REPO

S = 1_000_000_000


@pytest.fixture
def package() -> Package:
    found = load_manifests([REPO / "config" / "manifests" / "adas-software.yaml"])
    return next(i.manifest for i in found if isinstance(i.manifest, Package))


def view(name: str, phase: str, node: str = "VisionHPC", **more: Any) -> ModelView:
    return ModelView(name=name, node=node, phase=phase, reason="", source="container", **more)


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        (("Running", "Running"), ("Deployed", "running")),
        (("Running", "Pending"), ("Undeployed", "initializing")),
        (("Running", "Failed"), ("Failed", "degraded")),
        (("Failed", "Pending"), ("Failed", "error")),
        (("Running", "Unknown"), ("Undeployed", "degraded")),
        ((None, "Running"), ("Undeployed", "degraded")),
    ],
)
def test_deployment_is_deployed_only_when_every_model_runs(
    phases: tuple[str | None, ...], expected: tuple[str, str]
) -> None:
    views = {
        f"m{i}": None if phase is None else view(f"m{i}", phase) for i, phase in enumerate(phases)
    }
    assert deployment(views) == expected


def test_status_document_of_a_two_node_package(package: Package, tmp_path: Path) -> None:
    del tmp_path
    views = {
        "adas-planner": view(
            "adas-planner",
            "Running",
            ready=True,
            created_ns=100 * S,
            started_ns=101 * S,
            memory_mb=40.0,
            image="vehicle/adas-planner:1.4",
            restarts=2,
        ),
        "sensor-fusion": view(
            "sensor-fusion",
            "Running",
            node="ChassisECU",
            ready=True,
            created_ns=100 * S,
            started_ns=103 * S,
            memory_mb=60.0,
            image="vehicle/sensor-fusion:1.4",
        ),
    }
    facts = PackageFacts(
        scenarios=("adas-activation",),
        image_sizes={"vehicle/adas-planner:1.4": 10 * 2**20, "vehicle/sensor-fusion:1.4": 2**20},
        volume_sizes={"maps": 5 * 2**20},
        volumes={"adas-planner": ("maps",)},
        dependencies=(("adas-planner", "sensor-fusion"),),
    )
    status = package_status(package, views, facts, 200 * S)
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["deploymentStatus"] == "Deployed"
    assert metrics["version"] == "1.4"
    assert metrics["loadTime"] == 3000.0
    assert metrics["memoryUsage"] == 100.0
    assert metrics["diskUsage"] == 16.0
    assert metrics["usageCount"] == 1
    assert metrics["uptime"] == "1m39s"
    assert metrics["modelRelationships"] == {
        "total": 2,
        "healthy": 2,
        "unhealthy": 0,
        "dependencies": [{"source": "adas-planner", "target": "sensor-fusion", "status": "OK"}],
    }
    pattern = status["patternStatus"]
    assert isinstance(pattern, dict)
    assert pattern["nodesMatched"] == 2
    assert pattern["health"] == "healthy"
    assert status["currentState"] == "running"
    assert status["models"] == [
        {"name": "adas-planner", "status": "Running", "restarts": 2, "readiness": True},
        {"name": "sensor-fusion", "status": "Running", "restarts": 0, "readiness": True},
    ]


def test_a_failed_model_degrades_its_node_and_the_pattern(package: Package) -> None:
    views = {
        "adas-planner": view("adas-planner", "Running", ready=True),
        "sensor-fusion": view("sensor-fusion", "Failed", node="ChassisECU"),
    }
    status = package_status(package, views, PackageFacts(), 0)
    pattern = status["patternStatus"]
    assert isinstance(pattern, dict)
    assert pattern["nodeList"] == [
        {"name": "ChassisECU", "status": "failed"},
        {"name": "VisionHPC", "status": "healthy"},
    ]
    assert pattern["health"] == "degraded"
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["loadTime"] is None
    assert metrics["deploymentStatus"] == "Failed"
