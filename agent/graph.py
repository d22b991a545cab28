"""The dependency graph of the node's resources (seed 3.3, 4.3), checked when config and manifests
load: the manifests' parent_child edges (a scenario requires its target packages, a package its
models) plus `dependency_monitoring.dependency_map` (`requires` by default, or `uses`). A cycle is
refused, named (`DependencyCycle`). What the edges carry at run time is agent.evaluate.impact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.model import ResourceType

if TYPE_CHECKING:
    from agent.config import DependencyMonitoring
    from agent.manifests import Inventory

Node = tuple[ResourceType, str]
Relation = Literal["requires", "uses"]


class DependencyCycle(ValueError):  # noqa: N818 - named for the condition
    """The dependency graph has a cycle; `cycle` lists it, first node again at the end."""

    def __init__(self, cycle: list[Node]) -> None:
        self.cycle = cycle
        path = " -> ".join(f"{t.value}/{i}" for t, i in cycle)
        super().__init__(f"dependency cycle: {path}")


def _find(inventory: Inventory, name: str) -> Node | None:
    for kind, table in (
        (ResourceType.MODEL, inventory.models),
        (ResourceType.PACKAGE, inventory.packages),
        (ResourceType.SCENARIO, inventory.scenarios),
    ):
        if name in table:
            return (kind, name)
    return None


@dataclass(frozen=True, slots=True)
class DependencyGraph:
    depends_on: Mapping[Node, tuple[tuple[Node, Relation], ...]]
    dependents: Mapping[Node, tuple[Node, ...]]

    @classmethod
    def build(cls, inventory: Inventory, monitoring: DependencyMonitoring) -> DependencyGraph:
        edges: dict[Node, list[tuple[Node, Relation]]] = {}
        if monitoring.enabled and "parent_child" in monitoring.dependency_types:
            _parent_child(inventory, edges)
        if monitoring.enabled:
            _mapped(inventory, monitoring, edges)
        dependents: dict[Node, list[Node]] = {}
        for node, deps in edges.items():
            for dep, _ in deps:
                dependents.setdefault(dep, []).append(node)
        graph = cls(
            {k: tuple(v) for k, v in edges.items()}, {k: tuple(v) for k, v in dependents.items()}
        )
        if (cycle := graph.cycle()) is not None:
            raise DependencyCycle(cycle)
        return graph

    def cycle(self) -> list[Node] | None:
        """A cycle of the graph (its first node repeated at the end), or None."""
        done: set[Node] = set()
        for start in self.depends_on:
            if start in done:
                continue
            path: list[Node] = []
            on_path: set[Node] = set()
            stack: list[tuple[Node, int]] = [(start, 0)]
            while stack:
                node, index = stack.pop()
                if index == 0:
                    path.append(node)
                    on_path.add(node)
                deps = self.depends_on.get(node, ())
                if index < len(deps):
                    stack.append((node, index + 1))
                    nxt = deps[index][0]
                    if nxt in on_path:
                        return [*path[path.index(nxt) :], nxt]
                    if nxt not in done:
                        stack.append((nxt, 0))
                else:
                    done.add(node)
                    on_path.discard(node)
                    path.pop()
        return None

    def upstream(self, node: Node) -> set[Node]:
        """Everything `node` depends on, transitively."""
        seen: set[Node] = set()
        queue = deque([node])
        while queue:
            for dep, _ in self.depends_on.get(queue.popleft(), ()):
                if dep not in seen:
                    seen.add(dep)
                    queue.append(dep)
        return seen

    def impacted(self, root: Node) -> list[Node]:
        """Every resource that depends on `root`, transitively, nearest first."""
        seen: set[Node] = {root}
        order: list[Node] = []
        queue = deque([root])
        while queue:
            for dependent in self.dependents.get(queue.popleft(), ()):
                if dependent not in seen:
                    seen.add(dependent)
                    order.append(dependent)
                    queue.append(dependent)
        return order


def _parent_child(inventory: Inventory, edges: dict[Node, list[tuple[Node, Relation]]]) -> None:
    for scenario in inventory.scenarios.values():
        for target in scenario.spec.target.packages:
            node = (ResourceType.SCENARIO, scenario.name)
            edges.setdefault(node, []).append(((ResourceType.PACKAGE, target), "requires"))
    for package in inventory.packages.values():
        for model in package.spec.models:
            node = (ResourceType.PACKAGE, package.name)
            edges.setdefault(node, []).append(((ResourceType.MODEL, model.name), "requires"))


def _mapped(
    inventory: Inventory,
    monitoring: DependencyMonitoring,
    edges: dict[Node, list[tuple[Node, Relation]]],
) -> None:
    for entry in monitoring.dependency_map:
        source = _find(inventory, entry.resource)
        if source is None:
            continue
        for ref in entry.depends_on:
            if ref.relation in monitoring.dependency_types:
                target = (ResourceType(ref.type), ref.id)
                edges.setdefault(source, []).append((target, ref.relation))
