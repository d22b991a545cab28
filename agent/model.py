"""Value types shared by every stage. Frozen, typed, and safe to hand across tasks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, NamedTuple

from pydantic import AfterValidator

RESOURCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


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
    memory_limit_mb: float | None = None
    network_rx_mbps: float | None = None
    network_tx_mbps: float | None = None
    gpu_percent: float | None = None
    gpu_memory_mb: float | None = None
    pids: int | None = None
    oom_kills: int | None = None
    error_count: int = 0
    last_error: str | None = None
    events: tuple[EventView, ...] = ()
