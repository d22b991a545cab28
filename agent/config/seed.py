"""The seed's configuration blocks (sections 3.1-5.2), accepted exactly as written there.

Every section is frozen and refuses unknown keys (`Section`). What the agent acts on, and what it
accepts without acting on yet, is `agent.config.effect`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.metrics import CATALOGUE
from agent.model import ResourceId
from agent.units import ByteSize, Percent, PositiveDuration, Threshold


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- seed 3.1: resource state monitoring


class StateTracking(Section):
    state_transitions: bool = True
    time_in_state: bool = True


class StuckStates(Section):
    enabled: bool = True
    thresholds: dict[str, PositiveDuration] = Field(default_factory=dict)
    """Longest time a resource may stay in the named state before it is reported as stuck."""


class StateAlerting(Section):
    unexpected_transitions: bool = True
    stuck_states: StuckStates = StuckStates()


class ResourceStateMonitoring(Section):
    enabled: bool = True
    tracking: StateTracking = StateTracking()
    alerting: StateAlerting = StateAlerting()


# --- seed 3.2: performance thresholds

PerformanceMetricName = Literal[
    "execution_time",
    "response_time",
    "inference_time",
    "latency",
    "memory_usage",
    "cpu_usage",
    "gpu_usage",
    "disk_usage",
    "failure_rate",
    "error_count",
]
_PERCENT_METRICS = {"memory_usage", "cpu_usage", "gpu_usage", "disk_usage", "failure_rate"}
_DURATION_METRICS = {"execution_time", "response_time", "inference_time", "latency"}


_BOUNDED_PERCENT = {"memory_usage", "gpu_usage", "disk_usage", "failure_rate"}
"""Percentages that cannot pass 100 (of a limit, a device, a disk, the executions)."""


class PerformanceMetric(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: PerformanceMetricName
    threshold_warning: Threshold | None = None
    threshold_critical: Threshold | None = None
    hold: PositiveDuration | None = Field(default=None, alias="for")
    """`for:` as in Prometheus alerting rules: a level fires only once the value has stayed at
    or above it this long (judged at each sample)."""
    hysteresis: Percent = 5.0
    """A firing level holds until the value falls below the threshold by this share of it
    (80% with 5%: fires at 80, holds down to 76), so a value hovering at it does not flap."""

    @model_validator(mode="after")
    def _units_fit(self) -> Self:
        expected = (
            "%" if self.name in _PERCENT_METRICS else "s" if self.name in _DURATION_METRICS else ""
        )
        words = {"%": "a percentage such as 80%", "s": "a duration such as 500ms", "": "a number"}
        for which in (self.threshold_warning, self.threshold_critical):
            if which is not None and which.unit != expected:
                raise ValueError(
                    f"thresholds of {self.name} must be {words[expected]}, not {which}"
                )
        for which in (self.threshold_warning, self.threshold_critical):
            if which is not None and which.value <= 0:
                raise ValueError(f"a threshold of {self.name} must be above 0, not {which}")
            if which is not None and self.name in _BOUNDED_PERCENT and which.value > 100:
                raise ValueError(f"{self.name} cannot reach {which}: it is at most 100%")
        if not 0 <= self.hysteresis < 100:
            raise ValueError(f"hysteresis must be from 0% to below 100%, not {self.hysteresis}%")
        warn, crit = self.threshold_warning, self.threshold_critical
        if warn is not None and crit is not None and warn.value > crit.value:
            raise ValueError(f"threshold_warning ({warn}) is above threshold_critical ({crit})")
        return self


class PerformanceMonitoring(Section):
    collection_interval: PositiveDuration = 10.0
    metrics: tuple[PerformanceMetric, ...] = ()

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: tuple[PerformanceMetric, ...]) -> tuple[PerformanceMetric, ...]:
        names = [m.name for m in metrics]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"metric listed more than once: {', '.join(dupes)}")
        return metrics


# --- seed 3.3 and 4.3: dependencies


class DependencyRef(Section):
    type: Literal["scenario", "package", "model"]
    id: ResourceId
    relation: Literal["requires", "uses"] = "requires"
    """requires: its health is passed on as it is; uses: at most as Warning."""


class DependencyEntry(Section):
    resource: ResourceId
    depends_on: tuple[DependencyRef, ...] = ()


class Propagation(Section):
    status_propagation: bool = True
    impact_analysis: bool = True


class PropagationRule(Section):
    from_state: str
    impact: Literal["info", "warning", "critical"]


class ImpactAnalysis(Section):
    enabled: bool = True
    propagation_rules: tuple[PropagationRule, ...] = ()


class DependencyMonitoring(Section):
    enabled: bool = True
    dependency_types: tuple[Literal["parent_child", "uses", "requires"], ...] = (
        "parent_child",
        "uses",
        "requires",
    )
    propagation: Propagation = Propagation()
    dependency_map: tuple[DependencyEntry, ...] = ()
    impact_analysis: ImpactAnalysis = ImpactAnalysis()


# --- seed 4.1: what to collect per resource kind

METRIC_CATALOGUE: dict[str, frozenset[str]] = CATALOGUE
"""What each kind may list under `metrics`: what its collectors emit (agent.metrics)."""


class KindMonitoring(Section):
    KIND: ClassVar[str] = ""

    enabled: bool = True
    metrics: tuple[str, ...] | None = None
    """Metric names to collect; absent means all that the kind knows."""
    collection_interval: PositiveDuration = 10.0

    @field_validator("metrics")
    @classmethod
    def _known(cls, metrics: tuple[str, ...] | None) -> tuple[str, ...] | None:
        known = METRIC_CATALOGUE[cls.KIND]
        for name in metrics or ():
            if name not in known:
                raise ValueError(
                    f"unknown {cls.KIND} metric {name!r}; known: {', '.join(sorted(known))}"
                )
        return metrics


class ScenarioMonitoring(KindMonitoring):
    KIND: ClassVar[str] = "scenario"
    collection_interval: PositiveDuration = 5.0


class PackageMonitoring(KindMonitoring):
    KIND: ClassVar[str] = "package"
    collection_interval: PositiveDuration = 30.0


class ModelMonitoring(KindMonitoring):
    KIND: ClassVar[str] = "model"


class NodeMonitoring(KindMonitoring):
    KIND: ClassVar[str] = "node"


class ContainerMonitoring(KindMonitoring):
    """Models as Podman containers, through the libpod REST API on its Unix socket."""

    KIND: ClassVar[str] = "container"
    socket: Path = Path("/run/podman/podman.sock")
    request_timeout: PositiveDuration = 5.0


class ProcessBinding(Section):
    """A model that runs as a process: exactly one way of finding it."""

    model: ResourceId
    systemd_unit: str | None = None
    name: str | None = None
    cmdline: str | None = None
    """A regular expression searched in the space-joined command line."""
    pidfile: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [k for k in ("systemd_unit", "name", "cmdline", "pidfile") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of systemd_unit, name, cmdline, pidfile"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.cmdline is not None:
            try:
                re.compile(self.cmdline)
            except re.error as exc:
                raise ValueError(f"cmdline is not a valid regular expression: {exc}") from None
        return self


class ProcessMonitoring(KindMonitoring):
    """Models bound to a systemd unit or a process matcher instead of a container."""

    KIND: ClassVar[str] = "process"
    bindings: tuple[ProcessBinding, ...] = ()


class GpuMonitoring(KindMonitoring):
    """NVIDIA GPUs through NVML (extra `gpu`); without a driver the collector reports itself
    unavailable once."""

    KIND: ClassVar[str] = "gpu"


class ResourceMonitoring(Section):
    scenario: ScenarioMonitoring = ScenarioMonitoring()
    package: PackageMonitoring = PackageMonitoring()
    model: ModelMonitoring = ModelMonitoring()
    node: NodeMonitoring = NodeMonitoring()
    container: ContainerMonitoring = ContainerMonitoring()
    process: ProcessMonitoring = ProcessMonitoring()
    gpu: GpuMonitoring = GpuMonitoring()


# --- seed 4.2: state machines per resource type


class TrackedResource(Section):
    type: Literal["scenario", "package", "model", "node"]
    states: tuple[str, ...]
    transitions: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """State -> the states it may go to; replaces the type's default graph
    (agent.evaluate.states.LIFECYCLES)."""

    @field_validator("states")
    @classmethod
    def _non_empty(cls, states: tuple[str, ...]) -> tuple[str, ...]:
        if not states:
            raise ValueError("list at least one state")
        return states

    @model_validator(mode="after")
    def _transitions_between_states(self) -> Self:
        known = {s.lower() for s in self.states}
        named = set(self.transitions) | {s for to in self.transitions.values() for s in to}
        if unknown := sorted(n for n in named if n.lower() not in known):
            raise ValueError(f"transitions name states not in states: {', '.join(unknown)}")
        return self


class TransitionTracking(Section):
    transition_history: bool = True
    transition_duration: bool = True


class StateTransitionTracking(Section):
    enabled: bool = True
    resources: tuple[TrackedResource, ...] = ()
    tracking: TransitionTracking = TransitionTracking()


# --- seed 4.4: anomalies


class AnomalyMethod(Section):
    type: Literal["statistical", "pattern_based"]
    metrics: tuple[str, ...]
    sensitivity: Literal["low", "medium", "high"] = "medium"
    window_size: PositiveDuration | None = None


class Baseline(Section):
    auto_learn: bool = True
    learning_period: PositiveDuration = 7 * 86400.0


class AnomalyDetection(Section):
    enabled: bool = True
    methods: tuple[AnomalyMethod, ...] = ()
    baseline: Baseline = Baseline()


# --- seed 5.1: the central store


class TLSFiles(Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.enabled and self.ca_file is None:
            raise ValueError("tls.enabled needs ca_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class EtcdConnection(Section):
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    tls: TLSFiles = TLSFiles()
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    max_txn_ops: int = Field(default=128, ge=1, le=10000)
    max_request_bytes: ByteSize = 1_500_000
    dial_timeout: PositiveDuration = 5.0

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        if not endpoints:
            raise ValueError("list at least one endpoint as host:port")
        for endpoint in endpoints:
            hostport = endpoint.split("://", 1)[-1]
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
        return endpoints


_KEY_STRUCTURE = {
    "resource": "{resource_type}/{resource_id}",
    "metric": "{resource_type}/{resource_id}/metrics/{metric_name}",
    "state": "{resource_type}/{resource_id}/state",
    "event": "{resource_type}/{resource_id}/events/{timestamp}",
}


class KeyStructure(Section):
    """The key layout is fixed (see ARCHITECTURE.md); it may be written out, not changed."""

    resource: str = _KEY_STRUCTURE["resource"]
    metric: str = _KEY_STRUCTURE["metric"]
    state: str = _KEY_STRUCTURE["state"]
    event: str = _KEY_STRUCTURE["event"]

    @model_validator(mode="after")
    def _fixed(self) -> Self:
        for name, expected in _KEY_STRUCTURE.items():
            if getattr(self, name) != expected:
                raise ValueError(f"key_structure.{name} is fixed as {expected!r}")
        return self


class DataOrganization(Section):
    prefix: str = "/piccolo/monitoring"
    key_structure: KeyStructure = KeyStructure()

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ValueError("prefix starts with '/', has no trailing '/' and no empty segment")
        return prefix


class Retention(Section):
    metrics: PositiveDuration = 30 * 86400.0
    events: PositiveDuration = 90 * 86400.0
    state_transitions: PositiveDuration = 60 * 86400.0


class Compaction(Section):
    enabled: bool = True
    interval: PositiveDuration = 86400.0
    policy: Literal["revision-based"] = "revision-based"


class DataStorage(Section):
    type: Literal["etcd"] = "etcd"
    configuration: EtcdConnection = EtcdConnection()
    data_organization: DataOrganization = DataOrganization()
    retention: Retention = Retention()
    compaction: Compaction = Compaction()
    history_window: PositiveDuration = 60.0
    """Width of the per-metric history rollup windows."""
    publish_deadband: Percent = 1.0
    """A latest value is written again only when it moved by more than this share ..."""
    publish_deadband_points: float = Field(default=0.5, ge=0)
    """... and, for a percentage (cpu_usage, memory_usage_percent, ...), by more than this many
    percentage points (a small noisy percentage moves by over 1 % of itself all the time) ..."""
    publish_max_age: PositiveDuration = 60.0
    """... or when it was last written this long ago, so its `ts` shows it is still measured."""


# --- seed 5.2: query API


class ApiParameter(Section):
    name: str
    type: Literal["array", "object", "boolean", "integer", "number", "string"]
    required: bool = False


class ApiDefinition(Section):
    name: str
    path: str
    parameters: tuple[ApiParameter, ...] = ()
    response_format: Literal["json"] = "json"


class DataAccess(Section):
    apis: tuple[ApiDefinition, ...] = ()
    query_capabilities: tuple[
        Literal["prefix_search", "range_queries", "transaction_support"], ...
    ] = ()
