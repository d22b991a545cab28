"""Model status documents in the shape of the seed's Model template (section 7.3, `status:`).

Fields the agent cannot know yet are present as null, so a reader sees the whole template; the
timing supervisor fills `safetyMetrics` and application reports fill inference time, throughput,
latency and accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.evaluate.documents import (
    Condition,
    ContainerState,
    ContainerStatus,
    ModelEvent,
    ModelMetrics,
    ModelStatusDoc,
    RunningState,
    SafetyMetricsDoc,
    TerminatedState,
    WaitingState,
)
from agent.model import ModelView, found_here

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


def _container_state(view: ModelView) -> ContainerState:
    if view.phase == "Running":
        return RunningState(_time(view.started_ns))
    if view.finished_ns is not None and view.exit_code is not None:
        return TerminatedState(
            exit_code=view.exit_code,
            finished_at=_time(view.finished_ns),
            reason="OOMKilled" if view.oom_killed else view.reason,
        )
    return WaitingState(view.reason)


def _bool(value: bool) -> str:  # noqa: FBT001 - a condition's status word
    return "True" if value else "False"


def conditions(
    view: ModelView, safety: SafetyMetricsDoc | None, now_ns: int
) -> tuple[Condition, ...]:
    """Scheduled (a container or process of it exists here), Initialized (it started at least
    once), Ready (it runs and is ready), TimingSupervised (only with supervised tasks: none failed
    or expired); lastProbeTime is when the observation was made."""
    probed = rfc3339(now_ns)
    found = [
        Condition("Scheduled", _bool(found_here(view)), probed),
        Condition("Initialized", _bool(view.started_ns is not None), probed),
        Condition("Ready", _bool(view.ready), probed),
    ]
    supervision = safety.supervision if safety is not None else None
    if supervision is not None:
        found.append(Condition("TimingSupervised", _bool(supervision.local_status == "OK"), probed))
    return tuple(found)


def model_document(
    view: ModelView,
    placed: PlacedModel | None,
    now_ns: int,
    app: Mapping[str, float] | None = None,
    safety: SafetyMetricsDoc | None = None,
    *,
    host_ip: str | None = None,
    gpu: tuple[float | None, float] | None = None,
) -> ModelStatusDoc:
    """The `status:` block of a Model, from what the collectors saw.

    `app` holds the application's reported metrics (inferenceTime, throughput, latency, accuracy),
    `safety` the timing supervisor's safetyMetrics (None: no supervised task, an inactive monitor),
    `host_ip` the node's address, `gpu` the (utilization %, memory MB) of its GPU processes.
    """
    asil = placed.asil_level if placed is not None else "QM"
    app = app or {}
    statuses = []
    if view.container is not None:
        statuses.append(
            ContainerStatus(
                name=view.container,
                state=_container_state(view),
                ready=view.ready,
                restart_count=view.restarts,
                image=view.image,
                image_id=view.image_id,
            )
        )
    if view.phase == "Running":
        load_status = "Loaded"
    elif view.phase == "Failed":
        load_status = "Error"
    else:
        load_status = LOAD_STATUS.get(view.phase, "Unloaded")
    return ModelStatusDoc(
        phase=view.phase,
        reason=view.reason,
        conditions=conditions(view, safety, now_ns),
        start_time=_time(view.started_ns),
        host_ip=host_ip,
        pod_ip=host_ip if view.host_network and view.phase == "Running" else view.pod_ip,
        container_statuses=tuple(statuses),
        metrics=ModelMetrics(
            load_status=load_status,
            load_time=load_time_ms(view),
            inference_time=app.get("inferenceTime"),
            throughput=app.get("throughput"),
            latency=app.get("latency"),
            accuracy=app.get("accuracy"),
            response_time=app.get("responseTime"),
            memory_usage=_round(view.memory_mb),
            memory_usage_percent=_round(view.memory_percent),
            cpu_usage=_round(view.cpu_percent),
            cpu_throttled_periods=view.cpu_throttled,
            cpu_throttled_time=_round(view.cpu_throttled_s),
            oom_kills=view.oom_kills,
            gpu_usage=_round(gpu[0] if gpu is not None else view.gpu_percent),
            gpu_memory_usage=_round(gpu[1] if gpu is not None else view.gpu_memory_mb),
            network_rx=_round(view.network_rx_mbps, 6),
            network_tx=_round(view.network_tx_mbps, 6),
            uptime=format_duration(uptime_s(view, now_ns)),
            health_status="Healthy" if view.phase == "Running" and view.ready else "Unhealthy",
            last_error=view.last_error,
            error_count=view.error_count,
            restarts=view.restarts,
            events=tuple(
                ModelEvent(
                    type=event.type,
                    time=rfc3339(event.time_ns),
                    message=event.message,
                    severity=event.severity,
                )
                for event in view.events
            ),
            safety_metrics=safety
            if safety is not None
            else SafetyMetricsDoc(asil_level=asil, safety_monitor_status="Inactive"),
        ),
    )


def model_status(
    view: ModelView,
    placed: PlacedModel | None,
    now_ns: int,
    app: Mapping[str, float] | None = None,
    safety: SafetyMetricsDoc | None = None,
) -> dict[str, object]:
    """`model_document(...).to_json()`: the block as it is written to etcd."""
    return model_document(view, placed, now_ns, app, safety).to_json()


def view_from_document(name: str, node: str, status: ModelStatusDoc) -> ModelView:
    """A model view rebuilt from a model's status document (for roll-ups across nodes)."""
    metrics = status.metrics
    first = status.container_statuses[0] if status.container_statuses else None
    memory = metrics.memory_usage
    return ModelView(
        name=name,
        node=node,
        phase=status.phase if status.phase is not None else "Unknown",
        reason=status.reason if status.reason is not None else "",
        source="etcd",
        image=first.image if first is not None else None,
        restarts=metrics.restarts if metrics.restarts is not None else 0,
        ready=status.phase == "Running" and metrics.health_status == "Healthy",
        memory_mb=float(memory) if memory is not None else None,
    )


def view_from_status(name: str, node: str, status: Mapping[str, object]) -> ModelView:
    """`view_from_document` of a status document as read from etcd (parsed tolerantly)."""
    return view_from_document(name, node, ModelStatusDoc.from_json(status))
