"""Dependencies and their live impact (seed 3.3, 4.3 `dependency_monitoring`).

The graph: the manifests' parent_child edges (a scenario requires its target packages, a package
requires its models) plus `dependency_map` entries (`resource` depends on each of `depends_on`,
`relation: requires` by default, or `uses`). A cycle is refused at load, named
(`DependencyCycle`).

Health (OK / Warning / Error) of a resource: its own, from its lifecycle state (error or failed:
Error; loading, deploying, unloaded, undeployed, pending, unknown, succeeded, or not seen yet:
Warning; otherwise OK) and its
firing alerts (critical: Error, warning: Warning); then, with `propagation.status_propagation`,
the worst of what its dependencies carry along the edges: a required dependency passes its
health on, a used one at most Warning. That is a scenario's and a package's `dependency_status`.
A dependency on a model of another node is followed through its state record in etcd
(`model/{id}/state`, written by that node's agent, `Unknown` when the elected agent found the node
lost), read every liveness round by `RemoteStates`; without a record it is Warning: never OK while
unknown.

Impact (`impact_analysis.propagation_rules`, e.g. `from_state: failed -> impact: critical`): when a
resource enters such a state (its reported word or its lifecycle word), every resource that
depends on it, transitively, gets an event `dependency_impact` with the impact level, and the root
cause gets one alert `dependency_impact` naming the impacted resources (one per root-cause
episode), resolved when it leaves the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent.alerts.alerts import AlertKey
from agent.evaluate.dependencies import Health, worst
from agent.evaluate.documents import DependencyDetail, state_of_record
from agent.evaluate.transitions import asil_of
from agent.graph import DependencyGraph, Node, Relation
from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from agent.alerts.alerts import AlertManager
    from agent.config import Config
    from agent.evaluate.states import StateChange, StateTracker
    from agent.manifests import Inventory
    from agent.model import Alert, AlertSeverity, Record
    from agent.store.keys import KeyMaker

KIND = "dependency_impact"
_IMPACT_ORDER: dict[AlertSeverity, int] = {"info": 0, "warning": 1, "critical": 2}
_WARNING_STATES = frozenset(
    {"loading", "deploying", "unloaded", "undeployed", "pending", "unknown", "succeeded"}
)
_ERROR_STATES = frozenset({"error", "failed"})


@dataclass(frozen=True, slots=True)
class Detail:
    node: Node
    relation: Relation
    health: Health
    reason: str


class Impact:
    """Live health along the graph, dependency status on change, impact alerts and events."""

    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        tracker: StateTracker,
        alerts: AlertManager,
        raise_alerts: Callable[[list[Alert]], None],
        *,
        keys: KeyMaker,
        submit_records: Callable[[list[Record]], None],
        submit_samples: Callable[[list[Sample]], None],
    ) -> None:
        self._world = world
        self._tracker = tracker
        self._alerts = alerts
        self._raise = raise_alerts
        self._keys = keys
        self._records = submit_records
        self._samples = submit_samples
        self.graph = self._graph()
        self._published: dict[Node, Health] = {}
        self.remote: dict[str, str | None] = {}
        """Model of another node -> its state as read from etcd (`follow`)."""
        self._roots: dict[Node, str] = {}
        """Root causes with a firing impact alert -> the state that raised it."""
        tracker.subscribe(self.changed)

    def _graph(self) -> DependencyGraph:
        config, inventory = self._world()
        return DependencyGraph.build(inventory, config.dependency_monitoring)

    def refresh(self) -> None:
        self.graph = self._graph()
        self._published.clear()
        self.publish()

    # health ---------------------------------------------------------------------------------

    def own_health(self, node: Node) -> tuple[Health, str]:
        inventory = self._world()[1]
        kind, name = node
        if (kind.value.capitalize(), name) in inventory.dangling:
            return "Error", "no manifest defines it"
        if kind is ResourceType.MODEL and name not in inventory.models:
            state = self.remote.get(name)
            if state is None:
                return "Warning", "on another node; its state is not known here"
            return self._health_of_state(kind, state), f"{state} (on another node, from etcd)"
        current = self._tracker.current(kind, name)
        health: Health = "OK"
        reason = "running"
        if current is None:
            if kind is ResourceType.SCENARIO:
                health, reason = "OK", "no state reported"
            else:
                health, reason = "Warning", "not seen yet"
        else:
            health, reason = self._health_of_state(kind, current[0]), current[0]
        for alert in self._alerts.firing():
            if (alert.resource_type, alert.resource_id) == (
                kind.value,
                name,
            ) and alert.kind != KIND:
                level: Health = "Error" if alert.severity == "critical" else "Warning"
                if worst([health, level]) != health:
                    health, reason = level, f"{alert.kind} firing"
        return health, reason

    def _health_of_state(self, kind: ResourceType, state: str) -> Health:
        word = (self._tracker.lifecycle(kind, state) or state).lower()
        if word in _ERROR_STATES or state.lower() in _ERROR_STATES:
            return "Error"
        if word in _WARNING_STATES:
            return "Warning"
        return "OK"

    def remote_models(self) -> list[str]:
        """Models of other nodes that something here depends on (followed through etcd)."""
        inventory = self._world()[1]
        return sorted(
            name
            for kind, name in self.graph.dependents
            if kind is ResourceType.MODEL
            and name not in inventory.models
            and ("Model", name) not in inventory.dangling
        )

    def follow(self, states: Mapping[str, str | None]) -> None:
        """The states of remote models as their nodes wrote them to etcd (None: none there);
        a change moves the dependency status of what depends on them."""
        if dict(states) != self.remote:
            self.remote = dict(states)
            self.publish()

    def dependency_status(
        self, node: Node, _seen: frozenset[Node] = frozenset()
    ) -> tuple[Health, list[Detail]]:
        """The worst health the dependencies of `node` carry to it, and each one's."""
        config = self._world()[0].dependency_monitoring
        details: list[Detail] = []
        for dep, relation in self.graph.depends_on.get(node, ()):
            if dep in _seen:
                continue
            own, reason = self.own_health(dep)
            health = worst([own, self.dependency_status(dep, _seen | {node})[0]])
            if relation == "uses" and health == "Error":
                health = "Warning"
            details.append(Detail(dep, relation, health, reason))
        if not config.propagation.status_propagation:
            return "OK", details
        return worst([d.health for d in details]), details

    # on change ------------------------------------------------------------------------------

    def changed(self, change: StateChange) -> None:
        if (change.resource_type, change.resource_id) in self.graph.dependents:
            # Only a resource something depends on can move a dependency status.
            self.publish()
        self._analyse(change)

    def publish(self) -> None:
        """Write the dependency status of every scenario and package whose status moved."""
        inventory = self._world()[1]
        now = time.time_ns()
        samples: list[Sample] = []
        nodes = [(ResourceType.SCENARIO, n) for n in inventory.scenarios]
        nodes += [(ResourceType.PACKAGE, n) for n in inventory.packages]
        for node in nodes:
            status, _ = self.dependency_status(node)
            if self._published.get(node) != status:
                self._published[node] = status
                samples.append(Sample(node[0], node[1], "dependency_status", status, "", now))
        if samples:
            self._samples(samples)

    def scenario_dependency(self, scenario: str) -> tuple[str, list[DependencyDetail]]:
        """A scenario's live dependency status and one detail per dependency (its document)."""
        node: Node = (ResourceType.SCENARIO, scenario)
        status = self.status_of(node)
        _, details = self.dependency_status(node)
        return status, [
            DependencyDetail(d.node[0].value.capitalize(), d.node[1], d.health) for d in details
        ]

    def health(self, node: Node) -> Health:
        """The live health of `node`: the worst of its own and what its dependencies carry."""
        return worst([self.own_health(node)[0], self.status_of(node)])

    def status_of(self, node: Node) -> Health:
        """The last published dependency status (what documents show)."""
        if node not in self._published:
            self._published[node] = self.dependency_status(node)[0]
        return self._published[node]

    def _rule(self, change: StateChange) -> AlertSeverity | None:
        config = self._world()[0].dependency_monitoring
        if not (config.enabled and config.impact_analysis.enabled):
            return None
        if not config.propagation.impact_analysis:
            return None
        words = self._tracker.words(change.resource_type, change.state)
        rules = config.impact_analysis.propagation_rules
        levels: list[AlertSeverity] = [r.impact for r in rules if r.from_state.lower() in words]
        if not levels:
            return None
        return max(levels, key=lambda level: _IMPACT_ORDER[level])

    def _analyse(self, change: StateChange) -> None:
        root: Node = (change.resource_type, change.resource_id)
        now = time.time_ns()
        key = AlertKey(root[0], root[1], KIND, "state")
        impact = self._rule(change)
        alerts: list[Alert] = []
        if impact is None:
            if self._roots.pop(root, None) is not None:
                alerts += self._alerts.resolve(
                    key, now_ns=now, message=f"{root[0].value} {root[1]} is {change.state} now"
                )
            self._raise(alerts)
            return
        if self._roots.keys() & self.graph.upstream(root):
            # Failing because something it depends on failed: impacted, not a root cause.
            self._raise(alerts)
            return
        impacted = self.graph.impacted(root)
        if not impacted or root in self._roots:
            return
        names = ", ".join(f"{t.value}/{i}" for t, i in impacted)
        message = f"{root[0].value} {root[1]} is {change.state}: impacts {names}"
        self._records(
            [
                self._keys.event(
                    kind,
                    name,
                    event_type=KIND,
                    severity=impact,
                    message=f"impacted by {root[0].value} {root[1]} ({change.state})",
                    details={
                        "root_cause": {"type": root[0].value, "id": root[1]},
                        "impact": impact,
                        "state": change.state,
                    },
                )
                for kind, name in impacted
            ]
        )
        self._roots[root] = change.state
        alerts += self._alerts.fire(
            key,
            severity=impact,
            value=change.state,
            threshold=names,
            asil=asil_of(self._world()[1], root[0], root[1]),
            message=message,
            now_ns=now,
        )
        self._raise(alerts)


class StateReader(Protocol):
    async def get(self, key: bytes) -> bytes | None: ...


class RemoteStates:
    """Reads the state records of the remote models `impact` depends on; one round per `step`
    (a chore of every agent's liveness round). Nothing is read while nothing is remote."""

    def __init__(self, store: StateReader, prefix: str, impact: Impact) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._impact = impact

    async def step(self) -> None:
        names = self._impact.remote_models()
        states: dict[str, str | None] = {}
        for name in names:
            raw = await self._store.get(f"{self._prefix}model/{name}/state".encode())
            states[name] = state_of_record(raw)
        self._impact.follow(states)
