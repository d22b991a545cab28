"""Package roll-up (seed 2.2 and 7.2): a package's status computed from its models.

Pure functions: the local agent calls them with the views of its own models; for a package whose
models live on several nodes, the elected agent calls them with views rebuilt from every node's
model status documents in etcd.

deploymentStatus and currentState, from the models' phases, first rule that applies:

| models | deploymentStatus | currentState |
|---|---|---|
| all Running | Deployed | running |
| any Failed | Failed | degraded (some run), error (none runs) |
| any Pending while one runs or has a container | Deploying | initializing |
| some Running, the rest Unknown or Succeeded | Undeployed | degraded |
| none Running, any Unknown or Succeeded | Undeployed | error |
| none has a container yet (or no models) | Undeployed | initializing |

- loadTime: from the first model's creation to the last model's start, once all run.
- usageCount: executions of the scenarios that launch the package, as reported; activeScenarios:
  those scenarios the orchestrator last reported active.
- patternStatus and patternMetrics: `nodeSelector` against the labels each node publishes
  (`node.labels`, in its liveness key); a node whose labels are not known does not match.
- packageTypeStatus: the rules of `TYPE_RULES` for each of the package's `types` labels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.evaluate.documents import (
    ModelDependency,
    ModelRelationships,
    NodeDistribution,
    NodeHealth,
    PackageMetrics,
    PackageModelStatus,
    PackageStatusDoc,
    PackageTypeMetrics,
    PackageTypeStatus,
    PatternMetrics,
    PatternStatus,
    PropertiesStatus,
    TypeConstraint,
    TypeSpecificMetric,
)
from agent.evaluate.status import format_duration
from agent.model import found_here

if TYPE_CHECKING:
    from agent.config.seed import DependencyEntry
    from agent.manifests import Package
    from agent.model import ModelView


@dataclass(frozen=True, slots=True)
class PackageFacts:
    """What the roll-up needs beyond the model views."""

    image_sizes: Mapping[str, int] = field(default_factory=dict)
    """Image name (as the models name it) or id -> bytes."""
    volume_sizes: Mapping[str, int] = field(default_factory=dict)
    volumes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Model -> the volumes it mounts."""
    dependencies: tuple[tuple[str, str], ...] = ()
    """(source model, target model) pairs from the dependency map."""
    node_of: Mapping[str, str] = field(default_factory=dict)
    """Model -> node, for models without a view."""
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Node -> the labels it publishes; a node missing here has unknown labels."""
    uses: int | None = None
    """Reported executions of the scenarios that launch the package (None: not known here)."""
    active_scenarios: int | None = None
    supervised: Mapping[str, int] = field(default_factory=dict)
    """Model with supervised tasks -> its deadline misses so far."""
    response_times: Mapping[str, float] = field(default_factory=dict)
    """Model -> its reported response time (ms)."""
    same_type: int | None = None
    """Packages of the same packageType that this agent evaluates, this one included."""
    health: str | None = None
    """The package's live health (OK, Warning, Error), from agent.evaluate.impact."""
    sizes_known: bool = True
    """Whether image and volume sizes were measured (False: diskUsage is null)."""
    judge_types: bool = True
    """Whether the views carry what the type rules need (limits, supervision): False for views
    rebuilt from other nodes' documents, whose packages are then not judged."""


def model_edges(
    names: Collection[str], dependency_map: Iterable[DependencyEntry]
) -> tuple[tuple[str, str], ...]:
    """(source, target) of the dependency map's model -> model entries within `names`."""
    return tuple(
        (entry.resource, dep.id)
        for entry in dependency_map
        for dep in entry.depends_on
        if entry.resource in names and dep.type == "model" and dep.id in names
    )


def deployment(views: Mapping[str, ModelView | None]) -> tuple[str, str]:
    """(deploymentStatus, currentState) of a package whose models are `views` (the table above)."""
    phases = [v.phase if v is not None else "Unknown" for v in views.values()]
    running = phases.count("Running")
    if phases and running == len(phases):
        return "Deployed", "running"
    if "Failed" in phases:
        return "Failed", "degraded" if running else "error"
    started = any(v is not None and found_here(v) for v in views.values())
    if "Pending" in phases and (running or started):
        return "Deploying", "initializing"
    if running:
        return "Undeployed", "degraded"
    if "Unknown" in phases or "Succeeded" in phases:
        return "Undeployed", "error"
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


def _disk_mb(
    package: Package, views: Mapping[str, ModelView | None], facts: PackageFacts
) -> float | None:
    if not facts.sizes_known:
        return None
    images = {v.image for v in views.values() if v is not None and v.image}
    images |= {m.image for m in package.spec.models if m.image}
    image_bytes = sum(facts.image_sizes.get(image, 0) for image in images)
    volumes = {vol for model in views for vol in facts.volumes.get(model, ())}
    volume_bytes = sum(facts.volume_sizes.get(volume, 0) for volume in volumes)
    return round((image_bytes + volume_bytes) / 2**20, 3)


def _placement(views: Mapping[str, ModelView | None], facts: PackageFacts) -> dict[str, list[str]]:
    """Node -> the package's models placed on it."""
    by_node: dict[str, list[str]] = {}
    for name, view in views.items():
        node = view.node if view is not None else facts.node_of.get(name, "unknown")
        by_node.setdefault(node, []).append(name)
    return by_node


def _nodes(
    views: Mapping[str, ModelView | None], placement: Mapping[str, list[str]]
) -> list[NodeHealth]:
    result = []
    for node, names in sorted(placement.items()):
        healthy = sum(1 for name in names if _healthy(views[name]))
        status = "healthy" if healthy == len(names) else "failed" if healthy == 0 else "degraded"
        result.append(NodeHealth(name=node, status=status))
    return result


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """Whether a node with `labels` (None: not known) satisfies `selector` (every key equal)."""
    if not selector:
        return True
    return labels is not None and all(labels.get(k) == v for k, v in selector.items())


def _percent(part: float, whole: float) -> float | None:
    return None if whole <= 0 else round(part / whole * 100, 3)


def _pattern_metrics(
    package: Package,
    views: Mapping[str, ModelView | None],
    placement: Mapping[str, list[str]],
    nodes: list[NodeHealth],
    matched: list[str],
) -> PatternMetrics:
    def runs(name: str) -> bool:
        view = views[name]
        return view is not None and view.phase == "Running"

    running = [sum(1 for name in placement[node] if runs(name)) for node in sorted(placement)]
    balance = (
        None if not running or max(running) == 0 else round(min(running) / max(running) * 100, 3)
    )
    statuses = [n.status for n in nodes if n.name in matched]
    return PatternMetrics(
        type=package.spec.pattern.type,
        effective_deployment_rate=_percent(sum(running), len(views)),
        pattern_compliance_score=_percent(len(matched), len(placement)),
        node_distribution=NodeDistribution(
            matched=len(matched),
            healthy=statuses.count("healthy"),
            degraded=statuses.count("degraded"),
            failed=statuses.count("failed"),
        ),
        balance_score=balance,
    )


# The rules of a package type (`metadata.labels.types`), each checked on every model of it.
TYPE_RULES: dict[str, tuple[str, ...]] = {
    "resource-bounded": ("memory-limit", "cpu-limit"),
    "time-critical": ("timing-supervised", "no-deadline-misses"),
}
"""Type -> its constraints. memory-limit: every model's cgroup has a memory limit (as read while
it runs); cpu-limit: every model's container was given a CPU quota (podman's HostConfig);
timing-supervised: every model has supervised tasks; no-deadline-misses:
none of them missed a deadline. Types without rules are not judged."""


def _package_types(package: Package) -> tuple[str, ...]:
    types = package.metadata.labels.get("types", ())
    return (types,) if isinstance(types, str) else tuple(types)


def _constraint(rule: str, views: Mapping[str, ModelView | None], facts: PackageFacts) -> bool:
    present = list(views.values())
    if rule == "memory-limit":
        return all(v is not None and v.memory_limit_mb is not None for v in present)
    if rule == "cpu-limit":
        return all(v is not None and v.cpu_limit_cores is not None for v in present)
    if rule == "timing-supervised":
        return all(name in facts.supervised for name in views)
    return all(facts.supervised.get(name, 0) == 0 for name in views)  # no-deadline-misses


def _type_status(
    package: Package, views: Mapping[str, ModelView | None], facts: PackageFacts
) -> tuple[PackageTypeStatus, tuple[TypeSpecificMetric, ...]]:
    rules = [
        rule
        for t in (_package_types(package) if facts.judge_types else ())
        for rule in TYPE_RULES.get(t, ())
    ]
    constraints = tuple(
        TypeConstraint(name=rule, status="met" if _constraint(rule, views, facts) else "not-met")
        for rule in dict.fromkeys(rules)
    )
    compliance = (
        None
        if not constraints
        else "compliant"
        if all(c.status == "met" for c in constraints)
        else "non-compliant"
    )
    specific: list[TypeSpecificMetric] = []
    if "memory-limit" in rules:
        used = [v.memory_percent for v in views.values() if v is not None and v.memory_limit_mb]
        used_ = [u for u in used if u is not None]
        specific.append(
            TypeSpecificMetric(
                name="maxMemoryUsagePercent",
                value=round(max(used_), 3) if used_ else None,
                threshold=100.0,
            )
        )
    if "no-deadline-misses" in rules:
        specific.append(
            TypeSpecificMetric(
                name="deadlineMisses",
                value=float(sum(facts.supervised.get(n, 0) for n in views)),
                threshold=0.0,
            )
        )
    status = PackageTypeStatus(
        type=package.spec.packageType,
        compliance_status=compliance,
        type_constraints=constraints,
        properties_status=PropertiesStatus(
            lifecycle=package.spec.typeProperties.lifecycle,
            criticality=package.spec.typeProperties.criticality,
        ),
    )
    return status, tuple(specific)


_OPERATIONAL = {
    "running": "operational",
    "initializing": "starting",
    "degraded": "degraded",
    "error": "down",
}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return round(ordered[middle], 3)
    return round((ordered[middle - 1] + ordered[middle]) / 2, 3)


def _dependency_status(target: ModelView | None) -> str:
    if target is None or target.phase == "Unknown":
        return "Warning"
    return "OK" if target.phase == "Running" else "Error"


def package_document(
    package: Package,
    views: Mapping[str, ModelView | None],
    facts: PackageFacts,
    now_ns: int,
) -> PackageStatusDoc:
    """The `status:` block of a Package (seed 7.2)."""
    deployment_status, current = deployment(views)
    healthy = sum(1 for v in views.values() if _healthy(v))
    placement = _placement(views, facts)
    nodes = _nodes(views, placement)
    selector = package.spec.pattern.nodeSelector
    matched = [n for n in sorted(placement) if selector_matches(selector, facts.node_labels.get(n))]
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
    version = package.metadata.annotations.get("version")
    type_status, type_metrics = _type_status(package, views, facts)
    return PackageStatusDoc(
        current_state=current,
        message=f"{healthy} of {len(views)} models healthy",
        models=tuple(
            PackageModelStatus(
                name=name,
                status=view.phase if view is not None else "Unknown",
                restarts=view.restarts if view is not None else None,
                readiness=_healthy(view),
            )
            for name, view in views.items()
        ),
        pattern_status=PatternStatus(
            type=package.spec.pattern.type,
            health=pattern_health,
            nodes_matched=len(matched),
            node_list=tuple(nodes),
            last_verified=rfc3339(now_ns),
        ),
        package_type_status=type_status,
        metrics=PackageMetrics(
            deployment_status=deployment_status,
            version=version,
            package_type=PackageTypeMetrics(
                type=package.spec.packageType,
                count=facts.same_type,
                operational_status=_OPERATIONAL[current],
                typical_response_time=_median(
                    [facts.response_times[n] for n in views if n in facts.response_times]
                ),
                health_score=_percent(healthy, len(views)),
                type_specific_metrics=type_metrics,
            ),
            pattern_metrics=_pattern_metrics(package, views, placement, nodes, matched),
            usage_count=facts.uses,
            active_scenarios=facts.active_scenarios,
            uptime=format_duration(uptime),
            health_status=facts.health,
            memory_usage=round(sum(memory), 3) if memory else None,
            disk_usage=_disk_mb(package, views, facts),
            load_time=_load_time_ms(views),
            model_relationships=ModelRelationships(
                total=len(views),
                healthy=healthy,
                unhealthy=len(views) - healthy,
                dependencies=tuple(
                    ModelDependency(
                        source=source, target=target, status=_dependency_status(views.get(target))
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
