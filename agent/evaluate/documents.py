"""Typed status documents: the `status:` blocks of Model, Package and Scenario (seed 7.1-7.3).

Each document is a frozen dataclass with one `to_json` / `from_json` pair:

- `to_json()` gives the block exactly as it is written to etcd: the template's keys, in the
  template's order, with null for what is not known. The builders (agent.evaluate.status,
  agent.evaluate.packages, agent.evaluate.reports, agent.timing.supervision) make the documents,
  and `KeyMaker.status` takes `doc.to_json()`.
- `from_json(data)` reads a block back (the elected agent reads other nodes' documents from etcd).
  It never raises: documents written by other or older agents may lack fields or hold the wrong
  types, and a field that is missing or of the wrong type reads as None (a nested block as its
  empty default, a list as empty, an element of a list that is not an object is dropped).

For a document made by a builder, `from_json(doc.to_json()) == doc`, and the JSON round trip gives
the same bytes (numbers keep their int or float type).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

JSON = dict[str, object]
"""A JSON object as the documents write it."""


# Tolerant readers -------------------------------------------------------------------------------


def _object(data: object) -> Mapping[str, object]:
    return data if isinstance(data, Mapping) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    """An int or a float, kept as it is (so that it is written back the same)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _objects(value: object) -> list[Mapping[str, object]]:
    """The objects of a JSON list; anything else in it, or a value that is no list, is dropped."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def status_of_record(raw: bytes | str | None) -> Mapping[str, object] | None:
    """The `status` block of a status record's value (`{"status": ..., "node": ..., "ts": ...}`).

    None when there is no record, it is no JSON, or it holds no `status` object.
    """
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return None
    status = document.get("status") if isinstance(document, dict) else None
    return status if isinstance(status, dict) else None


# Model: containers, conditions, events ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningState:
    started_at: str | None = None

    def to_json(self) -> JSON:
        return {"running": {"startedAt": self.started_at}}


@dataclass(frozen=True, slots=True)
class TerminatedState:
    exit_code: int | None = None
    finished_at: str | None = None
    reason: str | None = None

    def to_json(self) -> JSON:
        return {
            "terminated": {
                "exitCode": self.exit_code,
                "finishedAt": self.finished_at,
                "reason": self.reason,
            }
        }


@dataclass(frozen=True, slots=True)
class WaitingState:
    reason: str | None = None

    def to_json(self) -> JSON:
        return {"waiting": {"reason": self.reason}}


ContainerState = RunningState | TerminatedState | WaitingState


def container_state_from_json(data: object) -> ContainerState | None:
    """The state of a container status (`{"running": {...}}` and so on); None when unknown."""
    fields = _object(data)
    if "running" in fields:
        running = _object(fields["running"])
        return RunningState(_str(running.get("startedAt")))
    if "terminated" in fields:
        terminated = _object(fields["terminated"])
        return TerminatedState(
            _int(terminated.get("exitCode")),
            _str(terminated.get("finishedAt")),
            _str(terminated.get("reason")),
        )
    if "waiting" in fields:
        return WaitingState(_str(_object(fields["waiting"]).get("reason")))
    return None


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    name: str | None = None
    state: ContainerState | None = None
    """None: not known (written as an empty object)."""
    ready: bool | None = None
    restart_count: int | None = None
    image: str | None = None
    image_id: str | None = None

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "state": self.state.to_json() if self.state is not None else {},
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            name=_str(fields.get("name")),
            state=container_state_from_json(fields.get("state")),
            ready=_bool(fields.get("ready")),
            restart_count=_int(fields.get("restartCount")),
            image=_str(fields.get("image")),
            image_id=_str(fields.get("imageID")),
        )


@dataclass(frozen=True, slots=True)
class Condition:
    type: str | None = None
    status: str | None = None
    last_probe_time: str | None = None

    def to_json(self) -> JSON:
        return {"type": self.type, "status": self.status, "lastProbeTime": self.last_probe_time}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("type")), _str(fields.get("status")), _str(fields.get("lastProbeTime"))
        )


@dataclass(frozen=True, slots=True)
class ModelEvent:
    type: str | None = None
    time: str | None = None
    message: str | None = None
    severity: str | None = None

    def to_json(self) -> JSON:
        return {
            "type": self.type,
            "time": self.time,
            "message": self.message,
            "severity": self.severity,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("type")),
            _str(fields.get("time")),
            _str(fields.get("message")),
            _str(fields.get("severity")),
        )


# Model: safetyMetrics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SafetyCheck:
    name: str | None = None
    status: str | None = None
    """Pass or Fail."""
    last_check_time: str | None = None

    def to_json(self) -> JSON:
        return {"name": self.name, "status": self.status, "lastCheckTime": self.last_check_time}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("name")), _str(fields.get("status")), _str(fields.get("lastCheckTime"))
        )


@dataclass(frozen=True, slots=True)
class RuntimeVerification:
    enabled: bool | None = None
    constraints_checked: int | None = None
    constraint_violations: int | None = None

    def to_json(self) -> JSON:
        return {
            "enabled": self.enabled,
            "constraintsChecked": self.constraints_checked,
            "constraintViolations": self.constraint_violations,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _bool(fields.get("enabled")),
            _int(fields.get("constraintsChecked")),
            _int(fields.get("constraintViolations")),
        )


@dataclass(frozen=True, slots=True)
class TaskSafety:
    """One supervised task of a model (written under `tasks`, keyed by its name)."""

    name: str
    activations: int | None = None
    deadline_misses: int | None = None
    budget_overruns: int | None = None
    wcet: float | None = None
    """ms."""
    status: str | None = None
    """OK, FAILED or EXPIRED."""

    def to_json(self) -> JSON:
        return {
            "activations": self.activations,
            "deadlineMisses": self.deadline_misses,
            "budgetOverruns": self.budget_overruns,
            "wcet": self.wcet,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, name: str, data: object) -> Self:
        fields = _object(data)
        return cls(
            name=name,
            activations=_int(fields.get("activations")),
            deadline_misses=_int(fields.get("deadlineMisses")),
            budget_overruns=_int(fields.get("budgetOverruns")),
            wcet=_number(fields.get("wcet")),
            status=_str(fields.get("status")),
        )


@dataclass(frozen=True, slots=True)
class Supervision:
    """What the timing supervisor adds to a model's safetyMetrics; times in ms."""

    deadline_miss_count: int | None = None
    budget_overrun_count: int | None = None
    worst_case_execution_time: float | None = None
    average_execution_time: float | None = None
    execution_time_variance: float | None = None
    scheduling_latency: float | None = None
    local_status: str | None = None
    safety_checks: tuple[SafetyCheck, ...] = ()
    runtime_verification: RuntimeVerification = RuntimeVerification()
    tasks: tuple[TaskSafety, ...] = ()


_SUPERVISION_KEYS = frozenset(
    {
        "deadlineMissCount",
        "budgetOverrunCount",
        "worstCaseExecutionTime",
        "averageExecutionTime",
        "executionTimeVariance",
        "schedulingLatency",
        "localStatus",
        "safetyChecks",
        "runtimeVerification",
        "tasks",
    }
)


@dataclass(frozen=True, slots=True)
class SafetyMetricsDoc:
    """A model's `safetyMetrics` (seed 7.3).

    Without supervised tasks it is `{"asilLevel", "safetyMonitorStatus"}` only (`supervision` is
    None); with them, the supervisor's figures sit between and after those two, as the template
    orders them.
    """

    asil_level: str | None = None
    safety_monitor_status: str | None = None
    """Active or Inactive."""
    supervision: Supervision | None = None

    def to_json(self) -> JSON:
        supervision = self.supervision
        if supervision is None:
            return {"asilLevel": self.asil_level, "safetyMonitorStatus": self.safety_monitor_status}
        return {
            "asilLevel": self.asil_level,
            "deadlineMissCount": supervision.deadline_miss_count,
            "budgetOverrunCount": supervision.budget_overrun_count,
            "worstCaseExecutionTime": supervision.worst_case_execution_time,
            "averageExecutionTime": supervision.average_execution_time,
            "executionTimeVariance": supervision.execution_time_variance,
            "schedulingLatency": supervision.scheduling_latency,
            "safetyMonitorStatus": self.safety_monitor_status,
            "localStatus": supervision.local_status,
            "safetyChecks": [check.to_json() for check in supervision.safety_checks],
            "runtimeVerification": supervision.runtime_verification.to_json(),
            "tasks": {task.name: task.to_json() for task in supervision.tasks},
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        supervision = None
        if _SUPERVISION_KEYS.intersection(fields):
            tasks = _object(fields.get("tasks"))
            supervision = Supervision(
                deadline_miss_count=_int(fields.get("deadlineMissCount")),
                budget_overrun_count=_int(fields.get("budgetOverrunCount")),
                worst_case_execution_time=_number(fields.get("worstCaseExecutionTime")),
                average_execution_time=_number(fields.get("averageExecutionTime")),
                execution_time_variance=_number(fields.get("executionTimeVariance")),
                scheduling_latency=_number(fields.get("schedulingLatency")),
                local_status=_str(fields.get("localStatus")),
                safety_checks=tuple(
                    SafetyCheck.from_json(c) for c in _objects(fields.get("safetyChecks"))
                ),
                runtime_verification=RuntimeVerification.from_json(
                    fields.get("runtimeVerification")
                ),
                tasks=tuple(
                    TaskSafety.from_json(str(name), task)
                    for name, task in tasks.items()
                    if isinstance(task, Mapping)
                ),
            )
        return cls(
            asil_level=_str(fields.get("asilLevel")),
            safety_monitor_status=_str(fields.get("safetyMonitorStatus")),
            supervision=supervision,
        )


# Model ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The `metrics:` of a Model's status; units as the template gives them (ms, MB, %, Mbit/s)."""

    load_status: str | None = None
    load_time: float | None = None
    inference_time: float | None = None
    throughput: float | None = None
    latency: float | None = None
    accuracy: float | None = None
    response_time: float | None = None
    memory_usage: float | None = None
    memory_usage_percent: float | None = None
    cpu_usage: float | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_time: float | None = None
    oom_kills: int | None = None
    gpu_usage: float | None = None
    gpu_memory_usage: float | None = None
    network_rx: float | None = None
    network_tx: float | None = None
    uptime: str | None = None
    health_status: str | None = None
    last_error: str | None = None
    error_count: int | None = None
    restarts: int | None = None
    events: tuple[ModelEvent, ...] = ()
    safety_metrics: SafetyMetricsDoc = SafetyMetricsDoc()

    def to_json(self) -> JSON:
        return {
            "loadStatus": self.load_status,
            "loadTime": self.load_time,
            "inferenceTime": self.inference_time,
            "throughput": self.throughput,
            "latency": self.latency,
            "accuracy": self.accuracy,
            "responseTime": self.response_time,
            "memoryUsage": self.memory_usage,
            "memoryUsagePercent": self.memory_usage_percent,
            "cpuUsage": self.cpu_usage,
            "cpuThrottledPeriods": self.cpu_throttled_periods,
            "cpuThrottledTime": self.cpu_throttled_time,
            "oomKills": self.oom_kills,
            "gpuUsage": self.gpu_usage,
            "gpuMemoryUsage": self.gpu_memory_usage,
            "networkRx": self.network_rx,
            "networkTx": self.network_tx,
            "uptime": self.uptime,
            "healthStatus": self.health_status,
            "lastError": self.last_error,
            "errorCount": self.error_count,
            "restarts": self.restarts,
            "events": [event.to_json() for event in self.events],
            "safetyMetrics": self.safety_metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            load_status=_str(fields.get("loadStatus")),
            load_time=_number(fields.get("loadTime")),
            inference_time=_number(fields.get("inferenceTime")),
            throughput=_number(fields.get("throughput")),
            latency=_number(fields.get("latency")),
            accuracy=_number(fields.get("accuracy")),
            response_time=_number(fields.get("responseTime")),
            memory_usage=_number(fields.get("memoryUsage")),
            memory_usage_percent=_number(fields.get("memoryUsagePercent")),
            cpu_usage=_number(fields.get("cpuUsage")),
            cpu_throttled_periods=_int(fields.get("cpuThrottledPeriods")),
            cpu_throttled_time=_number(fields.get("cpuThrottledTime")),
            oom_kills=_int(fields.get("oomKills")),
            gpu_usage=_number(fields.get("gpuUsage")),
            gpu_memory_usage=_number(fields.get("gpuMemoryUsage")),
            network_rx=_number(fields.get("networkRx")),
            network_tx=_number(fields.get("networkTx")),
            uptime=_str(fields.get("uptime")),
            health_status=_str(fields.get("healthStatus")),
            last_error=_str(fields.get("lastError")),
            error_count=_int(fields.get("errorCount")),
            restarts=_int(fields.get("restarts")),
            events=tuple(ModelEvent.from_json(e) for e in _objects(fields.get("events"))),
            safety_metrics=SafetyMetricsDoc.from_json(fields.get("safetyMetrics")),
        )


@dataclass(frozen=True, slots=True)
class ModelStatusDoc:
    """The `status:` block of a Model (seed 7.3)."""

    phase: str | None = None
    """Running, Pending, Succeeded, Failed or Unknown."""
    reason: str | None = None
    conditions: tuple[Condition, ...] = ()
    start_time: str | None = None
    host_ip: str | None = None
    pod_ip: str | None = None
    container_statuses: tuple[ContainerStatus, ...] = ()
    metrics: ModelMetrics = ModelMetrics()

    def to_json(self) -> JSON:
        return {
            "phase": self.phase,
            "reason": self.reason,
            "conditions": [condition.to_json() for condition in self.conditions],
            "startTime": self.start_time,
            "hostIP": self.host_ip,
            "podIP": self.pod_ip,
            "containerStatuses": [status.to_json() for status in self.container_statuses],
            "metrics": self.metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            phase=_str(fields.get("phase")),
            reason=_str(fields.get("reason")),
            conditions=tuple(Condition.from_json(c) for c in _objects(fields.get("conditions"))),
            start_time=_str(fields.get("startTime")),
            host_ip=_str(fields.get("hostIP")),
            pod_ip=_str(fields.get("podIP")),
            container_statuses=tuple(
                ContainerStatus.from_json(c) for c in _objects(fields.get("containerStatuses"))
            ),
            metrics=ModelMetrics.from_json(fields.get("metrics")),
        )


# Package ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageModelStatus:
    name: str | None = None
    status: str | None = None
    """The model's phase (Unknown without a view of it)."""
    restarts: int | None = None
    readiness: bool | None = None

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "status": self.status,
            "restarts": self.restarts,
            "readiness": self.readiness,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("name")),
            _str(fields.get("status")),
            _int(fields.get("restarts")),
            _bool(fields.get("readiness")),
        )


@dataclass(frozen=True, slots=True)
class NodeHealth:
    name: str | None = None
    status: str | None = None
    """healthy, degraded or failed."""

    def to_json(self) -> JSON:
        return {"name": self.name, "status": self.status}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(_str(fields.get("name")), _str(fields.get("status")))


@dataclass(frozen=True, slots=True)
class PatternStatus:
    type: str | None = None
    health: str | None = None
    nodes_matched: int | None = None
    node_list: tuple[NodeHealth, ...] = ()
    last_verified: str | None = None

    def to_json(self) -> JSON:
        return {
            "type": self.type,
            "health": self.health,
            "nodesMatched": self.nodes_matched,
            "nodeList": [node.to_json() for node in self.node_list],
            "lastVerified": self.last_verified,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            type=_str(fields.get("type")),
            health=_str(fields.get("health")),
            nodes_matched=_int(fields.get("nodesMatched")),
            node_list=tuple(NodeHealth.from_json(n) for n in _objects(fields.get("nodeList"))),
            last_verified=_str(fields.get("lastVerified")),
        )


@dataclass(frozen=True, slots=True)
class PropertiesStatus:
    lifecycle: str | None = None
    criticality: str | None = None

    def to_json(self) -> JSON:
        return {"lifecycle": self.lifecycle, "criticality": self.criticality}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(_str(fields.get("lifecycle")), _str(fields.get("criticality")))


@dataclass(frozen=True, slots=True)
class PackageTypeStatus:
    type: str | None = None
    properties_status: PropertiesStatus = PropertiesStatus()

    def to_json(self) -> JSON:
        return {"type": self.type, "propertiesStatus": self.properties_status.to_json()}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("type")), PropertiesStatus.from_json(fields.get("propertiesStatus"))
        )


@dataclass(frozen=True, slots=True)
class ModelDependency:
    source: str | None = None
    target: str | None = None
    status: str | None = None
    """OK or Error."""

    def to_json(self) -> JSON:
        return {"source": self.source, "target": self.target, "status": self.status}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _str(fields.get("source")), _str(fields.get("target")), _str(fields.get("status"))
        )


@dataclass(frozen=True, slots=True)
class ModelRelationships:
    total: int | None = None
    healthy: int | None = None
    unhealthy: int | None = None
    dependencies: tuple[ModelDependency, ...] = ()

    def to_json(self) -> JSON:
        return {
            "total": self.total,
            "healthy": self.healthy,
            "unhealthy": self.unhealthy,
            "dependencies": [dependency.to_json() for dependency in self.dependencies],
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            total=_int(fields.get("total")),
            healthy=_int(fields.get("healthy")),
            unhealthy=_int(fields.get("unhealthy")),
            dependencies=tuple(
                ModelDependency.from_json(d) for d in _objects(fields.get("dependencies"))
            ),
        )


@dataclass(frozen=True, slots=True)
class PackageMetrics:
    deployment_status: str | None = None
    """Deployed, Undeployed or Failed."""
    version: str | None = None
    usage_count: int | None = None
    active_scenarios: int | None = None
    uptime: str | None = None
    memory_usage: float | None = None
    disk_usage: float | None = None
    load_time: float | None = None
    model_relationships: ModelRelationships = ModelRelationships()

    def to_json(self) -> JSON:
        return {
            "deploymentStatus": self.deployment_status,
            "version": self.version,
            "usageCount": self.usage_count,
            "activeScenarios": self.active_scenarios,
            "uptime": self.uptime,
            "memoryUsage": self.memory_usage,
            "diskUsage": self.disk_usage,
            "loadTime": self.load_time,
            "modelRelationships": self.model_relationships.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            deployment_status=_str(fields.get("deploymentStatus")),
            version=_str(fields.get("version")),
            usage_count=_int(fields.get("usageCount")),
            active_scenarios=_int(fields.get("activeScenarios")),
            uptime=_str(fields.get("uptime")),
            memory_usage=_number(fields.get("memoryUsage")),
            disk_usage=_number(fields.get("diskUsage")),
            load_time=_number(fields.get("loadTime")),
            model_relationships=ModelRelationships.from_json(fields.get("modelRelationships")),
        )


@dataclass(frozen=True, slots=True)
class PackageStatusDoc:
    """The `status:` block of a Package (seed 7.2)."""

    current_state: str | None = None
    """running, degraded, error or initializing."""
    message: str | None = None
    models: tuple[PackageModelStatus, ...] = ()
    pattern_status: PatternStatus = PatternStatus()
    package_type_status: PackageTypeStatus = PackageTypeStatus()
    metrics: PackageMetrics = PackageMetrics()

    def to_json(self) -> JSON:
        return {
            "currentState": self.current_state,
            "message": self.message,
            "models": [model.to_json() for model in self.models],
            "patternStatus": self.pattern_status.to_json(),
            "packageTypeStatus": self.package_type_status.to_json(),
            "metrics": self.metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            current_state=_str(fields.get("currentState")),
            message=_str(fields.get("message")),
            models=tuple(PackageModelStatus.from_json(m) for m in _objects(fields.get("models"))),
            pattern_status=PatternStatus.from_json(fields.get("patternStatus")),
            package_type_status=PackageTypeStatus.from_json(fields.get("packageTypeStatus")),
            metrics=PackageMetrics.from_json(fields.get("metrics")),
        )


# Scenario ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivePackage:
    name: str | None = None
    status: str | None = None

    def to_json(self) -> JSON:
        return {"name": self.name, "status": self.status}

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(_str(fields.get("name")), _str(fields.get("status")))


@dataclass(frozen=True, slots=True)
class ScenarioSafety:
    """A scenario's `safetyMetrics`: its response-time constraint against the last execution."""

    response_time_constraint: float | None = None
    response_time_actual: float | None = None
    constraints_met: bool | None = None

    def to_json(self) -> JSON:
        return {
            "responseTimeConstraint": self.response_time_constraint,
            "responseTimeActual": self.response_time_actual,
            "constraintsMet": self.constraints_met,
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            _number(fields.get("responseTimeConstraint")),
            _number(fields.get("responseTimeActual")),
            _bool(fields.get("constraintsMet")),
        )


@dataclass(frozen=True, slots=True)
class ScenarioMetrics:
    active_state: str | None = None
    """Active or Inactive."""
    execution_count: int | None = None
    average_execution_time: float | None = None
    last_execution_time: float | None = None
    failure_rate: float | None = None
    last_execution_result: str | None = None
    dependency_status: str | None = None
    response_time: float | None = None
    safety_metrics: ScenarioSafety = ScenarioSafety()

    def to_json(self) -> JSON:
        return {
            "activeState": self.active_state,
            "executionCount": self.execution_count,
            "averageExecutionTime": self.average_execution_time,
            "lastExecutionTime": self.last_execution_time,
            "failureRate": self.failure_rate,
            "lastExecutionResult": self.last_execution_result,
            "dependencyStatus": self.dependency_status,
            "responseTime": self.response_time,
            "safetyMetrics": self.safety_metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            active_state=_str(fields.get("activeState")),
            execution_count=_int(fields.get("executionCount")),
            average_execution_time=_number(fields.get("averageExecutionTime")),
            last_execution_time=_number(fields.get("lastExecutionTime")),
            failure_rate=_number(fields.get("failureRate")),
            last_execution_result=_str(fields.get("lastExecutionResult")),
            dependency_status=_str(fields.get("dependencyStatus")),
            response_time=_number(fields.get("responseTime")),
            safety_metrics=ScenarioSafety.from_json(fields.get("safetyMetrics")),
        )


@dataclass(frozen=True, slots=True)
class ScenarioStatusDoc:
    """The `status:` block of a Scenario (seed 7.1)."""

    current_state: str | None = None
    """As the orchestrator reported it; None before its first report."""
    message: str | None = None
    active_packages: tuple[ActivePackage, ...] = ()
    metrics: ScenarioMetrics = ScenarioMetrics()

    def to_json(self) -> JSON:
        return {
            "currentState": self.current_state,
            "message": self.message,
            "activePackages": [package.to_json() for package in self.active_packages],
            "metrics": self.metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        return cls(
            current_state=_str(fields.get("currentState")),
            message=_str(fields.get("message")),
            active_packages=tuple(
                ActivePackage.from_json(p) for p in _objects(fields.get("activePackages"))
            ),
            metrics=ScenarioMetrics.from_json(fields.get("metrics")),
        )
