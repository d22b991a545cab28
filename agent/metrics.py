"""The metric catalogue: every metric name a collector emits, declared once.

Collectors emit from these declarations (the model view table here; the reported and scenario
tables are checked against them by tests/unit/test_metrics.py), and the config's
`resource_monitoring.<kind>.metrics` lists are validated against `CATALOGUE`, so the two cannot
drift. Node metrics are named by group (`load` gives load1, load5 and load15).
"""

from __future__ import annotations

from typing import Final

MODEL_VIEW_METRICS: Final[tuple[tuple[str, str, str], ...]] = (
    # (ModelView attribute, metric name, unit); "" for what is computed from the view.
    ("phase", "phase", ""),
    ("", "load_status", ""),
    ("", "load_time", "ms"),
    ("restarts", "restarts", ""),
    ("error_count", "error_count", ""),
    ("last_error", "last_error", ""),
    ("", "uptime", "s"),
    ("cpu_percent", "cpu_usage", "%"),
    ("cpu_throttled", "cpu_throttled", "periods"),
    ("cpu_throttled_s", "cpu_throttled_time", "s"),
    ("oom_kills", "oom_kills", ""),
    ("memory_mb", "memory_usage", "MB"),
    ("memory_percent", "memory_usage_percent", "%"),
    ("network_rx_mbps", "network_rx", "MB/s"),
    ("network_tx_mbps", "network_tx", "MB/s"),
    ("gpu_percent", "gpu_usage", "%"),
    ("gpu_memory_mb", "gpu_memory_usage", "MB"),
)
"""What a model collector (container, process) emits for each model view."""

APP_METRICS: Final = ("inference_time", "throughput", "latency", "accuracy", "response_time")
"""Reported by the application itself through the ingest socket (seed 7.3)."""

SAFETY_METRICS: Final = (
    "activations",
    "deadline_miss_count",
    "budget_overrun_count",
    "worst_case_execution_time",
    "average_execution_time",
    "scheduling_latency",
    "safety_status",
)
"""From the timing supervisor, for models with supervised tasks."""

SCENARIO_METRICS: Final = (
    "execution_count",
    "average_execution_time",
    "last_execution_time",
    "failure_rate",
    "last_execution_result",
    "active_state",
    "dependency_status",
)
"""From the orchestrator's reports (executions, states) and the dependency evaluation."""

PACKAGE_METRICS: Final = (
    "deployment_status",
    "version",
    "usage_count",
    "memory_usage",
    "disk_usage",
    "load_time",
    "model_health",
    "pattern_status",
)
"""The fields of a package's status document (packages have no per-metric keys)."""

NODE_METRIC_GROUPS: Final = (
    "cpu_usage",
    "memory_usage",
    "load",
    "disk_usage",
    "disk_io",
    "network",
    "pressure",
)
GPU_METRICS: Final = ("gpu_usage", "gpu_memory_usage")

STATE_METRICS: Final = ("time_in_state",)
"""From the state tracker, for every resource with a state (agent.evaluate.transitions)."""

_MODEL: Final = frozenset(
    [name for _, name, _ in MODEL_VIEW_METRICS]
    + list(APP_METRICS)
    + list(SAFETY_METRICS)
    + list(STATE_METRICS)
)
CATALOGUE: Final[dict[str, frozenset[str]]] = {
    "scenario": frozenset(SCENARIO_METRICS + STATE_METRICS),
    "package": frozenset(PACKAGE_METRICS + STATE_METRICS),
    "model": _MODEL,
    "container": _MODEL,
    "process": _MODEL,
    "node": frozenset(NODE_METRIC_GROUPS),
    "gpu": frozenset(GPU_METRICS),
}

LOAD_STATUS: Final = {"Running": "Loaded", "Failed": "Error"}
"""A model's load status (seed 7.3 `loadStatus`) by phase; any other phase is Unloaded."""


def load_status(phase: str) -> str:
    return LOAD_STATUS.get(phase, "Unloaded")
