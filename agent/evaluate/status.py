"""Model status documents in the shape of the seed's Model template (section 7.3, `status:`).

Fields the agent cannot know yet are present as null, so a reader sees the whole template; the
timing supervisor fills `safetyMetrics` and application reports fill inference time, throughput,
latency and accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.model import ModelView

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent.manifests import PlacedModel

LOAD_STATUS = {"Running": "Loaded", "Pending": "Unloaded", "Succeeded": "Unloaded"}


def _time(ns: int | None) -> str | None:
    return None if ns is None else rfc3339(ns)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def uptime_s(view: ModelView, now_ns: int) -> float:
    if view.phase != "Running" or view.started_ns is None:
        return 0.0
    return max(0.0, (now_ns - view.started_ns) / 1e9)


def load_time_ms(view: ModelView) -> float | None:
    """Creation of the container to its start: how long the model took to load."""
    if view.created_ns is None or view.started_ns is None or view.started_ns < view.created_ns:
        return None
    return round((view.started_ns - view.created_ns) / 1e6, 3)


def format_duration(seconds: float) -> str:
    """`3725.2` -> `1h2m5s`: the template's uptime is a duration string."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _container_state(view: ModelView) -> dict[str, object]:
    if view.phase == "Running":
        return {"running": {"startedAt": _time(view.started_ns)}}
    if view.finished_ns is not None and view.exit_code is not None:
        return {
            "terminated": {
                "exitCode": view.exit_code,
                "finishedAt": _time(view.finished_ns),
                "reason": "OOMKilled" if view.oom_killed else view.reason,
            }
        }
    return {"waiting": {"reason": view.reason}}


def model_status(
    view: ModelView,
    placed: PlacedModel | None,
    now_ns: int,
    app: Mapping[str, float] | None = None,
    safety: dict[str, object] | None = None,
) -> dict[str, object]:
    """The `status:` block of a Model, from what the collectors saw.

    `app` holds the application's reported metrics (inferenceTime, throughput, latency, accuracy),
    `safety` the timing supervisor's safetyMetrics.
    """
    asil = placed.asil_level if placed is not None else "QM"
    app = app or {}
    statuses = []
    if view.container is not None:
        statuses.append(
            {
                "name": view.container,
                "state": _container_state(view),
                "ready": view.ready,
                "restartCount": view.restarts,
                "image": view.image,
                "imageID": view.image_id,
            }
        )
    if view.phase == "Running":
        load_status = "Loaded"
    elif view.phase == "Failed":
        load_status = "Error"
    else:
        load_status = LOAD_STATUS.get(view.phase, "Unloaded")
    return {
        "phase": view.phase,
        "reason": view.reason,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if view.ready else "False",
                "lastProbeTime": rfc3339(now_ns),
            }
        ],
        "startTime": _time(view.started_ns),
        "hostIP": None,
        "podIP": None,
        "containerStatuses": statuses,
        "metrics": {
            "loadStatus": load_status,
            "loadTime": load_time_ms(view),
            "inferenceTime": app.get("inferenceTime"),
            "throughput": app.get("throughput"),
            "latency": app.get("latency"),
            "accuracy": app.get("accuracy"),
            "responseTime": app.get("responseTime"),
            "memoryUsage": _round(view.memory_mb),
            "memoryUsagePercent": _round(view.memory_percent),
            "cpuUsage": _round(view.cpu_percent),
            "cpuThrottledPeriods": view.cpu_throttled,
            "cpuThrottledTime": _round(view.cpu_throttled_s),
            "oomKills": view.oom_kills,
            "gpuUsage": _round(view.gpu_percent),
            "gpuMemoryUsage": _round(view.gpu_memory_mb),
            "networkRx": _round(view.network_rx_mbps, 6),
            "networkTx": _round(view.network_tx_mbps, 6),
            "uptime": format_duration(uptime_s(view, now_ns)),
            "healthStatus": "Healthy" if view.phase == "Running" and view.ready else "Unhealthy",
            "lastError": view.last_error,
            "errorCount": view.error_count,
            "restarts": view.restarts,
            "events": [
                {
                    "type": event.type,
                    "time": rfc3339(event.time_ns),
                    "message": event.message,
                    "severity": event.severity,
                }
                for event in view.events
            ],
            "safetyMetrics": safety or {"asilLevel": asil, "safetyMonitorStatus": "Inactive"},
        },
    }


def view_from_status(name: str, node: str, status: dict[str, object]) -> ModelView:
    """A model view rebuilt from a status document in etcd (for roll-ups across nodes)."""
    metrics = status.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    containers = status.get("containerStatuses")
    first = containers[0] if isinstance(containers, list) and containers else {}
    first = first if isinstance(first, dict) else {}
    memory = metrics.get("memoryUsage")
    restarts = metrics.get("restarts")
    return ModelView(
        name=name,
        node=node,
        phase=str(status.get("phase", "Unknown")),
        reason=str(status.get("reason", "")),
        source="etcd",
        image=first.get("image") if isinstance(first.get("image"), str) else None,
        restarts=restarts if isinstance(restarts, int) else 0,
        ready=status.get("phase") == "Running" and metrics.get("healthStatus") == "Healthy",
        memory_mb=float(memory) if isinstance(memory, int | float) else None,
    )
