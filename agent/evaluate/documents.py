"""Typed status documents: the `status:` blocks of Model, Package and Scenario (seed 7.1-7.3).

Each document is a frozen dataclass with one `to_json` / `from_json` pair:

- `to_json()` gives the block exactly as it is written to etcd: the keys of the template that
  the agent fills, in the template's order, with null for what is not known at the moment; a
  template field the agent does not fill has no dataclass field and is absent from the JSON
  (docs/status-fields.md lists which, and why). The builders (agent.evaluate.status,
  agent.evaluate.packages, agent.evaluate.reports, agent.timing.supervision) make the documents,
  and `KeyMaker.status` takes `doc.to_json()`.
- `from_json(data)` reads a block back (the elected agent reads other nodes' documents from etcd).
  It never raises: documents written by other or older agents may lack fields or hold the wrong
  types, and a field that is missing or of the wrong type reads as None (a nested block as its
  empty default, a list as empty, an element of a list that is not an object is dropped).

For a document made by a builder, `from_json(doc.to_json()) == doc`, and the JSON round trip gives
the same bytes (numbers keep their int or float type).

Each field names its JSON key (`_key("startedAt")`), and the fields are declared in the
template's order. A class's plan, made on its first use from `dataclasses.fields` and the fields'
types, gives `to_json` (a loop over the keyed fields) and `from_json` (each key read by the
reader of its field's type: `_str`, `_int`, `_number`, `_bool`, a nested document's `from_json`,
the objects of a list). Written by hand, where the JSON is not one key per field: the container
state's tagged union (`{"running": {...}}`, `{"terminated": ...}`, `{"waiting": ...}`), a
container's unknown state (an empty object), the tasks (`{name: task}`, a task's name being its
key) and the supervisor's figures, which sit flat in `safetyMetrics`, around
`safetyMonitorStatus`.
"""

# ruff: noqa: RUF009 (`_key` gives a dataclasses.field, ruff does not see through it)
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Self, TypeVar, get_args, get_origin, get_type_hints, overload

JSON = dict[str, object]
"""A JSON object as the documents write it."""

_T = TypeVar("_T")


# Tolerant readers -------------------------------------------------------------------------------


def _object(data: object) -> Mapping[str, object]:
    return data if type(data) is dict or isinstance(data, Mapping) else {}


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


def state_of_record(raw: bytes | None) -> str | None:
    """The `state` of a state record's value; None when absent or damaged (another agent, of
    any version, wrote it)."""
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    state = document.get("state") if isinstance(document, dict) else None
    return state if isinstance(state, str) else None


# Field plans ------------------------------------------------------------------------------------

_Read = Callable[[object], object]
_Write = Callable[[Any], object]


@overload
def _key(name: str, *, read: _Read | None = None, write: _Write | None = None) -> None: ...
@overload
def _key(
    name: str, default: _T, *, read: _Read | None = None, write: _Write | None = None
) -> _T: ...
def _key(
    name: str, default: object = None, *, read: _Read | None = None, write: _Write | None = None
) -> Any:
    """A field written under the JSON key `name`.

    Its reader and writer follow from its type (see `_codec`); `read` and `write` replace them for
    a value of another shape.
    """
    return field(default=default, metadata={"json": name, "read": read, "write": write})


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a class's keyed fields are written and read, in declaration (= template) order."""

    write: Callable[[Any], JSON]
    """The keyed fields of a document as JSON."""
    reads: tuple[tuple[str, _Read], ...]
    """(key, read) of every keyed field, in the order of the constructor's arguments."""


_PLANS: dict[type, _Plan] = {}
"""The plan of each class, made on its first use."""

_SCALARS: dict[object, _Read] = {
    str | None: _str,
    int | None: _int,
    float | None: _number,
    bool | None: _bool,
}


def _each_from_json(kind: type[_Document]) -> _Read:
    read = kind.from_json

    def read_each(value: object) -> tuple[_Document, ...]:
        return tuple([read(item) for item in _objects(value)])

    return read_each


def _document_to_json(value: _Written) -> JSON:
    return value.to_json()


def _each_to_json(value: tuple[_Written, ...]) -> list[JSON]:
    return [item.to_json() for item in value]


def _codec(cls: type, hint: object) -> tuple[_Read, _Write | None]:
    """The reader of a field of type `hint`, and its writer (None: written as it is)."""
    if hint in _SCALARS:
        return _SCALARS[hint], None
    if isinstance(hint, type) and issubclass(hint, _Document):
        return hint.from_json, _document_to_json
    if get_origin(hint) is tuple:
        item, *rest = get_args(hint)
        if rest == [Ellipsis] and isinstance(item, type) and issubclass(item, _Document):
            return _each_from_json(item), _each_to_json
    message = f"{cls.__name__}: no JSON reader for a field of type {hint}"
    raise TypeError(message)


def _writer(keyed: list[tuple[str, str, _Write | None]]) -> Callable[[Any], JSON]:
    """`{key: write(document.attribute), ...}` for each (key, attribute, write), in order."""
    fields_ = tuple((key, attrgetter(name), write) for key, name, write in keyed)

    def to_json(document: object) -> JSON:
        out: JSON = {}
        for key, get, write in fields_:
            value = get(document)
            out[key] = value if write is None else write(value)
        return out

    return to_json


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    hints = get_type_hints(cls)
    keyed: list[tuple[str, str, _Write | None]] = []
    reads: list[tuple[str, _Read]] = []
    for item in dataclasses.fields(cls):
        if "json" not in item.metadata:
            if keyed:  # the keyed fields are read as the constructor's last arguments
                message = f"{cls.__name__}.{item.name}: an unkeyed field after keyed ones"
                raise TypeError(message)
            continue  # written by hand (a task's name, the supervisor's figures)
        json_key, read, write = (item.metadata[k] for k in ("json", "read", "write"))
        if read is None or write is None:
            read_by_type, write_by_type = _codec(cls, hints[item.name])
            read = read or read_by_type
            write = write or write_by_type
        keyed.append((json_key, item.name, write))
        reads.append((json_key, read))
    plan = _PLANS[cls] = _Plan(_writer(keyed), tuple(reads))
    return plan


def _write(document: object) -> JSON:
    """The keyed fields of `document` as JSON, in declaration order."""
    cls = type(document)
    plan = _PLANS.get(cls) or _plan(cls)
    return plan.write(document)


def _read_values(cls: type, data: object) -> list[Any]:
    """The keyed fields of a `cls` read from `data`, in declaration order; never raises."""
    plan = _PLANS.get(cls) or _plan(cls)
    get = _object(data).get
    return [read(get(json_key)) for json_key, read in plan.reads]


def _read(cls: type[_T], data: object) -> _T:
    make: Callable[..., _T] = cls
    return make(*_read_values(cls, data))


class _Written:
    """A document that is written with its field plan."""

    __slots__ = ()

    def to_json(self) -> JSON:
        cls = type(self)  # as _write, without its call: a status document has dozens of parts
        return (_PLANS.get(cls) or _plan(cls)).write(self)


class _Document(_Written):
    """A document that is written and read with its field plan."""

    __slots__ = ()

    @classmethod
    def from_json(cls, data: object) -> Self:
        get = _object(data).get  # as _read, without its two calls
        return cls(
            *[read(get(json_key)) for json_key, read in (_PLANS.get(cls) or _plan(cls)).reads]
        )


# Model: containers, conditions, events ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningState:
    started_at: str | None = _key("startedAt")

    def to_json(self) -> JSON:
        return {"running": _write(self)}


@dataclass(frozen=True, slots=True)
class TerminatedState:
    exit_code: int | None = _key("exitCode")
    finished_at: str | None = _key("finishedAt")
    reason: str | None = _key("reason")

    def to_json(self) -> JSON:
        return {"terminated": _write(self)}


@dataclass(frozen=True, slots=True)
class WaitingState:
    reason: str | None = _key("reason")

    def to_json(self) -> JSON:
        return {"waiting": _write(self)}


ContainerState = RunningState | TerminatedState | WaitingState


def container_state_from_json(data: object) -> ContainerState | None:
    """The state of a container status (`{"running": {...}}` and so on); None when unknown."""
    fields = _object(data)
    if "running" in fields:
        return _read(RunningState, fields["running"])
    if "terminated" in fields:
        return _read(TerminatedState, fields["terminated"])
    if "waiting" in fields:
        return _read(WaitingState, fields["waiting"])
    return None


def _state_to_json(state: ContainerState | None) -> JSON:
    return state.to_json() if state is not None else {}


@dataclass(frozen=True, slots=True)
class ContainerStatus(_Document):
    name: str | None = _key("name")
    state: ContainerState | None = _key(
        "state", read=container_state_from_json, write=_state_to_json
    )
    """None: not known (written as an empty object)."""
    ready: bool | None = _key("ready")
    restart_count: int | None = _key("restartCount")
    image: str | None = _key("image")
    image_id: str | None = _key("imageID")


@dataclass(frozen=True, slots=True)
class Condition(_Document):
    type: str | None = _key("type")
    status: str | None = _key("status")
    last_probe_time: str | None = _key("lastProbeTime")


@dataclass(frozen=True, slots=True)
class ModelEvent(_Document):
    type: str | None = _key("type")
    time: str | None = _key("time")
    message: str | None = _key("message")
    severity: str | None = _key("severity")


# Model: safetyMetrics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SafetyCheck(_Document):
    name: str | None = _key("name")
    status: str | None = _key("status")
    """Pass or Fail."""
    last_check_time: str | None = _key("lastCheckTime")


@dataclass(frozen=True, slots=True)
class RuntimeVerification(_Document):
    enabled: bool | None = _key("enabled")
    constraints_checked: int | None = _key("constraintsChecked")
    constraint_violations: int | None = _key("constraintViolations")


@dataclass(frozen=True, slots=True)
class TaskSafety(_Written):
    """One supervised task of a model (written under `tasks`, keyed by its name)."""

    name: str
    activations: int | None = _key("activations")
    deadline_misses: int | None = _key("deadlineMisses")
    budget_overruns: int | None = _key("budgetOverruns")
    wcet: float | None = _key("wcet")
    """ms."""
    status: str | None = _key("status")
    """OK, FAILED or EXPIRED."""

    @classmethod
    def from_json(cls, name: str, data: object) -> Self:
        return cls(name, *_read_values(cls, data))


def _tasks_from_json(data: object) -> tuple[TaskSafety, ...]:
    """`{name: task}`; an entry that is no object is dropped."""
    return tuple(
        TaskSafety.from_json(str(name), task)
        for name, task in _object(data).items()
        if isinstance(task, Mapping)
    )


def _tasks_to_json(tasks: tuple[TaskSafety, ...]) -> JSON:
    return {task.name: task.to_json() for task in tasks}


@dataclass(frozen=True, slots=True)
class Supervision:
    """What the timing supervisor adds to a model's safetyMetrics; times in ms."""

    deadline_miss_count: int | None = _key("deadlineMissCount")
    budget_overrun_count: int | None = _key("budgetOverrunCount")
    worst_case_execution_time: float | None = _key("worstCaseExecutionTime")
    average_execution_time: float | None = _key("averageExecutionTime")
    execution_time_variance: float | None = _key("executionTimeVariance")
    scheduling_latency: float | None = _key("schedulingLatency")
    local_status: str | None = _key("localStatus")
    safety_checks: tuple[SafetyCheck, ...] = _key("safetyChecks", ())
    runtime_verification: RuntimeVerification = _key("runtimeVerification", RuntimeVerification())
    tasks: tuple[TaskSafety, ...] = _key("tasks", (), read=_tasks_from_json, write=_tasks_to_json)


_SUPERVISION_KEYS = tuple(item.metadata["json"] for item in dataclasses.fields(Supervision))
_AFTER_MONITOR_STATUS = _SUPERVISION_KEYS[_SUPERVISION_KEYS.index("localStatus") :]
"""The supervisor's figures that the template puts after `safetyMonitorStatus`."""


@dataclass(frozen=True, slots=True)
class FunctionalSafety(_Document):
    """A model's `functionalSafetyMetrics`, in % (agent.evaluate.coverage defines them)."""

    error_detection_coverage: float | None = _key("errorDetectionCoverage")
    error_recovery_coverage: float | None = _key("errorRecoveryCoverage")
    diagnostics_coverage: float | None = _key("diagnosticsCoverage")


@dataclass(frozen=True, slots=True)
class SafetyMetricsDoc(_Document):
    """A model's `safetyMetrics` (seed 7.3).

    Without supervised tasks it is `{"asilLevel", "safetyMonitorStatus"}` only (`supervision` is
    None); with them, the supervisor's figures sit between and after those two, as the template
    orders them.
    """

    asil_level: str | None = None
    safety_monitor_status: str | None = None
    """Active or Inactive."""
    supervision: Supervision | None = None
    functional: FunctionalSafety | None = None
    """`functionalSafetyMetrics`: before `runtimeVerification` as the template has it, or last
    without supervised tasks; absent when None."""

    def to_json(self) -> JSON:
        if self.supervision is None:
            written: JSON = {
                "asilLevel": self.asil_level,
                "safetyMonitorStatus": self.safety_monitor_status,
            }
            if self.functional is not None:
                written["functionalSafetyMetrics"] = self.functional.to_json()
            return written
        written = {"asilLevel": self.asil_level, **_write(self.supervision)}
        written["safetyMonitorStatus"] = self.safety_monitor_status
        for json_key in _AFTER_MONITOR_STATUS:  # moved to the end, after the monitor's status
            if json_key == "runtimeVerification" and self.functional is not None:
                written["functionalSafetyMetrics"] = self.functional.to_json()
            written[json_key] = written.pop(json_key)
        return written

    @classmethod
    def from_json(cls, data: object) -> Self:
        fields = _object(data)
        supervised = any(json_key in fields for json_key in _SUPERVISION_KEYS)
        functional = fields.get("functionalSafetyMetrics")
        return cls(
            asil_level=_str(fields.get("asilLevel")),
            safety_monitor_status=_str(fields.get("safetyMonitorStatus")),
            supervision=_read(Supervision, fields) if supervised else None,
            functional=FunctionalSafety.from_json(functional) if functional is not None else None,
        )


# Model ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelMetrics(_Document):
    """The `metrics:` of a Model's status; units ms, MB, % and, for the network, MiB/s."""

    load_status: str | None = _key("loadStatus")
    load_time: float | None = _key("loadTime")
    inference_time: float | None = _key("inferenceTime")
    throughput: float | None = _key("throughput")
    latency: float | None = _key("latency")
    accuracy: float | None = _key("accuracy")
    response_time: float | None = _key("responseTime")
    memory_usage: float | None = _key("memoryUsage")
    memory_usage_percent: float | None = _key("memoryUsagePercent")
    cpu_usage: float | None = _key("cpuUsage")
    cpu_throttled_periods: int | None = _key("cpuThrottledPeriods")
    cpu_throttled_time: float | None = _key("cpuThrottledTime")
    oom_kills: int | None = _key("oomKills")
    gpu_usage: float | None = _key("gpuUsage")
    gpu_memory_usage: float | None = _key("gpuMemoryUsage")
    network_rx: float | None = _key("networkRx")
    network_tx: float | None = _key("networkTx")
    uptime: str | None = _key("uptime")
    health_status: str | None = _key("healthStatus")
    last_error: str | None = _key("lastError")
    error_count: int | None = _key("errorCount")
    restarts: int | None = _key("restarts")
    events: tuple[ModelEvent, ...] = _key("events", ())
    safety_metrics: SafetyMetricsDoc = _key("safetyMetrics", SafetyMetricsDoc())


@dataclass(frozen=True, slots=True)
class ModelStatusDoc(_Document):
    """The `status:` block of a Model (seed 7.3)."""

    phase: str | None = _key("phase")
    """Running, Pending, Succeeded, Failed or Unknown."""
    reason: str | None = _key("reason")
    conditions: tuple[Condition, ...] = _key("conditions", ())
    start_time: str | None = _key("startTime")
    host_ip: str | None = _key("hostIP")
    pod_ip: str | None = _key("podIP")
    container_statuses: tuple[ContainerStatus, ...] = _key("containerStatuses", ())
    metrics: ModelMetrics = _key("metrics", ModelMetrics())


# Package ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageModelStatus(_Document):
    name: str | None = _key("name")
    status: str | None = _key("status")
    """The model's phase (Unknown without a view of it)."""
    restarts: int | None = _key("restarts")
    readiness: bool | None = _key("readiness")


@dataclass(frozen=True, slots=True)
class NodeHealth(_Document):
    name: str | None = _key("name")
    status: str | None = _key("status")
    """healthy, degraded or failed."""


@dataclass(frozen=True, slots=True)
class PatternStatus(_Document):
    type: str | None = _key("type")
    health: str | None = _key("health")
    nodes_matched: int | None = _key("nodesMatched")
    node_list: tuple[NodeHealth, ...] = _key("nodeList", ())
    last_verified: str | None = _key("lastVerified")


@dataclass(frozen=True, slots=True)
class PropertiesStatus(_Document):
    lifecycle: str | None = _key("lifecycle")
    criticality: str | None = _key("criticality")


@dataclass(frozen=True, slots=True)
class TypeConstraint(_Document):
    """One rule of a package type (agent.evaluate.packages.TYPE_RULES) and whether it holds."""

    name: str | None = _key("name")
    status: str | None = _key("status")
    """met or not-met."""


@dataclass(frozen=True, slots=True)
class PackageTypeStatus(_Document):
    type: str | None = _key("type")
    compliance_status: str | None = _key("complianceStatus")
    """compliant or non-compliant; None when no rule applies to the package's types."""
    type_constraints: tuple[TypeConstraint, ...] = _key("typeConstraints", ())
    properties_status: PropertiesStatus = _key("propertiesStatus", PropertiesStatus())


@dataclass(frozen=True, slots=True)
class TypeSpecificMetric(_Document):
    name: str | None = _key("name")
    value: float | None = _key("value")
    threshold: float | None = _key("threshold")


@dataclass(frozen=True, slots=True)
class PackageTypeMetrics(_Document):
    type: str | None = _key("type")
    count: int | None = _key("count")
    """Packages of the same packageType: on this node's inventory for a local package, in all
    manifests for one spanning nodes."""
    operational_status: str | None = _key("operationalStatus")
    """operational, starting, degraded or down."""
    typical_response_time: float | None = _key("typicalResponseTime")
    """ms: the median of the models' reported response times; None when none reports one."""
    health_score: float | None = _key("healthScore")
    """% of the models that are healthy."""
    type_specific_metrics: tuple[TypeSpecificMetric, ...] = _key("typeSpecificMetrics", ())


@dataclass(frozen=True, slots=True)
class NodeDistribution(_Document):
    matched: int | None = _key("matched")
    healthy: int | None = _key("healthy")
    degraded: int | None = _key("degraded")
    failed: int | None = _key("failed")


@dataclass(frozen=True, slots=True)
class PatternMetrics(_Document):
    type: str | None = _key("type")
    effective_deployment_rate: float | None = _key("effectiveDeploymentRate")
    """% of the package's models that run."""
    pattern_compliance_score: float | None = _key("patternComplianceScore")
    """% of the nodes holding its models whose labels satisfy the nodeSelector."""
    node_distribution: NodeDistribution = _key("nodeDistribution", NodeDistribution())
    balance_score: float | None = _key("balanceScore")
    """100 x fewest / most running models on a node holding its models; None when none runs."""


@dataclass(frozen=True, slots=True)
class ModelDependency(_Document):
    source: str | None = _key("source")
    target: str | None = _key("target")
    status: str | None = _key("status")
    """OK (the target runs), Warning (its state is not known) or Error."""


@dataclass(frozen=True, slots=True)
class ModelRelationships(_Document):
    total: int | None = _key("total")
    healthy: int | None = _key("healthy")
    unhealthy: int | None = _key("unhealthy")
    dependencies: tuple[ModelDependency, ...] = _key("dependencies", ())


@dataclass(frozen=True, slots=True)
class PackageMetrics(_Document):
    deployment_status: str | None = _key("deploymentStatus")
    """Deployed, Deploying, Undeployed or Failed (agent.evaluate.packages)."""
    deployment_time: str | None = _key("deploymentTime")
    """Since when it is Deployed (RFC 3339); None while it is not."""
    version: str | None = _key("version")
    last_update_time: str | None = _key("lastUpdateTime")
    """When what the document says (states, models, relationships) last changed."""
    package_type: PackageTypeMetrics = _key("packageType", PackageTypeMetrics())
    pattern_metrics: PatternMetrics = _key("patternMetrics", PatternMetrics())
    usage_count: int | None = _key("usageCount")
    """Executions of scenarios that launch the package, as the orchestrator reported them."""
    active_scenarios: int | None = _key("activeScenarios")
    """Scenarios launching the package that the orchestrator last reported active."""
    uptime: str | None = _key("uptime")
    health_status: str | None = _key("healthStatus")
    """OK, Warning or Error: the package's live health (agent.evaluate.impact)."""
    memory_usage: float | None = _key("memoryUsage")
    disk_usage: float | None = _key("diskUsage")
    load_time: float | None = _key("loadTime")
    model_relationships: ModelRelationships = _key("modelRelationships", ModelRelationships())


@dataclass(frozen=True, slots=True)
class PackageStatusDoc(_Document):
    """The `status:` block of a Package (seed 7.2)."""

    current_state: str | None = _key("currentState")
    """running, degraded, error or initializing."""
    last_transition_time: str | None = _key("lastTransitionTime")
    """When `currentState` last changed (RFC 3339), as this agent saw it."""
    message: str | None = _key("message")
    models: tuple[PackageModelStatus, ...] = _key("models", ())
    pattern_status: PatternStatus = _key("patternStatus", PatternStatus())
    package_type_status: PackageTypeStatus = _key("packageTypeStatus", PackageTypeStatus())
    metrics: PackageMetrics = _key("metrics", PackageMetrics())


# Scenario ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScenarioCondition(_Document):
    type: str | None = _key("type")
    status: str | None = _key("status")
    """True, False or Unknown."""
    last_update_time: str | None = _key("lastUpdateTime")
    """When `status` last changed, as this agent saw it."""


@dataclass(frozen=True, slots=True)
class ScenarioEvent(_Document):
    type: str | None = _key("type")
    time: str | None = _key("time")
    details: str | None = _key("details")


@dataclass(frozen=True, slots=True)
class ActivePackage(_Document):
    name: str | None = _key("name")
    status: str | None = _key("status")


@dataclass(frozen=True, slots=True)
class DependencyDetail(_Document):
    """One dependency of a scenario and the health it carries (agent.evaluate.impact)."""

    resource_type: str | None = _key("resourceType")
    resource_name: str | None = _key("resourceName")
    status: str | None = _key("status")


@dataclass(frozen=True, slots=True)
class ScenarioSafety(_Document):
    """A scenario's `safetyMetrics`: its response-time constraint against the last execution."""

    response_time_constraint: float | None = _key("responseTimeConstraint")
    response_time_actual: float | None = _key("responseTimeActual")
    constraints_met: bool | None = _key("constraintsMet")


@dataclass(frozen=True, slots=True)
class ScenarioMetrics(_Document):
    active_state: str | None = _key("activeState")
    """Active or Inactive."""
    execution_count: int | None = _key("executionCount")
    average_execution_time: float | None = _key("averageExecutionTime")
    last_execution_time: float | None = _key("lastExecutionTime")
    failure_rate: float | None = _key("failureRate")
    last_execution_result: str | None = _key("lastExecutionResult")
    dependency_status: str | None = _key("dependencyStatus")
    dependency_details: tuple[DependencyDetail, ...] = _key("dependencyDetails", ())
    response_time: float | None = _key("responseTime")
    resource_utilization: float | None = _key("resourceUtilization")
    """%: the tightest of its local models' memory and CPU use against their limits."""
    total_events: int | None = _key("totalEvents")
    """Events this agent wrote for the scenario since it started."""
    last_event_time: str | None = _key("lastEventTime")
    recent_events: tuple[ScenarioEvent, ...] = _key("recentEvents", ())
    """The newest events first, at most agent.evaluate.events.RECENT."""
    safety_metrics: ScenarioSafety = _key("safetyMetrics", ScenarioSafety())


@dataclass(frozen=True, slots=True)
class ScenarioStatusDoc(_Document):
    """The `status:` block of a Scenario (seed 7.1)."""

    current_state: str | None = _key("currentState")
    """As the orchestrator reported it; None before its first report."""
    policy_status: str | None = _key("policyStatus")
    """allowed or denied, as the orchestrator last reported it; None before."""
    last_transition_time: str | None = _key("lastTransitionTime")
    """When the reported state last changed (RFC 3339)."""
    message: str | None = _key("message")
    conditions: tuple[ScenarioCondition, ...] = _key("conditions", ())
    active_packages: tuple[ActivePackage, ...] = _key("activePackages", ())
    metrics: ScenarioMetrics = _key("metrics", ScenarioMetrics())
