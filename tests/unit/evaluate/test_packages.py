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
        (("Running", "Pending"), ("Deploying", "initializing")),
        (("Pending", "Pending"), ("Deploying", "initializing")),
        (("Running", "Failed"), ("Failed", "degraded")),
        (("Failed", "Pending"), ("Failed", "error")),
        (("Running", "Unknown"), ("Undeployed", "degraded")),
        ((None, "Running"), ("Undeployed", "degraded")),
        (("Running", "Succeeded"), ("Undeployed", "degraded")),
        (("Succeeded", "Succeeded"), ("Undeployed", "error")),
        (("Unknown", None), ("Undeployed", "error")),
        ((), ("Undeployed", "initializing")),
    ],
)
def test_deployment_is_deployed_only_when_every_model_runs(
    phases: tuple[str | None, ...], expected: tuple[str, str]
) -> None:
    views = {
        f"m{i}": None if phase is None else view(f"m{i}", phase) for i, phase in enumerate(phases)
    }
    assert deployment(views) == expected


def test_models_without_a_container_yet_are_undeployed_not_deploying() -> None:
    views = {
        "m0": ModelView("m0", "n", "Pending", "no container for this model", "none"),
        "m1": ModelView("m1", "n", "Pending", "no container for this model", "none"),
    }
    assert deployment(views) == ("Undeployed", "initializing")
    views["m1"] = view("m1", "Pending")  # created, not started yet
    assert deployment(views) == ("Deploying", "initializing")


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
        uses=4,
        active_scenarios=1,
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
    assert metrics["usageCount"] == 4
    assert metrics["activeScenarios"] == 1
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


def test_node_selector_is_matched_against_the_labels_nodes_publish(package: Package) -> None:
    selected = package.model_copy(
        update={
            "spec": package.spec.model_copy(
                update={
                    "pattern": package.spec.pattern.model_copy(
                        update={"type": "selector", "nodeSelector": {"gpu": "available"}}
                    )
                }
            )
        }
    )
    views = {
        "adas-planner": view("adas-planner", "Running", ready=True),
        "sensor-fusion": view("sensor-fusion", "Running", node="ChassisECU", ready=True),
    }
    labels = {"VisionHPC": {"gpu": "available", "zone": "front"}, "ChassisECU": {"gpu": "none"}}
    status = package_status(selected, views, PackageFacts(node_labels=labels), 0)
    pattern = status["patternStatus"]
    assert isinstance(pattern, dict)
    assert pattern["nodesMatched"] == 1
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["patternMetrics"] == {
        "type": "selector",
        "effectiveDeploymentRate": 100.0,
        "patternComplianceScore": 50.0,
        "nodeDistribution": {"matched": 1, "healthy": 1, "degraded": 0, "failed": 0},
        "balanceScore": 100.0,
    }
    # A node whose labels are not known does not match; without a selector every node does.
    unknown = package_status(selected, views, PackageFacts(), 0)["patternStatus"]
    assert isinstance(unknown, dict)
    assert unknown["nodesMatched"] == 0
    plain = package_status(package, views, PackageFacts(), 0)["patternStatus"]
    assert isinstance(plain, dict)
    assert plain["nodesMatched"] == 2


def test_type_rules_judge_limits_and_deadlines_of_every_model(package: Package) -> None:
    typed = package.model_copy(
        update={
            "metadata": package.metadata.model_copy(
                update={
                    "labels": {
                        **package.metadata.labels,
                        "types": ("resource-bounded", "time-critical", "fancy"),
                    }
                }
            )
        }
    )
    bounded = {
        "adas-planner": view(
            "adas-planner",
            "Running",
            ready=True,
            memory_limit_mb=100.0,
            memory_percent=40.0,
            cpu_limit_cores=0.5,
        ),
        "sensor-fusion": view(
            "sensor-fusion",
            "Running",
            node="ChassisECU",
            ready=True,
            memory_limit_mb=200.0,
            memory_percent=75.0,
        ),
    }
    facts = PackageFacts(supervised={"adas-planner": 0, "sensor-fusion": 2})
    status = package_status(typed, bounded, facts, 0)
    types = status["packageTypeStatus"]
    assert isinstance(types, dict)
    assert types["complianceStatus"] == "non-compliant"
    assert types["typeConstraints"] == [
        {"name": "memory-limit", "status": "met"},
        {"name": "cpu-limit", "status": "not-met"},
        {"name": "timing-supervised", "status": "met"},
        {"name": "no-deadline-misses", "status": "not-met"},
    ]
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    block = metrics["packageType"]
    assert isinstance(block, dict)
    assert block["typeSpecificMetrics"] == [
        {"name": "maxMemoryUsagePercent", "value": 75.0, "threshold": 100.0},
        {"name": "deadlineMisses", "value": 2.0, "threshold": 0.0},
    ]
    assert block["operationalStatus"] == "operational"
    assert block["healthScore"] == 100.0
    # Without rules for its types, a package is not judged.
    untyped = package.model_copy(
        update={
            "metadata": package.metadata.model_copy(
                update={"labels": {**package.metadata.labels, "types": ("fancy",)}}
            )
        }
    )
    plain = package_status(untyped, bounded, facts, 0)["packageTypeStatus"]
    assert isinstance(plain, dict)
    assert plain["complianceStatus"] is None
    assert plain["typeConstraints"] == []


def test_a_dependency_on_an_unknown_model_is_a_warning_and_restarts_unknown_are_null(
    package: Package,
) -> None:
    views: dict[str, ModelView | None] = {
        "adas-planner": view("adas-planner", "Running", ready=True),
        "sensor-fusion": None,
    }
    facts = PackageFacts(dependencies=(("adas-planner", "sensor-fusion"),), sizes_known=False)
    status = package_status(package, views, facts, 0)
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    relationships = metrics["modelRelationships"]
    assert isinstance(relationships, dict)
    assert relationships["dependencies"] == [
        {"source": "adas-planner", "target": "sensor-fusion", "status": "Warning"}
    ]
    assert metrics["diskUsage"] is None
    assert status["models"] == [
        {"name": "adas-planner", "status": "Running", "restarts": 0, "readiness": True},
        {"name": "sensor-fusion", "status": "Unknown", "restarts": None, "readiness": False},
    ]
