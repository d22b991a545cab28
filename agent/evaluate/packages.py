"""Package roll-up (seed 2.2 and 7.2): a package's status computed from its models.

Pure functions: the local agent calls them with the views of its own models; for a package whose
models live on several nodes, the elected agent calls them with views rebuilt from every node's
model status documents in etcd.

- deploymentStatus: Deployed when every model runs, Failed when any model failed, else Undeployed.
- currentState: running (all run), degraded (some failed or lost while others run), error (nothing
  runs and something failed), initializing (models still starting).
- loadTime: from the first model's creation to the last model's start, once all run (deploying ->
  all models running).
- usageCount: the scenarios that launch the package (executions, once reported, count instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.evaluate.documents import (
    ModelDependency,
    ModelRelationships,
    NodeHealth,
    PackageMetrics,
    PackageModelStatus,
    PackageStatusDoc,
    PackageTypeStatus,
    PatternStatus,
    PropertiesStatus,
)
from agent.evaluate.status import format_duration

if TYPE_CHECKING:
    from agent.manifests import Package
    from agent.model import ModelView


@dataclass(frozen=True, slots=True)
class PackageFacts:
    """What the roll-up needs beyond the model views."""

    scenarios: tuple[str, ...] = ()
    image_sizes: Mapping[str, int] = field(default_factory=dict)
    """Image name (as the models name it) or id -> bytes."""
    volume_sizes: Mapping[str, int] = field(default_factory=dict)
    volumes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Model -> the volumes it mounts."""
    dependencies: tuple[tuple[str, str], ...] = ()
    """(source model, target model) pairs from the dependency map."""
    node_of: Mapping[str, str] = field(default_factory=dict)
    """Model -> node, for models without a view."""


def deployment(views: Mapping[str, ModelView | None]) -> tuple[str, str]:
    """(deploymentStatus, currentState) of a package whose models are `views`."""
    phases = [v.phase if v is not None else "Unknown" for v in views.values()]
    running = phases.count("Running")
    failed = phases.count("Failed")
    if phases and running == len(phases):
        return "Deployed", "running"
    if failed:
        return "Failed", "degraded" if running else "error"
    if running and "Unknown" in phases:
        return "Undeployed", "degraded"
    return "Undeployed", "initializing"


def _healthy(view: ModelView | None) -> bool:
    return view is not None and view.phase == "Running" and view.ready


def _load_time_ms(views: Mapping[str, ModelView | None]) -> float | None:
    present = [v for v in views.values() if v is not None]
    if not present or len(present) != len(views) or not all(v.phase == "Running" for v in present):
        return None
    created = [v.created_ns for v in present if v.created_ns is not None]
    started = [v.started_ns for v in present if v.started_ns is not None]
    if len(created) != len(present) or len(started) != len(present):
        return None
    return round(max(0, max(started) - min(created)) / 1e6, 3)


def _disk_mb(package: Package, views: Mapping[str, ModelView | None], facts: PackageFacts) -> float:
    images = {v.image for v in views.values() if v is not None and v.image}
    images |= {m.image for m in package.spec.models if m.image}
    image_bytes = sum(facts.image_sizes.get(image, 0) for image in images)
    volumes = {vol for model in views for vol in facts.volumes.get(model, ())}
    volume_bytes = sum(facts.volume_sizes.get(volume, 0) for volume in volumes)
    return round((image_bytes + volume_bytes) / 2**20, 3)


def _nodes(views: Mapping[str, ModelView | None], facts: PackageFacts) -> list[NodeHealth]:
    by_node: dict[str, list[ModelView | None]] = {}
    for name, view in views.items():
        node = view.node if view is not None else facts.node_of.get(name, "unknown")
        by_node.setdefault(node, []).append(view)
    result = []
    for node, node_views in sorted(by_node.items()):
        healthy = sum(1 for v in node_views if _healthy(v))
        status = (
            "healthy" if healthy == len(node_views) else "failed" if healthy == 0 else "degraded"
        )
        result.append(NodeHealth(name=node, status=status))
    return result


def package_document(
    package: Package,
    views: Mapping[str, ModelView | None],
    facts: PackageFacts,
    now_ns: int,
) -> PackageStatusDoc:
    """The `status:` block of a Package (seed 7.2)."""
    deployment_status, current = deployment(views)
    healthy = sum(1 for v in views.values() if _healthy(v))
    nodes = _nodes(views, facts)
    node_health = [n.status for n in nodes]
    pattern_health = (
        "healthy"
        if all(h == "healthy" for h in node_health)
        else "failed"
        if all(h == "failed" for h in node_health)
        else "degraded"
    )
    started = [v.started_ns for v in views.values() if v is not None and v.started_ns]
    uptime = (now_ns - min(started)) / 1e9 if deployment_status == "Deployed" and started else 0.0
    memory = [v.memory_mb for v in views.values() if v is not None and v.memory_mb is not None]
    status_of = {name: (v.phase if v is not None else "Unknown") for name, v in views.items()}
    version = package.metadata.annotations.get("version")
    return PackageStatusDoc(
        current_state=current,
        message=f"{healthy} of {len(views)} models healthy",
        models=tuple(
            PackageModelStatus(
                name=name,
                status=status_of[name],
                restarts=view.restarts if view is not None else 0,
                readiness=_healthy(view),
            )
            for name, view in views.items()
        ),
        pattern_status=PatternStatus(
            type=package.spec.pattern.type,
            health=pattern_health,
            nodes_matched=len(nodes),
            node_list=tuple(nodes),
            last_verified=rfc3339(now_ns),
        ),
        package_type_status=PackageTypeStatus(
            type=package.spec.packageType,
            properties_status=PropertiesStatus(
                lifecycle=package.spec.typeProperties.lifecycle,
                criticality=package.spec.typeProperties.criticality,
            ),
        ),
        metrics=PackageMetrics(
            deployment_status=deployment_status,
            version=version,
            usage_count=len(facts.scenarios),
            active_scenarios=len(facts.scenarios),
            uptime=format_duration(uptime),
            memory_usage=round(sum(memory), 3) if memory else None,
            disk_usage=_disk_mb(package, views, facts),
            load_time=_load_time_ms(views),
            model_relationships=ModelRelationships(
                total=len(views),
                healthy=healthy,
                unhealthy=len(views) - healthy,
                dependencies=tuple(
                    ModelDependency(
                        source=source,
                        target=target,
                        status="OK" if status_of.get(target) == "Running" else "Error",
                    )
                    for source, target in facts.dependencies
                ),
            ),
        ),
    )


def package_status(
    package: Package,
    views: Mapping[str, ModelView | None],
    facts: PackageFacts,
    now_ns: int,
) -> dict[str, object]:
    """`package_document(...).to_json()`: the block as it is written to etcd."""
    return package_document(package, views, facts, now_ns).to_json()
