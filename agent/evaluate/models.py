"""From model views to records: states, transitions, events and status documents.

Every collection (and every runtime event) of a model collector hands its views here. A changed
phase becomes a `state` record, a `transitions` record with the time spent in the previous phase,
and an event; every view becomes the model's status document. Packages whose models all live on
this node are rolled up right after; packages spanning nodes are the elected agent's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.evaluate.documents import SafetyMetricsDoc
from agent.evaluate.packages import PackageFacts, model_edges, package_document
from agent.evaluate.status import model_document
from agent.model import ModelView, ResourceType

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from agent.config import Config, StateTransitionTracking
    from agent.evaluate.documents import FunctionalSafety, PackageStatusDoc
    from agent.evaluate.states import StateChange, StateTracker
    from agent.manifests import Inventory, Package
    from agent.model import Record
    from agent.store.keys import KeyMaker

SEVERITY_OF_PHASE = {"Failed": "warning", "Unknown": "warning"}


def safety_state(safety: SafetyMetricsDoc) -> tuple[object, ...]:
    """The safetyMetrics whose change rewrites a model's document (the rest follow with its age):
    localStatus, safetyMonitorStatus, deadlineMissCount, budgetOverrunCount, worstCaseExecutionTime.
    """
    supervision = safety.supervision
    if supervision is None:
        return (None, safety.safety_monitor_status, None, None, None)
    return (
        supervision.local_status,
        safety.safety_monitor_status,
        supervision.deadline_miss_count,
        supervision.budget_overrun_count,
        supervision.worst_case_execution_time,
    )


def _asil(inventory: Inventory, model: str) -> str:
    placed = inventory.models.get(model)
    return placed.asil_level if placed is not None else "QM"


def local_packages(inventory: Inventory) -> list[Package]:
    """Packages whose every model is placed on this node."""
    return [
        package
        for package in inventory.packages.values()
        if package.spec.models and all(m.name in inventory.models for m in package.spec.models)
    ]


def package_facts(
    package: Package,
    inventory: Inventory,
    config: Config,
    sizes: tuple[Mapping[str, int], Mapping[str, int]],
    *,
    uses: tuple[int | None, int | None] = (None, None),
    extras: Callable[[str], tuple[Mapping[str, float], SafetyMetricsDoc | None]] | None = None,
    health: str | None = None,
) -> PackageFacts:
    """What `package_document` needs besides the views: `uses` (reported executions of the
    scenarios launching it, scenarios active), `extras(model)` (its reported metrics and
    safetyMetrics), `health` (its live health)."""
    names = {m.name for m in package.spec.models}
    supervised: dict[str, int] = {}
    response: dict[str, float] = {}
    for name in names if extras is not None else ():
        app, safety = extras(name)  # type: ignore[misc]
        if "responseTime" in app:
            response[name] = app["responseTime"]
        if safety is not None and safety.supervision is not None:
            supervised[name] = safety.supervision.deadline_miss_count or 0
    volumes = {
        name: tuple(v.volume or v.name for v in placed.manifest.spec.volumes)
        for name, placed in inventory.models.items()
        if name in names and placed.manifest is not None
    }
    edges = model_edges(names, config.dependency_monitoring.dependency_map)
    return PackageFacts(
        image_sizes=sizes[0],
        volume_sizes=sizes[1],
        volumes=volumes,
        dependencies=edges,
        node_of={m.name: m.node or inventory.node for m in package.spec.models},
        node_labels={inventory.node: config.node.labels},
        uses=uses[0],
        active_scenarios=uses[1],
        supervised=supervised,
        response_times=response,
        same_type=sum(
            1 for p in inventory.packages.values() if p.spec.packageType == package.spec.packageType
        ),
        health=health,
    )


def state_records(
    keys: KeyMaker, change: StateChange, tracking: StateTransitionTracking
) -> list[Record]:
    """The state record of a change, and its transition record as `tracking` asks (none with
    `transition_history: false`, no duration with `transition_duration: false`)."""
    records = [
        keys.state(
            change.resource_type,
            change.resource_id,
            state=change.state,
            since_ns=change.at_ns,
            previous=change.previous,
            reason=change.reason,
        )
    ]
    if change.previous is not None and tracking.enabled and tracking.tracking.transition_history:
        duration = tracking.tracking.transition_duration
        records.append(
            keys.transition(
                change.resource_type,
                change.resource_id,
                previous=change.previous,
                state=change.state,
                at_ns=change.at_ns,
                time_in_previous_ms=change.time_in_previous_ms if duration else None,
                expected=change.expected,
            )
        )
    return records


class ModelStatus:
    def __init__(
        self,
        keys: KeyMaker,
        tracker: StateTracker,
        world: Callable[[], tuple[Config, Inventory]],
        submit: Callable[[list[Record]], None],
        sizes: Callable[[], tuple[Mapping[str, int], Mapping[str, int]]],
        *,
        extras: Callable[[str], tuple[Mapping[str, float], SafetyMetricsDoc | None]] | None = None,
        uses: Callable[[Package], tuple[int | None, int | None]] | None = None,
        health: Callable[[str], str | None] | None = None,
        host_ip: Callable[[], str | None] | None = None,
        gpu: Callable[[str], tuple[float | None, float] | None] | None = None,
        functional: Callable[[str, ModelView], FunctionalSafety] | None = None,
        max_age_s: float = 60.0,
    ) -> None:
        """`uses(package)`: reported executions of the scenarios that launch it, and how many of
        them are active; `health(package)`: its live health (agent.evaluate.impact)."""
        self.views: dict[str, ModelView] = {}
        self._keys = keys
        self._tracker = tracker
        self._world = world
        self._submit = submit
        self._sizes = sizes
        self._extras = extras or (lambda _: ({}, None))
        self._uses = uses or (lambda _package: (None, None))
        self._health = health or (lambda _package: None)
        self._host_ip = host_ip or (lambda: None)
        self._gpu = gpu or (lambda _model: None)
        self._functional = functional
        self._max_age_s = max_age_s
        self._written: dict[str, tuple[object, float]] = {}
        self._package_state: dict[str, tuple[str, int]] = {}
        self._package_content: dict[str, tuple[object, int]] = {}

    def _change_records(self, change: StateChange) -> list[Record]:
        keys = self._keys
        rtype, rid = change.resource_type, change.resource_id
        records = state_records(keys, change, self._world()[0].state_transition_tracking)
        if change.previous is not None:
            # An unexpected one is also an alert (agent.evaluate.transitions), with its own event.
            severity = SEVERITY_OF_PHASE.get(change.state, "info")
            records.append(
                keys.event(
                    rtype,
                    rid,
                    event_type="state_changed",
                    severity=severity if change.expected else "warning",  # type: ignore[arg-type]
                    message=f"{change.previous} -> {change.state}: {change.reason}",
                    details={
                        "from": change.previous,
                        "to": change.state,
                        "time_in_previous_ms": change.time_in_previous_ms,
                    },
                    ts_ns=change.at_ns,
                )
            )
        return records

    def _due(self, key: str, signature: object) -> bool:
        """Whether a status document is worth writing: its state changed, or it is getting old.

        Its metrics change at every collection, but they have their own keys; the document is
        rewritten for what a reader acts on, and at least every `max_age_s`.
        """
        now = time.monotonic()
        last = self._written.get(key)
        if last is not None and last[0] == signature and now - last[1] < self._max_age_s:
            return False
        self._written[key] = (signature, now)
        return True

    def update(self, views: Iterable[ModelView], now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        config, inventory = self._world()
        records: list[Record] = []
        host_ip = self._host_ip()
        for view in views:
            self.views[view.name] = view
            change = self._tracker.observe(
                ResourceType.MODEL, view.name, view.phase, now, view.reason
            )
            if change is not None:
                records += self._change_records(change)
            app, safety = self._extras(view.name)
            signature = (
                view.phase,
                view.reason,
                view.ready,
                view.restarts,
                view.error_count,
                view.container_id,
                view.pod_ip,
                host_ip,
                None if safety is None else safety_state(safety),
            )
            if change is not None or self._due(f"model/{view.name}", signature):
                if self._functional is not None:
                    functional = self._functional(view.name, view)
                    base = safety or SafetyMetricsDoc(
                        asil_level=_asil(inventory, view.name), safety_monitor_status="Inactive"
                    )
                    safety = replace(base, functional=functional)
                document = model_document(
                    view,
                    inventory.models.get(view.name),
                    now,
                    app,
                    safety,
                    host_ip=host_ip,
                    gpu=self._gpu(view.name),
                )
                records.append(self._keys.status(ResourceType.MODEL, view.name, document.to_json()))
        records += self._package_records(config, inventory, now)
        self._submit(records)

    def _package_records(self, config: Config, inventory: Inventory, now: int) -> list[Record]:
        records: list[Record] = []
        sizes = self._sizes()
        for package in local_packages(inventory):
            views: dict[str, ModelView | None] = {
                m.name: self.views.get(m.name) for m in package.spec.models
            }
            facts = package_facts(
                package,
                inventory,
                config,
                sizes,
                uses=self._uses(package),
                extras=self._extras,
                health=self._health(package.name),
            )
            document = package_document(package, views, facts, now)
            deployment = str(document.metrics.deployment_status)
            current = document.current_state
            change = self._tracker.observe(
                ResourceType.PACKAGE, package.name, deployment, now, str(current)
            )
            if change is not None:
                records += self._change_records(change)
            metrics = document.metrics
            signature = (
                deployment,
                current,
                metrics.model_relationships,
                metrics.health_status,
                document.package_type_status,
                metrics.usage_count,
                metrics.active_scenarios,
            )
            document = self._package_times(package.name, document, signature, now)
            if change is not None or self._due(f"package/{package.name}", signature):
                records.append(
                    self._keys.status(ResourceType.PACKAGE, package.name, document.to_json())
                )
        return records

    def _package_times(
        self, name: str, document: PackageStatusDoc, signature: object, now: int
    ) -> PackageStatusDoc:
        """lastTransitionTime (of currentState), deploymentTime, lastUpdateTime (of the content),
        from what this agent has seen of the package."""
        current = str(document.current_state)
        state, since = self._package_state.get(name, (None, now))
        if state != current:
            self._package_state[name] = (current, now)
            since = now
        content, updated = self._package_content.get(name, (None, now))
        if content != signature:
            self._package_content[name] = (signature, now)
            updated = now
        tracked = self._tracker.current(ResourceType.PACKAGE, name)
        deployed = tracked[1] if tracked is not None and tracked[0] == "Deployed" else None
        return replace(
            document,
            last_transition_time=rfc3339(since),
            metrics=replace(
                document.metrics,
                deployment_time=None if deployed is None else rfc3339(deployed),
                last_update_time=rfc3339(updated),
            ),
        )

    def forget_missing(self, names: Mapping[str, object]) -> None:
        for name in [n for n in self.views if n not in names]:
            del self.views[name]
            self._tracker.forget(ResourceType.MODEL, name)
