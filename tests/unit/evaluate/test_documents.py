"""Typed status documents: the builders' documents survive a JSON round trip unchanged, and reading
a damaged document never raises."""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from agent.config import load_config
from agent.evaluate.documents import (
    ActivePackage,
    Condition,
    ContainerStatus,
    DependencyDetail,
    ModelDependency,
    ModelEvent,
    ModelMetrics,
    ModelRelationships,
    ModelStatusDoc,
    NodeDistribution,
    NodeHealth,
    PackageMetrics,
    PackageModelStatus,
    PackageStatusDoc,
    PackageTypeMetrics,
    PackageTypeStatus,
    PatternMetrics,
    PatternStatus,
    PropertiesStatus,
    RunningState,
    RuntimeVerification,
    SafetyCheck,
    SafetyMetricsDoc,
    ScenarioCondition,
    ScenarioEvent,
    ScenarioMetrics,
    ScenarioSafety,
    ScenarioStatusDoc,
    Supervision,
    TaskSafety,
    TerminatedState,
    TypeConstraint,
    TypeSpecificMetric,
    WaitingState,
    state_of_record,
    status_of_record,
)
from agent.evaluate.fleet import Fleet
from agent.evaluate.packages import PackageFacts, package_document, package_status
from agent.evaluate.reports import Scenarios
from agent.evaluate.status import model_document, model_status, view_from_document
from agent.manifests import Package, Scenario, build_inventory, load_manifests
from agent.model import EventView, ModelView, Record
from agent.store.keys import KeyMaker
from agent.timing.checks import TaskSpec
from agent.timing.safety import safety_document
from agent.timing.supervision import TaskSupervisor
from tests.support.seed import REPO

if TYPE_CHECKING:
    from collections.abc import Iterator

    from agent.manifests import Located

S = 1_000_000_000
MS = 1_000_000


class Doc(Protocol):
    def to_json(self) -> dict[str, object]: ...


def dumps(data: object) -> str:
    return json.dumps(data, allow_nan=False)


def supervised() -> SafetyMetricsDoc:
    spec = TaskSpec("m", "cyclic", 10 * MS, 8 * MS, 2 * MS, asil="B", reference_cycle_ns=100 * MS)
    task = TaskSupervisor(spec)
    for i in range(20):
        task.activation(i, i * 10 * MS, i * 10 * MS + (3 * MS if i == 5 else MS), i * 10 * MS)
    task.tick(200 * MS)
    idle = TaskSupervisor(TaskSpec("m", "idle", None, None, None))
    return safety_document("B", [task, idle], 200 * MS, lambda ns: f"t{ns}")


def views() -> list[ModelView]:
    return [
        ModelView(
            "m",
            "n",
            "Running",
            "running",
            "container",
            container="c",
            image="img:1",
            image_id="sha256:1",
            created_ns=10 * S,
            started_ns=11 * S,
            restarts=2,
            ready=True,
            cpu_percent=12.34567,
            cpu_throttled=3,
            cpu_throttled_s=1.23456,
            memory_mb=40.0,
            memory_percent=1.5,
            network_rx_mbps=0.1234567,
            gpu_percent=5.5,
            oom_kills=0,
            error_count=1,
            last_error="boom",
            events=(EventView("oom", 12 * S, "killed", "warning"),),
        ),
        ModelView(
            "m",
            "n",
            "Failed",
            "Error",
            "container",
            container="c",
            finished_ns=20 * S,
            exit_code=137,
            oom_killed=True,
        ),
        ModelView(
            "m", "n", "Failed", "Error", "container", container="c", finished_ns=20 * S, exit_code=1
        ),
        ModelView("m", "n", "Pending", "created", "container", container="c"),
        ModelView("m", "n", "Succeeded", "done", "process"),
        ModelView("m", "n", "Unknown", "", "none"),
    ]


def model_documents() -> list[ModelStatusDoc]:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory("VisionHPC", load_manifests(config.manifests.paths))
    placed = inventory.models["vision-system"]
    app = {"inferenceTime": 1.5, "accuracy": 99.0}
    found = []
    for view in views():
        found.append(model_document(view, placed, 30 * S, app, supervised()))
        found.append(model_document(view, None, 30 * S))
    return found


def located() -> list[Located]:
    return load_manifests([REPO / "config" / "manifests"])


def package_documents() -> list[PackageStatusDoc]:
    all_views = views()
    found = []
    for item in located():
        if not isinstance(item.manifest, Package):
            continue
        package = item.manifest
        names = [m.name for m in package.spec.models]
        by_model = {
            name: all_views[i % len(all_views)] if i % 3 else None for i, name in enumerate(names)
        }
        facts = PackageFacts(
            uses=3,
            active_scenarios=1,
            image_sizes={"img:1": 2**20},
            dependencies=tuple(itertools.pairwise(names)),
        )
        found.append(package_document(package, by_model, facts, 40 * S))
        found.append(package_document(package, {}, PackageFacts(), 40 * S))
    return found


def scenario_documents() -> list[ScenarioStatusDoc]:
    scenarios = Scenarios()
    found = []
    for item in located():
        if not isinstance(item.manifest, Scenario):
            continue
        found.append(scenarios.document(item.manifest, "OK"))
        annotations = {**item.manifest.metadata.annotations, "responseTimeConstraint": "300ms"}
        metadata = item.manifest.metadata.model_copy(update={"annotations": annotations})
        scenario = item.manifest.model_copy(update={"metadata": metadata})
        scenarios.execution(scenario.name, 120.5, "success", 5 * S)
        scenarios.execution(scenario.name, 400, "failure", 6 * S)
        scenarios.states[scenario.name] = ("playing", "started by the driver", 6 * S)
        found.append(scenarios.document(scenario, "Warning"))
    return found


def test_the_builders_make_documents_of_every_kind() -> None:
    models, packages, scenarios = model_documents(), package_documents(), scenario_documents()
    states = {type(c.state) for d in models for c in d.container_statuses}
    assert states == {RunningState, TerminatedState, WaitingState}
    assert any(d.metrics.safety_metrics.supervision is not None for d in models)
    assert any(d.metrics.safety_metrics.supervision is None for d in models)
    assert len(packages) >= 4
    assert any(d.metrics.safety_metrics.constraints_met is not None for d in scenarios)


@pytest.mark.parametrize(
    ("kind", "documents"),
    [
        (ModelStatusDoc, model_documents),
        (PackageStatusDoc, package_documents),
        (ScenarioStatusDoc, scenario_documents),
    ],
)
def test_a_built_document_survives_the_round_trip_through_etcd(
    kind: type[ModelStatusDoc | PackageStatusDoc | ScenarioStatusDoc], documents: Any
) -> None:
    for document in documents():
        written = document.to_json()
        read = kind.from_json(json.loads(dumps(written)))
        assert read == document
        assert read.to_json() == written
        # Same keys in the same order, same number types: the same bytes.
        assert dumps(read.to_json()) == dumps(written)


def test_safety_metrics_survive_the_round_trip_with_and_without_supervision() -> None:
    stub = SafetyMetricsDoc(asil_level="QM", safety_monitor_status="Inactive")
    assert stub.to_json() == {"asilLevel": "QM", "safetyMonitorStatus": "Inactive"}
    for document in (stub, supervised()):
        written = document.to_json()
        assert SafetyMetricsDoc.from_json(json.loads(dumps(written))) == document
        assert dumps(SafetyMetricsDoc.from_json(written).to_json()) == dumps(written)
    keys = list(supervised().to_json())
    assert keys[0] == "asilLevel"
    assert keys.index("schedulingLatency") + 1 == keys.index("safetyMonitorStatus")
    assert keys[-1] == "tasks"


def test_the_dict_builders_write_the_documents_json() -> None:
    view = views()[0]
    assert model_status(view, None, 30 * S) == model_document(view, None, 30 * S).to_json()
    package = next(i.manifest for i in located() if isinstance(i.manifest, Package))
    assert package_status(package, {}, PackageFacts(), S) == (
        package_document(package, {}, PackageFacts(), S).to_json()
    )


# Damaged documents ------------------------------------------------------------------------------

WRONG: tuple[object, ...] = (None, "x", 7, 2.5, True, [], {}, [1, "x", None], {"x": 1})


def damaged(value: object) -> Iterator[object]:
    """`value` with one thing broken: a key removed, or a value (at any depth) of another type."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield {k: v for k, v in value.items() if k != key}
            for broken in damaged(inner):
                yield {**value, key: broken}
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            for broken in damaged(inner):
                yield [*value[:index], broken, *value[index + 1 :]]
    for wrong in WRONG:
        if type(wrong) is not type(value) or wrong != value:
            yield wrong


@pytest.mark.parametrize(
    ("kind", "documents"),
    [
        (ModelStatusDoc, model_documents),
        (PackageStatusDoc, package_documents),
        (ScenarioStatusDoc, scenario_documents),
        (SafetyMetricsDoc, lambda: [supervised()]),
    ],
)
def test_a_damaged_document_reads_without_raising(
    kind: type[ModelStatusDoc | PackageStatusDoc | ScenarioStatusDoc | SafetyMetricsDoc],
    documents: Any,
) -> None:
    count = 0
    for document in documents()[:2]:
        written = document.to_json()
        for broken in damaged(written):
            read = kind.from_json(broken)
            again = read.to_json()
            dumps(again)  # still a JSON document
            # What the damage left alone reads as before; the damaged part as None or empty.
            assert kind.from_json(again) == read
            count += 1
    assert count > 100


def test_missing_and_wrong_typed_fields_read_as_none_or_defaults() -> None:
    document = ModelStatusDoc.from_json(
        {
            "phase": 3,
            "reason": None,
            "conditions": {"type": "Ready"},
            "containerStatuses": [1, "x", {"state": {"exploded": {}}, "ready": "yes", "image": 5}],
            "metrics": {
                "restarts": "2",
                "memoryUsage": True,
                "cpuUsage": 12,
                "events": [None, {"type": "oom", "time": 5}],
                "safetyMetrics": {
                    "asilLevel": "B",
                    "tasks": {"cyclic": {"activations": "9"}, "broken": 3},
                    "safetyChecks": "all passed",
                    "runtimeVerification": [],
                },
            },
        }
    )
    assert document.phase is None
    assert document.conditions == ()
    (container,) = document.container_statuses
    assert (container.state, container.ready, container.image) == (None, None, None)
    assert container.to_json()["state"] == {}
    metrics = document.metrics
    assert (metrics.restarts, metrics.memory_usage, metrics.cpu_usage) == (None, None, 12)
    assert [(e.type, e.time) for e in metrics.events] == [("oom", None)]
    supervision = metrics.safety_metrics.supervision
    assert supervision is not None
    assert [(t.name, t.activations) for t in supervision.tasks] == [("cyclic", None)]
    assert supervision.safety_checks == ()
    assert supervision.runtime_verification.enabled is None
    assert ModelStatusDoc.from_json("not a document") == ModelStatusDoc()
    assert PackageStatusDoc.from_json(None) == PackageStatusDoc()
    assert ScenarioStatusDoc.from_json([1, 2]) == ScenarioStatusDoc()


def test_a_view_rebuilt_from_a_damaged_document_has_safe_defaults() -> None:
    view = view_from_document("m", "n", ModelStatusDoc.from_json({"metrics": {"restarts": None}}))
    assert (view.phase, view.reason, view.restarts, view.ready) == ("Unknown", "", 0, False)
    assert (view.image, view.memory_mb, view.source) == (None, None, "etcd")
    written = model_document(views()[0], None, 30 * S)
    view = view_from_document("m", "n", ModelStatusDoc.from_json(written.to_json()))
    assert (view.phase, view.ready, view.restarts) == ("Running", True, 2)
    assert (view.image, view.memory_mb) == ("img:1", 40.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"", None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"status": 3}', None),
        (b'{"node": "n"}', None),
        (b'{"status": {"phase": "Running"}, "node": "n"}', {"phase": "Running"}),
        ('{"status": {}}', {}),
    ],
)
def test_the_status_of_a_record(raw: bytes | str | None, expected: object) -> None:
    assert status_of_record(raw) == expected


# The elected agent's roll-up --------------------------------------------------------------------


class Store:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    async def get(self, key: bytes) -> bytes | None:
        return self.values.get(key.decode())

    async def get_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return [(k.encode(), v) for k, v in self.values.items() if k.startswith(prefix.decode())]


def record_value(status: object) -> bytes:
    return json.dumps({"status": status, "node": "n", "ts": "t"}).encode()


@pytest.mark.parametrize(
    "planner",
    [
        None,
        b"{not json",
        b'"a string"',
        record_value("a string"),
        record_value({"phase": ["Running"], "metrics": [], "containerStatuses": {"a": 1}}),
        record_value({"phase": "Running", "metrics": {"healthStatus": "Healthy", "restarts": "1"}}),
    ],
)
async def test_the_roll_up_of_a_two_node_package_reads_damaged_documents(
    planner: bytes | None,
) -> None:
    fusion = model_document(
        ModelView("sensor-fusion", "ChassisECU", "Running", "running", "container", ready=True),
        None,
        10 * S,
    )
    values = {
        "/p/nodes/VisionHPC/agent": b"{}",
        "/p/nodes/ChassisECU/agent": b"{}",
        "/p/model/sensor-fusion": record_value(fusion.to_json()),
    }
    if planner is not None:
        values["/p/model/adas-planner"] = planner
    submitted: list[Record] = []
    manifests = located()
    fleet = Fleet(
        Store(values),
        KeyMaker("VisionHPC"),
        prefix="/p",
        manifests=lambda: manifests,
        submit=submitted.extend,
    )
    await fleet.step()
    (record,) = [r for r in submitted if r.key.startswith("package/")]
    assert record.key == "package/adas-software"
    package = PackageStatusDoc.from_json(status_of_record(record.value))
    statuses = {m.name: m.status for m in package.models}
    assert statuses["sensor-fusion"] == "Running"
    assert package.metrics.model_relationships.total == 2
    if planner is not None and b"Healthy" in planner:
        assert statuses["adas-planner"] == "Running"
        assert package.metrics.deployment_status == "Deployed"
    else:
        assert statuses["adas-planner"] == "Unknown"
        assert package.metrics.deployment_status == "Undeployed"


# Every field set --------------------------------------------------------------------------------


def every_field() -> list[ModelStatusDoc | PackageStatusDoc | ScenarioStatusDoc]:
    """A document of each kind with every field set (ints in float fields where JSON allows)."""
    supervision = Supervision(
        deadline_miss_count=1,
        budget_overrun_count=2,
        worst_case_execution_time=3.25,
        average_execution_time=2,
        execution_time_variance=0.5,
        scheduling_latency=0.125,
        local_status="FAILED",
        safety_checks=(
            SafetyCheck("deadline", "Fail", "t1"),
            SafetyCheck("budget", "Pass", "t2"),
        ),
        runtime_verification=RuntimeVerification(
            enabled=True, constraints_checked=4, constraint_violations=1
        ),
        tasks=(
            TaskSafety("cyclic", 20, 1, 2, 3.25, "FAILED"),
            TaskSafety("idle", 0, 0, 0, 7, "OK"),
        ),
    )
    model = ModelStatusDoc(
        phase="Running",
        reason="running",
        conditions=(Condition("Ready", "True", "t3"), Condition("Initialized", "False", "t4")),
        start_time="t5",
        host_ip="10.0.0.1",
        pod_ip="10.0.0.2",
        container_statuses=(
            ContainerStatus(
                "a", RunningState("t6"), ready=True, restart_count=1, image="i", image_id="s"
            ),
            ContainerStatus(
                "b", TerminatedState(137, "t7", "OOMKilled"), ready=False, restart_count=2
            ),
            ContainerStatus("c", WaitingState("ContainerCreating"), ready=False, image="img:3"),
            ContainerStatus("d", None, None, None, None, None),
        ),
        metrics=ModelMetrics(
            load_status="Loaded",
            load_time=1200,
            inference_time=1.5,
            throughput=30.25,
            latency=33,
            accuracy=99.0,
            response_time=12.5,
            memory_usage=40.0,
            memory_usage_percent=1.5,
            cpu_usage=12.35,
            cpu_throttled_periods=3,
            cpu_throttled_time=1.235,
            oom_kills=0,
            gpu_usage=5.5,
            gpu_memory_usage=128,
            network_rx=0.123,
            network_tx=0,
            uptime="1h2m3s",
            health_status="Healthy",
            last_error="boom",
            error_count=1,
            restarts=2,
            events=(ModelEvent("oom", "t8", "killed", "warning"), ModelEvent("start", "t9")),
            safety_metrics=SafetyMetricsDoc("B", "Active", supervision),
        ),
    )
    package = PackageStatusDoc(
        current_state="degraded",
        last_transition_time="2026-12-03T10:00:01.000000000Z",
        message="one model down",
        models=(
            PackageModelStatus("a", "Running", 0, readiness=True),
            PackageModelStatus("b", "Failed", 3, readiness=False),
        ),
        pattern_status=PatternStatus(
            "multi-node",
            "degraded",
            2,
            (NodeHealth("n1", "healthy"), NodeHealth("n2", "failed")),
            "t10",
        ),
        package_type_status=PackageTypeStatus(
            "system",
            "non-compliant",
            (TypeConstraint("memory-limit", "met"), TypeConstraint("cpu-limit", "not-met")),
            PropertiesStatus("stable", "high"),
        ),
        metrics=PackageMetrics(
            deployment_status="Deployed",
            deployment_time="2026-12-03T09:00:00.000000000Z",
            version="1.2.3",
            last_update_time="2026-12-03T10:00:02.000000000Z",
            package_type=PackageTypeMetrics(
                "system", 3, "degraded", 12.5, 50, (TypeSpecificMetric("deadlineMisses", 2, 0),)
            ),
            pattern_metrics=PatternMetrics(
                "selector", 50.0, 100, NodeDistribution(2, 1, 0, 1), 0.0
            ),
            usage_count=2,
            active_scenarios=1,
            uptime="5m",
            health_status="Error",
            memory_usage=80.5,
            disk_usage=1024,
            load_time=0.25,
            model_relationships=ModelRelationships(
                2, 1, 1, (ModelDependency("a", "b", "Error"), ModelDependency("b", "a", "OK"))
            ),
        ),
    )
    scenario = ScenarioStatusDoc(
        current_state="playing",
        policy_status="allowed",
        last_transition_time="2026-12-03T10:00:00.000000000Z",
        message="started",
        conditions=(
            ScenarioCondition("ConditionsMet", "True", "t11"),
            ScenarioCondition("PackagesReady", "False", "t12"),
        ),
        active_packages=(ActivePackage("p", "running"), ActivePackage("q", "error")),
        metrics=ScenarioMetrics(
            active_state="Active",
            execution_count=7,
            average_execution_time=260.25,
            last_execution_time=400,
            failure_rate=0.5,
            last_execution_result="failure",
            dependency_status="OK",
            dependency_details=(DependencyDetail("Package", "p", "OK"),),
            response_time=400,
            resource_utilization=42.5,
            total_events=3,
            last_event_time="t13",
            recent_events=(
                ScenarioEvent("state_changed", "t13", "a -> b"),
                ScenarioEvent("dependency_impact", "t12", "p failed"),
            ),
            safety_metrics=ScenarioSafety(300, 400.5, constraints_met=False),
        ),
    )
    stub = ModelStatusDoc(metrics=ModelMetrics(safety_metrics=SafetyMetricsDoc("QM", "Inactive")))
    return [
        model,
        package,
        scenario,
        stub,
        ModelStatusDoc(),
        PackageStatusDoc(),
        ScenarioStatusDoc(),
    ]


def test_every_field_is_written_as_before_and_survives_the_round_trip() -> None:
    for document, expected in zip(every_field(), EVERY_FIELD, strict=True):
        written = document.to_json()
        # The bytes that the hand-written to_json of each class wrote (EVERY_FIELD below).
        assert dumps(written) == dumps(expected)
        read = type(document).from_json(json.loads(dumps(written)))
        assert read == document
        assert dumps(read.to_json()) == dumps(written)


# What the hand-written to_json methods wrote for every_field() (kept as the reference).
EVERY_FIELD: list[dict[str, object]] = [
    {
        "phase": "Running",
        "reason": "running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastProbeTime": "t3"},
            {"type": "Initialized", "status": "False", "lastProbeTime": "t4"},
        ],
        "startTime": "t5",
        "hostIP": "10.0.0.1",
        "podIP": "10.0.0.2",
        "containerStatuses": [
            {
                "name": "a",
                "state": {"running": {"startedAt": "t6"}},
                "ready": True,
                "restartCount": 1,
                "image": "i",
                "imageID": "s",
            },
            {
                "name": "b",
                "state": {
                    "terminated": {"exitCode": 137, "finishedAt": "t7", "reason": "OOMKilled"}
                },
                "ready": False,
                "restartCount": 2,
                "image": None,
                "imageID": None,
            },
            {
                "name": "c",
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "ready": False,
                "restartCount": None,
                "image": "img:3",
                "imageID": None,
            },
            {
                "name": "d",
                "state": {},
                "ready": None,
                "restartCount": None,
                "image": None,
                "imageID": None,
            },
        ],
        "metrics": {
            "loadStatus": "Loaded",
            "loadTime": 1200,
            "inferenceTime": 1.5,
            "throughput": 30.25,
            "latency": 33,
            "accuracy": 99.0,
            "responseTime": 12.5,
            "memoryUsage": 40.0,
            "memoryUsagePercent": 1.5,
            "cpuUsage": 12.35,
            "cpuThrottledPeriods": 3,
            "cpuThrottledTime": 1.235,
            "oomKills": 0,
            "gpuUsage": 5.5,
            "gpuMemoryUsage": 128,
            "networkRx": 0.123,
            "networkTx": 0,
            "uptime": "1h2m3s",
            "healthStatus": "Healthy",
            "lastError": "boom",
            "errorCount": 1,
            "restarts": 2,
            "events": [
                {"type": "oom", "time": "t8", "message": "killed", "severity": "warning"},
                {"type": "start", "time": "t9", "message": None, "severity": None},
            ],
            "safetyMetrics": {
                "asilLevel": "B",
                "deadlineMissCount": 1,
                "budgetOverrunCount": 2,
                "worstCaseExecutionTime": 3.25,
                "averageExecutionTime": 2,
                "executionTimeVariance": 0.5,
                "schedulingLatency": 0.125,
                "safetyMonitorStatus": "Active",
                "localStatus": "FAILED",
                "safetyChecks": [
                    {"name": "deadline", "status": "Fail", "lastCheckTime": "t1"},
                    {"name": "budget", "status": "Pass", "lastCheckTime": "t2"},
                ],
                "runtimeVerification": {
                    "enabled": True,
                    "constraintsChecked": 4,
                    "constraintViolations": 1,
                },
                "tasks": {
                    "cyclic": {
                        "activations": 20,
                        "deadlineMisses": 1,
                        "budgetOverruns": 2,
                        "wcet": 3.25,
                        "status": "FAILED",
                    },
                    "idle": {
                        "activations": 0,
                        "deadlineMisses": 0,
                        "budgetOverruns": 0,
                        "wcet": 7,
                        "status": "OK",
                    },
                },
            },
        },
    },
    {
        "currentState": "degraded",
        "lastTransitionTime": "2026-12-03T10:00:01.000000000Z",
        "message": "one model down",
        "models": [
            {"name": "a", "status": "Running", "restarts": 0, "readiness": True},
            {"name": "b", "status": "Failed", "restarts": 3, "readiness": False},
        ],
        "patternStatus": {
            "type": "multi-node",
            "health": "degraded",
            "nodesMatched": 2,
            "nodeList": [{"name": "n1", "status": "healthy"}, {"name": "n2", "status": "failed"}],
            "lastVerified": "t10",
        },
        "packageTypeStatus": {
            "type": "system",
            "complianceStatus": "non-compliant",
            "typeConstraints": [
                {"name": "memory-limit", "status": "met"},
                {"name": "cpu-limit", "status": "not-met"},
            ],
            "propertiesStatus": {"lifecycle": "stable", "criticality": "high"},
        },
        "metrics": {
            "deploymentStatus": "Deployed",
            "deploymentTime": "2026-12-03T09:00:00.000000000Z",
            "version": "1.2.3",
            "lastUpdateTime": "2026-12-03T10:00:02.000000000Z",
            "packageType": {
                "type": "system",
                "count": 3,
                "operationalStatus": "degraded",
                "typicalResponseTime": 12.5,
                "healthScore": 50,
                "typeSpecificMetrics": [{"name": "deadlineMisses", "value": 2, "threshold": 0}],
            },
            "patternMetrics": {
                "type": "selector",
                "effectiveDeploymentRate": 50.0,
                "patternComplianceScore": 100,
                "nodeDistribution": {"matched": 2, "healthy": 1, "degraded": 0, "failed": 1},
                "balanceScore": 0.0,
            },
            "usageCount": 2,
            "activeScenarios": 1,
            "uptime": "5m",
            "healthStatus": "Error",
            "memoryUsage": 80.5,
            "diskUsage": 1024,
            "loadTime": 0.25,
            "modelRelationships": {
                "total": 2,
                "healthy": 1,
                "unhealthy": 1,
                "dependencies": [
                    {"source": "a", "target": "b", "status": "Error"},
                    {"source": "b", "target": "a", "status": "OK"},
                ],
            },
        },
    },
    {
        "currentState": "playing",
        "policyStatus": "allowed",
        "lastTransitionTime": "2026-12-03T10:00:00.000000000Z",
        "message": "started",
        "conditions": [
            {"type": "ConditionsMet", "status": "True", "lastUpdateTime": "t11"},
            {"type": "PackagesReady", "status": "False", "lastUpdateTime": "t12"},
        ],
        "activePackages": [{"name": "p", "status": "running"}, {"name": "q", "status": "error"}],
        "metrics": {
            "activeState": "Active",
            "executionCount": 7,
            "averageExecutionTime": 260.25,
            "lastExecutionTime": 400,
            "failureRate": 0.5,
            "lastExecutionResult": "failure",
            "dependencyStatus": "OK",
            "dependencyDetails": [{"resourceType": "Package", "resourceName": "p", "status": "OK"}],
            "responseTime": 400,
            "resourceUtilization": 42.5,
            "totalEvents": 3,
            "lastEventTime": "t13",
            "recentEvents": [
                {"type": "state_changed", "time": "t13", "details": "a -> b"},
                {"type": "dependency_impact", "time": "t12", "details": "p failed"},
            ],
            "safetyMetrics": {
                "responseTimeConstraint": 300,
                "responseTimeActual": 400.5,
                "constraintsMet": False,
            },
        },
    },
    {
        "phase": None,
        "reason": None,
        "conditions": [],
        "startTime": None,
        "hostIP": None,
        "podIP": None,
        "containerStatuses": [],
        "metrics": {
            "loadStatus": None,
            "loadTime": None,
            "inferenceTime": None,
            "throughput": None,
            "latency": None,
            "accuracy": None,
            "responseTime": None,
            "memoryUsage": None,
            "memoryUsagePercent": None,
            "cpuUsage": None,
            "cpuThrottledPeriods": None,
            "cpuThrottledTime": None,
            "oomKills": None,
            "gpuUsage": None,
            "gpuMemoryUsage": None,
            "networkRx": None,
            "networkTx": None,
            "uptime": None,
            "healthStatus": None,
            "lastError": None,
            "errorCount": None,
            "restarts": None,
            "events": [],
            "safetyMetrics": {"asilLevel": "QM", "safetyMonitorStatus": "Inactive"},
        },
    },
    {
        "phase": None,
        "reason": None,
        "conditions": [],
        "startTime": None,
        "hostIP": None,
        "podIP": None,
        "containerStatuses": [],
        "metrics": {
            "loadStatus": None,
            "loadTime": None,
            "inferenceTime": None,
            "throughput": None,
            "latency": None,
            "accuracy": None,
            "responseTime": None,
            "memoryUsage": None,
            "memoryUsagePercent": None,
            "cpuUsage": None,
            "cpuThrottledPeriods": None,
            "cpuThrottledTime": None,
            "oomKills": None,
            "gpuUsage": None,
            "gpuMemoryUsage": None,
            "networkRx": None,
            "networkTx": None,
            "uptime": None,
            "healthStatus": None,
            "lastError": None,
            "errorCount": None,
            "restarts": None,
            "events": [],
            "safetyMetrics": {"asilLevel": None, "safetyMonitorStatus": None},
        },
    },
    {
        "currentState": None,
        "lastTransitionTime": None,
        "message": None,
        "models": [],
        "patternStatus": {
            "type": None,
            "health": None,
            "nodesMatched": None,
            "nodeList": [],
            "lastVerified": None,
        },
        "packageTypeStatus": {
            "type": None,
            "complianceStatus": None,
            "typeConstraints": [],
            "propertiesStatus": {"lifecycle": None, "criticality": None},
        },
        "metrics": {
            "deploymentStatus": None,
            "deploymentTime": None,
            "version": None,
            "lastUpdateTime": None,
            "packageType": {
                "type": None,
                "count": None,
                "operationalStatus": None,
                "typicalResponseTime": None,
                "healthScore": None,
                "typeSpecificMetrics": [],
            },
            "patternMetrics": {
                "type": None,
                "effectiveDeploymentRate": None,
                "patternComplianceScore": None,
                "nodeDistribution": {
                    "matched": None,
                    "healthy": None,
                    "degraded": None,
                    "failed": None,
                },
                "balanceScore": None,
            },
            "usageCount": None,
            "activeScenarios": None,
            "uptime": None,
            "healthStatus": None,
            "memoryUsage": None,
            "diskUsage": None,
            "loadTime": None,
            "modelRelationships": {
                "total": None,
                "healthy": None,
                "unhealthy": None,
                "dependencies": [],
            },
        },
    },
    {
        "currentState": None,
        "policyStatus": None,
        "lastTransitionTime": None,
        "message": None,
        "conditions": [],
        "activePackages": [],
        "metrics": {
            "activeState": None,
            "executionCount": None,
            "averageExecutionTime": None,
            "lastExecutionTime": None,
            "failureRate": None,
            "lastExecutionResult": None,
            "dependencyStatus": None,
            "dependencyDetails": [],
            "responseTime": None,
            "resourceUtilization": None,
            "totalEvents": None,
            "lastEventTime": None,
            "recentEvents": [],
            "safetyMetrics": {
                "responseTimeConstraint": None,
                "responseTimeActual": None,
                "constraintsMet": None,
            },
        },
    },
]


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (None, None),
        (b'{"state":"Running","since":"x"}', "Running"),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"state": 3}', None),
        (b"{}", None),
    ],
)
def test_a_damaged_state_record_reads_as_no_state(raw: bytes | None, state: str | None) -> None:
    # What the elected agent and the remote dependencies read back never stops them.
    assert state_of_record(raw) == state
