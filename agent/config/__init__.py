"""The agent's configuration: one schema, defined once, frozen, unknown keys refused.

Every YAML block of seed sections 3-5 is accepted exactly as written there; the agent's own
sections (`node`, `manifests`, `buffer`, `mqtt`, `ingest`, `timing`, `recovery`, `api`, `logging`)
complete it.
Relative paths are resolved against the configuration file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from agent.config.seed import (
    METRIC_CATALOGUE,
    AnomalyDetection,
    AnomalyMethod,
    ApiDefinition,
    ApiParameter,
    Baseline,
    Compaction,
    ContainerMonitoring,
    DataAccess,
    DataOrganization,
    DataStorage,
    DependencyEntry,
    DependencyMonitoring,
    DependencyRef,
    EtcdConnection,
    GpuMonitoring,
    ImpactAnalysis,
    KeyStructure,
    KindMonitoring,
    ModelMonitoring,
    NodeMonitoring,
    PackageMonitoring,
    PerformanceMetric,
    PerformanceMonitoring,
    ProcessBinding,
    ProcessMonitoring,
    Propagation,
    PropagationRule,
    ResourceMonitoring,
    ResourceStateMonitoring,
    Retention,
    ScenarioMonitoring,
    Section,
    StateAlerting,
    StateTracking,
    StateTransitionTracking,
    StuckStates,
    TLSFiles,
    TrackedResource,
    TransitionTracking,
)
from agent.model import ResourceId, ResourceType
from agent.units import ByteSize, PositiveDuration
from agent.validation import validate
from agent.yamlsrc import load_single

DEFAULT_CONFIG_PATH = Path("/etc/piccolo/agent.yaml")


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
    watch: PositiveDuration | None = 2.0
    """How often the manifest files and folders are checked for a change (a few stat calls);
    a changed set is applied like a reload. null: only a reload (SIGHUP) reads them again."""


class Buffer(Section):
    file: Path = Path("buffer.sqlite3")
    """Relative to the state directory."""
    max_bytes: ByteSize = 256 * 2**20
    sync: Literal["normal", "full"] = "normal"
    min_free_bytes: ByteSize = 2 * 2**20
    """Free space the buffer leaves on its filesystem (at most a quarter of the filesystem):
    beyond it, records are dropped as if the buffer were full (reason `disk_full`)."""


_DEFAULT_MQTT_PORTS = {False: 1883, True: 8883}


def parse_broker(text: str, *, tls: bool) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `host`, optionally behind `mqtt://` or `mqtts://`; ValueError
    naming what is wrong (the port 1-65535)."""
    scheme, _, rest = text.rpartition("://")
    tls = tls or scheme.lower() == "mqtts"
    host, port_text = rest, str(_DEFAULT_MQTT_PORTS[tls])
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    port = int(port_text) if port_text.isdigit() else 0
    if scheme and scheme.lower() not in {"mqtt", "mqtts"}:
        raise ValueError(f"invalid MQTT broker address {text!r}: the scheme is mqtt or mqtts")
    if not host or not 0 < port < 65536:
        raise ValueError(
            f"invalid MQTT broker address {text!r}: expected host:port, the port 1-65535"
        )
    return host, port


class Mqtt(Section):
    enabled: bool = True
    broker: str = "127.0.0.1:1883"

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker(value, tls=False)
        return value

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


class RecoveryPolicy(Section):
    """How a failed model is restarted (agent.recovery)."""

    enabled: bool = False
    max_restarts: int = Field(default=3, ge=0)
    """Restarts within `window`; one more crash gives up (a critical `recovery` alert)."""
    window: PositiveDuration = 600.0
    """The span `max_restarts` counts over, and how long a model must run cleanly for its
    backoff to start again from `backoff` (and its alert episode to end)."""
    backoff: PositiveDuration = 5.0
    """The wait before the first restart, doubled at each further one up to `backoff_cap`."""
    backoff_cap: PositiveDuration = 300.0
    command: str | None = None
    """For process models: the command that restarts one (run by /bin/sh, `{model}` replaced
    by its name); none: process models are not restarted."""


class RecoveryOverride(RecoveryPolicy):
    model: ResourceId
    allow_asil: bool = False
    """An ASIL A-D model is restarted only with this: a restart of a safety function by the
    monitor is a decision of the safety concept, not a default."""


class Recovery(RecoveryPolicy):
    models: tuple[RecoveryOverride, ...] = ()
    """Per-model policies, in place of the global one for that model."""

    def for_model(self, model: str) -> RecoveryOverride:
        """The policy of `model`: its override, else the global settings (no ASIL opt-in)."""
        for override in self.models:
            if override.model == model:
                return override
        return RecoveryOverride.model_construct(
            **self.model_dump(exclude={"models"}), model=model, allow_asil=False
        )


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the API listens: a Unix socket path, or a host (name or address) and a port."""

    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def loopback(self) -> bool:
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listen:
    """`127.0.0.1:9108`, `[::1]:9108`, `localhost:9108`, or a Unix socket: `/run/x.sock`,
    `unix:/run/x.sock`. ValueError naming what is wrong."""
    if text.startswith(("/", "unix:")):
        path = Path(text.removeprefix("unix:"))
        if not path.is_absolute():
            raise ValueError(f"a Unix socket path must be absolute; got {text!r}")
        return Listen(path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port or a Unix socket path; got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1-65535; got {port!r}")
    return Listen(host=host, port=int(port))


class Api(Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"
    """host:port or a Unix socket path. Beyond loopback only with tls (client certificates:
    ca_file) or token_file."""
    tls: TLSFiles = TLSFiles()
    """Server certificate and key; with ca_file, clients must present a certificate it signed."""
    token_file: Path | None = None
    """A file holding a bearer token every request must carry (`Authorization: Bearer ...`)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _secured(self) -> Self:
        if self.tls.enabled and (self.tls.cert_file is None or self.tls.key_file is None):
            raise ValueError("api.tls.enabled needs cert_file and key_file (the server's)")
        where = parse_listen(self.listen)
        if (
            self.enabled
            and not where.loopback
            and not (
                (self.tls.enabled and self.tls.ca_file is not None) or self.token_file is not None
            )
        ):
            raise ValueError(
                f"api.listen {self.listen!r} is reachable beyond this machine: configure tls with "
                "client certificates (cert_file, key_file, ca_file) or a token_file, or listen on "
                "loopback or a Unix socket"
            )
        return self


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


from agent.config.effect import COMPATIBILITY, NOT_ACTED_ON, unacted_settings  # noqa: E402 - it reads Config

__all__ = [
    "COMPATIBILITY",
    "DEFAULT_CONFIG_PATH",
    "METRIC_CATALOGUE",
    "NOT_ACTED_ON",
    "AnomalyDetection",
    "AnomalyMethod",
    "Api",
    "ApiDefinition",
    "ApiParameter",
    "Baseline",
    "Buffer",
    "CheckpointGraph",
    "Compaction",
    "Config",
    "ContainerMonitoring",
    "DataAccess",
    "DataOrganization",
    "DataStorage",
    "DependencyEntry",
    "DependencyMonitoring",
    "DependencyRef",
    "EtcdConnection",
    "GpuMonitoring",
    "ImpactAnalysis",
    "Ingest",
    "KeyStructure",
    "KindMonitoring",
    "Logging",
    "Manifests",
    "ModelMonitoring",
    "Mqtt",
    "Node",
    "NodeMonitoring",
    "PackageMonitoring",
    "PerformanceMetric",
    "PerformanceMonitoring",
    "ProcessBinding",
    "ProcessMonitoring",
    "Propagation",
    "PropagationRule",
    "Recovery",
    "ResourceMonitoring",
    "ResourceStateMonitoring",
    "ResourceType",
    "Retention",
    "ScenarioMonitoring",
    "Section",
    "StateAlerting",
    "StateTracking",
    "StateTransitionTracking",
    "StuckStates",
    "TLSFiles",
    "Timing",
    "TracedTask",
    "TrackedResource",
    "TransitionTracking",
    "load_config",
    "unacted_settings",
]
