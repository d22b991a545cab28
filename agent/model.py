"""Value types shared by every stage. Frozen, typed, and safe to hand across tasks."""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import AfterValidator

from agent.clock import rfc3339

RESOURCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Metric, task and other names that become one etcd key segment."""


class ResourceType(StrEnum):
    SCENARIO = "scenario"
    PACKAGE = "package"
    MODEL = "model"
    NODE = "node"


def check_resource_id(value: str) -> str:
    """A resource id becomes an etcd key segment: refuse anything that could break the layout."""
    if not RESOURCE_ID_PATTERN.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        detail = f"; it contains {' '.join(repr(c) for c in bad)}" if bad else ""
        raise ValueError(
            f"invalid resource id {value!r}: ids are 1-253 characters of letters, digits, '.', "
            f"'_' and '-', starting with a letter or digit{detail}"
        )
    return value


ResourceId = Annotated[str, AfterValidator(check_resource_id)]


Value = float | int | str | bool


class Sample(NamedTuple):
    """One measured value of one resource at one instant (wall clock, ns since the epoch).

    A named tuple, not a frozen dataclass: a node with a few hundred models makes thousands of
    these a second, and a tuple is built in a quarter of the time.
    """

    resource_type: ResourceType
    resource_id: str
    metric: str
    value: Value
    unit: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class EventView:
    """One notable thing that happened to a resource, for its status document."""

    type: str
    time_ns: int
    message: str
    severity: str


MEASURED_FIELDS = (
    "cpu_percent",
    "cpu_throttled",
    "cpu_throttled_s",
    "memory_mb",
    "memory_percent",
    "memory_limit_mb",
    "network_rx_mbps",
    "network_tx_mbps",
    "pids",
    "oom_kills",
)
"""What a collection measures of a running model, as opposed to what its runtime reports."""


@dataclass(frozen=True, slots=True)
class ModelView:
    """Everything known about one model on this node after a collection or a runtime event."""

    name: str
    node: str
    phase: str
    """Running, Pending, Succeeded, Failed or Unknown (the seed 7.3 phase)."""
    reason: str
    source: str
    """container, process, or none (nothing found for the model)."""
    container: str | None = None
    container_id: str | None = None
    image: str | None = None
    image_id: str | None = None
    created_ns: int | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    ready: bool = False
    cpu_percent: float | None = None
    cpu_throttled: int | None = None
    """Scheduler periods in which the model's CPU quota was exhausted (cumulative)."""
    cpu_throttled_s: float | None = None
    memory_mb: float | None = None
    memory_percent: float | None = None
    pod_ip: str | None = None
    """The IP of the model's own network namespace (a container's network); None without one."""
    host_network: bool = False
    """It shares the host's network namespace: its IP is the node's."""
    restart_policy: str | None = None
    """The container's own restart policy (no, on-failure, always...); None: not a container."""
    memory_limit_mb: float | None = None
    cpu_limit_cores: float | None = None
    """The CPU quota of the model's cgroup in cores (None: unlimited or not known)."""
    network_rx_mbps: float | None = None
    network_tx_mbps: float | None = None
    gpu_percent: float | None = None
    gpu_memory_mb: float | None = None
    pids: int | None = None
    oom_kills: int | None = None
    error_count: int = 0
    last_error: str | None = None
    events: tuple[EventView, ...] = ()


def found_here(view: ModelView) -> bool:
    """Whether a container or a process of the model exists on this node (a process model is
    `Pending` until one is found)."""
    return view.source == "container" or (view.source == "process" and view.phase != "Pending")


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid {kind} name {name!r} for an etcd key")
    return name


# Records, outbox messages and alerts ----------------------------------------------------------

RetentionClass = Literal["metrics", "events", "state_transitions"]


class Severity(IntEnum):
    """What a full buffer drops first: the lowest severity, oldest first."""

    SAMPLE = 0
    ROLLUP = 1
    INFO = 2
    WARNING = 3
    CRITICAL = 4


EVENT_SEVERITY: dict[str, Severity] = {
    "info": Severity.INFO,
    "warning": Severity.WARNING,
    "critical": Severity.CRITICAL,
}


FLOAT_MAX = sys.float_info.max


def saturating_add(total: float, value: float) -> float:
    """`total + value`, held at ±FLOAT_MAX instead of overflowing to infinity: a running sum of
    absurd but finite reports (1.7e308 each) stays finite, so every mean made from it does too.
    Sums of real measurements never come near the bound, so they are exact as before."""
    result = total + value
    if math.isfinite(result):
        return result
    return math.copysign(FLOAT_MAX, result) if not math.isnan(result) else total


BUFFER_DROP_REASONS = ("buffer_full", "disk_full", "write_error", "unavailable")
"""Why the buffer drops records: over `max_bytes`; its filesystem down to its reserve; a write
that failed; a file that cannot be opened."""


@dataclass(frozen=True, slots=True)
class Record:
    """One key-value write for etcd, as the buffer keeps it until etcd has acknowledged it."""

    key: str
    value: bytes
    retention: RetentionClass | None
    """The lease class; None for keys that live while the resource exists."""
    severity: Severity
    upsert: bool
    """Latest-value key: a newer record for the same key replaces the older one unsent."""
    created_ns: int

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One MQTT message waiting in the outbox; `severity` decides what a full outbox drops."""

    topic: str
    payload: bytes
    retain: bool
    severity: Severity
    created_ns: int


AlertSeverity = Literal["info", "warning", "critical"]
AlertStatus = Literal["firing", "resolved"]
AlertValue = float | int | str | None


def _json_value(value: AlertValue) -> AlertValue:
    # JSON has no NaN or infinity; their names keep the information a null would lose.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert message as published: the payload of ARCHITECTURE.md, "MQTT alerts"."""

    id: str
    status: AlertStatus
    severity: AlertSeverity
    kind: str
    resource_type: str
    resource_id: str
    node: str
    metric: str
    value: AlertValue
    threshold: AlertValue
    asil: str
    first_seen_ns: int
    last_seen_ns: int
    count: int
    message: str

    def topic(self, prefix: str) -> str:
        """`{prefix}/alerts/{node}/{type}/{id}`."""
        base = prefix.rstrip("/")
        return f"{base}/alerts/{self.node}/{self.resource_type}/{self.resource_id}"

    def payload(self) -> bytes:
        """Compact UTF-8 JSON; times are RFC 3339 UTC with nine fraction digits."""
        document = {
            "id": self.id,
            "status": self.status,
            "severity": self.severity,
            "kind": self.kind,
            "resource": {"type": self.resource_type, "id": self.resource_id},
            "node": self.node,
            "metric": self.metric,
            "value": _json_value(self.value),
            "threshold": _json_value(self.threshold),
            "asil": self.asil,
            "first_seen": rfc3339(self.first_seen_ns),
            "last_seen": rfc3339(self.last_seen_ns),
            "count": self.count,
            "message": self.message,
        }
        return json.dumps(
            document, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
