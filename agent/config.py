"""The agent's configuration: one schema, defined once, frozen, unknown keys refused.

Every YAML block of seed sections 3-5 is accepted exactly as written there; the agent's own
sections (`node`, `manifests`, `buffer`, `mqtt`, `ingest`, `timing`, `recovery`, `api`, `logging`)
complete it.
Relative paths are resolved against the configuration file's folder.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.metrics import CATALOGUE
from agent.model import ResourceId, ResourceType
from agent.units import ByteSize, Percent, PositiveDuration, Threshold
from agent.validation import validate
from agent.yamlsrc import load_single

DEFAULT_CONFIG_PATH = Path("/etc/piccolo/agent.yaml")


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


class PerformanceMetric(Section):
    name: PerformanceMetricName
    threshold_warning: Threshold | None = None
    threshold_critical: Threshold | None = None

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

    @field_validator("states")
    @classmethod
    def _non_empty(cls, states: tuple[str, ...]) -> tuple[str, ...]:
        if not states:
            raise ValueError("list at least one state")
        return states


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


# --- the agent's own sections


class Node(Section):
    name: ResourceId = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    labels: dict[str, str] = Field(default_factory=dict)


class Manifests(Section):
    paths: tuple[Path, ...] = (Path("/etc/piccolo/manifests"),)
    """Manifest files, or folders whose *.yaml and *.yml files are read in name order."""
    etcd_prefix: str | None = None
    """An etcd prefix whose keys hold more manifests, each key one or more YAML documents."""
    etcd_refresh: PositiveDuration = 30.0
    """How often the manifests under etcd_prefix are read again."""


class Buffer(Section):
    file: Path = Path("buffer.sqlite3")
    """Relative to the state directory."""
    max_bytes: ByteSize = 256 * 2**20
    sync: Literal["normal", "full"] = "normal"
    min_free_bytes: ByteSize = 2 * 2**20
    """Free space the buffer leaves on its filesystem (at most a quarter of the filesystem):
    beyond it, records are dropped as if the buffer were full (reason `disk_full`)."""


class Mqtt(Section):
    enabled: bool = True
    broker: str = "127.0.0.1:1883"
    topic_prefix: str = "piccolo/monitoring"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: TLSFiles = TLSFiles()
    keepalive: PositiveDuration = 30.0
    renotify_interval: PositiveDuration = 300.0
    rate_limit_per_s: float = Field(default=50.0, gt=0)


class Ingest(Section):
    enabled: bool = True
    socket: Path = Path("ingest.sock")
    """Relative to the runtime directory."""
    max_datagram_bytes: int = Field(default=4096, ge=256, le=65507)
    queue_size: int = Field(default=65536, ge=16)
    mode: int = 0o660
    """Permission bits of the socket file: sending needs write permission."""
    group: str | None = None
    """Group (name or number) of the socket file; the agent must be a member. None: its own."""

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        # Modes are octal, as for chmod: "0660", "0o660" and "660" as strings; YAML already
        # reads an unquoted 0660 as octal. A decimal 660 is a mistake, not mode 0o1224.
        if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3}", value.strip()):
            return int(value.strip()[-3:], 8)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
            return value
        raise ValueError(f'{value!r} is not a permission mode; write it in octal, as "0660"')


class TracedTask(Section):
    """A task of a model that does not report itself: found like a process binding, then traced.

    Its activations are supervised like reported ones, with the wakeup as the release.
    """

    model: ResourceId
    task: str
    name: str | None = None
    cmdline: str | None = None
    pidfile: Path | None = None
    systemd_unit: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [k for k in ("name", "cmdline", "pidfile", "systemd_unit") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of name, cmdline, pidfile, systemd_unit")
        return self


class CheckpointGraph(Section):
    """Logical supervision of one task: which checkpoint may follow which."""

    model: ResourceId
    task: str
    initial: tuple[str, ...]
    transitions: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Checkpoint -> the checkpoints allowed next; one with none is final (a new round starts)."""

    @model_validator(mode="after")
    def _known(self) -> Self:
        named = set(self.initial) | set(self.transitions)
        for after in self.transitions.values():
            unknown = sorted(set(after) - named)
            if unknown:
                raise ValueError(f"checkpoints {', '.join(unknown)} are used but never defined")
        return self


class Timing(Section):
    enabled: bool = True
    reference_cycle: PositiveDuration | None = None
    """Alive-supervision cycle; absent means ten periods of each task."""
    alive_margin: int = Field(default=1, ge=0)
    """Activations a reference cycle may have above or below the expected count."""
    failed_tolerance: int = Field(default=2, ge=0)
    """Failed reference cycles in a row a task may have before its status is EXPIRED."""
    recovery_cycles: int = Field(default=2, ge=1)
    """Passing reference cycles an EXPIRED task needs to be OK again."""
    resolve_after: int = Field(default=10, ge=1)
    """Clean activations in a row that end a deadline or budget alert episode."""
    hangup_grace: PositiveDuration = 0.002
    """How long after a deadline a missing end is judged a hang-up: the time a sender may take
    from its end to the `sendto` of its report (docs/timing-supervision.md)."""
    realtime_priority: int = Field(default=1, ge=0, le=99)
    """SCHED_FIFO priority of the agent's threads (0: leave the scheduling as it is); see
    agent/runtime/scheduling.py."""
    tick: PositiveDuration | None = None
    """Obsolete: supervision wakes when the next verdict is due. Accepted, logged as ignored."""
    max_tasks_per_model: int = Field(default=64, ge=1, le=65536)
    """Distinct task names supervised per model (more if the config names more for the model,
    in checkpoint_graphs or traced_tasks). A report for one more is dropped as
    `too_many_tasks`, once no supervisor of the model can be retired (idle, healthy, silent
    for `RETIRE_IDLE_S`)."""
    checkpoint_graphs: tuple[CheckpointGraph, ...] = ()
    tracer: bool = False
    tracefs: Path = Path("/sys/kernel/tracing")
    traced_tasks: tuple[TracedTask, ...] = ()


class Recovery(Section):
    enabled: bool = False
    max_restarts: int = Field(default=3, ge=0)
    window: PositiveDuration = 600.0
    backoff: PositiveDuration = 5.0


class Api(Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"


class Logging(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    target: Literal["auto", "journald", "stderr"] = "auto"
    """auto: journald when its socket and systemd-python are there, else stderr."""
    syslog_identifier: str = "piccolo-agent"


class Config(Section):
    """The whole configuration file."""

    node: Node = Field(default_factory=Node)
    manifests: Manifests = Manifests()
    buffer: Buffer = Buffer()
    mqtt: Mqtt = Mqtt()
    ingest: Ingest = Ingest()
    timing: Timing = Timing()
    recovery: Recovery = Recovery()
    api: Api = Api()
    logging: Logging = Logging()
    resource_state_monitoring: ResourceStateMonitoring = ResourceStateMonitoring()
    performance_monitoring: PerformanceMonitoring = PerformanceMonitoring()
    dependency_monitoring: DependencyMonitoring = DependencyMonitoring()
    resource_monitoring: ResourceMonitoring = ResourceMonitoring()
    state_transition_tracking: StateTransitionTracking = StateTransitionTracking()
    anomaly_detection: AnomalyDetection = AnomalyDetection()
    data_storage: DataStorage = DataStorage()
    data_access: DataAccess = DataAccess()


def load_config(path: Path) -> Config:
    """The validated configuration in `path`, with relative manifest paths made absolute.

    Raises `ConfigError` naming file, line, column and field for every problem found.
    """
    doc = load_single(path)
    config = validate(Config, doc)
    base = path.resolve().parent
    paths = tuple(p if p.is_absolute() else base / p for p in config.manifests.paths)
    return config.model_copy(
        update={"manifests": config.manifests.model_copy(update={"paths": paths})}
    )


__all__ = ["DEFAULT_CONFIG_PATH", "Config", "ResourceType", "load_config"]


# Settings accepted but not acted on yet ---------------------------------------------------------

NOT_ACTED_ON: dict[str, str] = {
    "node.labels": "node labels are not published yet",
    "ingest.queue_size": "reports are judged as they are read; there is no queue to size",
    "api": "the REST query API and the Prometheus endpoint are not built yet",
    "recovery": "automatic recovery is not built yet",
    "anomaly_detection": "anomaly detection is not built yet",
    "performance_monitoring": "performance thresholds are not evaluated yet",
    "resource_state_monitoring": "stuck and unexpected states are not judged yet",
    "data_access": "the query APIs are not built yet",
    "dependency_monitoring.dependency_types": "dependency kinds are not told apart yet",
    "dependency_monitoring.propagation": "dependency impact is not propagated yet",
    "dependency_monitoring.impact_analysis": "impact analysis is not built yet",
    "state_transition_tracking.enabled": "transitions are recorded whatever this says",
    "state_transition_tracking.tracking": "transition history and durations are always recorded",
    "resource_monitoring.scenario.enabled": "scenario reports are always read",
    "resource_monitoring.package.enabled": "package documents are always written",
    "resource_monitoring.model.collection_interval": (
        "models are sampled at the container and process collectors' intervals"
    ),
    **{
        f"resource_monitoring.{kind}.metrics": "every metric is collected; the list filters nothing"
        for kind in ("scenario", "package", "model", "container", "process", "gpu")
    },
}
"""Dotted paths (a section means everything in it) that the schema accepts, for the seed's
templates and for what is coming, but that no code acts on yet. `unacted_settings` names those a
configuration turns on; the agent logs them at start and `check-config` prints them. A test
(tests/unit/test_config_readers.py) keeps this list and the code in step."""


COMPATIBILITY: dict[str, str] = {
    "data_storage.type": "only etcd; the seed's block names it",
    "data_storage.data_organization.key_structure": (
        "the key layout is fixed (ARCHITECTURE.md); the seed's block may write it out, unchanged"
    ),
    "data_storage.compaction.policy": "only revision-based compaction exists",
}
"""Seed fields accepted only so the seed's YAML blocks validate; each can take one value only."""


def _lookup(config: BaseModel, path: str) -> tuple[object, object]:
    """(value, default) of the setting at `path` in `config`."""
    node: object = config
    default: object = None
    for part in path.split("."):
        assert isinstance(node, BaseModel)  # noqa: S101 - paths are this module's own
        field = type(node).model_fields[part]
        default = field.get_default(call_default_factory=True)
        node = getattr(node, part)
    return node, default


def _in_effect(value: object, default: object) -> bool:
    if isinstance(value, BaseModel):
        enabled = getattr(value, "enabled", None)
        if isinstance(enabled, bool):
            return enabled
        return value != default
    if isinstance(value, bool):
        return value
    return value != default and value not in (None, (), [], {}, "")


def unacted_settings(config: Config) -> list[tuple[str, str]]:
    """(path, why) of each setting in `NOT_ACTED_ON` that `config` turns on or sets."""
    found = []
    for path, why in NOT_ACTED_ON.items():
        value, default = _lookup(config, path)
        if _in_effect(value, default):
            found.append((path, why))
    return found
