"""Fleet-wide evaluation, done by the elected agent only (agent.store.election decides who).

- Lost nodes: the models of every node whose liveness key (`nodes/{node}/agent`) is gone are
  marked `Unknown`, with a `node_lost` event (`node_absent`, info, for a node that never had
  one: its models never had a state and no agent here saw its liveness key), so stale metrics
  never look alive. The check is
  stateless (it compares the manifests' nodes with the liveness keys and the models' stored
  states), so a new elected agent picks up where the old one was.
- Multi-node packages: a package whose models live on several nodes gets its status document
  from the models' documents in etcd, every `package_every_s`.

etcd is read through `FleetReader`, the two reads this needs; the records go to `submit` like any
stage's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Protocol

from agent.evaluate.documents import ModelStatusDoc, state_of_record, status_of_record
from agent.evaluate.packages import PackageFacts, model_edges, package_document
from agent.evaluate.status import view_from_document
from agent.manifests import Model, Package, build_inventory, nodes_of
from agent.model import ResourceType

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.config.seed import DependencyEntry
    from agent.manifests import Located
    from agent.model import ModelView, Record
    from agent.store.keys import KeyMaker

_log = logging.getLogger(__name__)

UNKNOWN = "Unknown"


class FleetReader(Protocol):
    async def get(self, key: bytes) -> bytes | None: ...
    async def get_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]: ...


class Fleet:
    """The elected agent's fleet-wide evaluation; `step` is one round of it."""

    def __init__(
        self,
        store: FleetReader,
        keys: KeyMaker,
        *,
        prefix: str,
        manifests: Callable[[], Sequence[Located]],
        submit: Callable[[list[Record]], None],
        package_every_s: float = 30.0,
        dependency_map: Callable[[], Sequence[DependencyEntry]] = tuple,
    ) -> None:
        """`dependency_map()`: the running config's (the model dependencies of packages)."""
        self._dependency_map = dependency_map
        self._store = store
        self._keys = keys
        self._node = keys.node
        self._prefix = prefix.rstrip("/") + "/"
        self._manifests = manifests
        self._submit = submit
        self._marked: set[str] = set()
        self._package_every_s = package_every_s
        self._packages_at = 0.0
        self._ever_alive: set[str] = set()
        """Nodes this agent has seen with a liveness key (`observe`): lost, not absent, later."""

    def _key(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    async def step(self) -> None:
        await self._mark_lost_nodes()
        await self._roll_up_packages()

    async def observe(self) -> None:
        """Note which nodes have an agent now (every agent, every liveness round), so that an
        agent elected later knows a node it saw alive as lost, not as one that never had one."""
        self._ever_alive |= set(await self._alive_nodes())

    async def _alive_nodes(self) -> dict[str, dict[str, str] | None]:
        """Node with a liveness key -> the labels it publishes (None: it publishes none)."""
        entries = await self._store.get_prefix(self._key("nodes/"))
        alive: dict[str, dict[str, str] | None] = {}
        for key, value in entries:
            parts = key.decode()[len(self._prefix) :].split("/")
            if len(parts) == 3 and parts[2] == "agent":
                alive[parts[1]] = _labels_of(value)
        return alive

    async def _mark_lost_nodes(self) -> None:
        located = self._manifests()
        nodes = {node for item in located for node in nodes_of(item.manifest)}
        alive = set(await self._alive_nodes())
        self._ever_alive |= alive
        self._marked &= nodes - alive
        for node in sorted(nodes - alive - self._marked):
            models = build_inventory(node, located).models
            records: list[Record] = []
            seen = node in self._ever_alive
            for name in models:
                previous = state_of_record(await self._store.get(self._key(f"model/{name}/state")))
                if previous == UNKNOWN:
                    continue
                seen = seen or previous is not None
                records += self._lost_model(node, name, previous, lost=seen or previous is not None)
            if records:
                # A node whose models never had a state has had no agent (yet): not "lost".
                kind = "node_lost" if seen else "node_absent"
                if seen:
                    _log.warning(
                        "node %s lost its agent: marking %d model(s) Unknown",
                        node,
                        len(records) // 2,
                    )
                else:
                    _log.info(
                        "node %s has no agent running (none seen yet): its %d model(s) are Unknown",
                        node,
                        len(records) // 2,
                    )
                message = (
                    f"the agent of node {node} stopped renewing its liveness key"
                    if seen
                    else f"no agent of node {node} has reported yet"
                )
                records.append(
                    self._keys.event(
                        ResourceType.NODE,
                        node,
                        event_type=kind,
                        severity="warning" if seen else "info",
                        message=message,
                        details={"models": sorted(models), "detected_by": self._node},
                    )
                )
                self._submit(records)
            self._marked.add(node)

    async def _roll_up_packages(self) -> None:
        """Status documents of packages whose models live on several nodes, from etcd."""
        now = time.monotonic()
        if now < self._packages_at:
            return
        self._packages_at = now + self._package_every_s
        located = self._manifests()
        packages = [i.manifest for i in located if isinstance(i.manifest, Package)]
        placed = {
            i.manifest.name: i.manifest.spec.node
            for i in located
            if isinstance(i.manifest, Model) and i.manifest.spec.node
        }
        dependency_map = self._dependency_map()
        labels = {
            node: found for node, found in (await self._alive_nodes()).items() if found is not None
        }
        records: list[Record] = []
        for package in packages:
            node_of = {
                m.name: m.node or placed.get(m.name) or "unknown" for m in package.spec.models
            }
            if len(set(node_of.values())) < 2:
                continue
            views: dict[str, ModelView | None] = {}
            for name, node in node_of.items():
                # Written by any node's agent, of any version: read tolerantly, never trusted.
                status = status_of_record(await self._store.get(self._key(f"model/{name}")))
                views[name] = (
                    None
                    if status is None
                    else view_from_document(name, node, ModelStatusDoc.from_json(status))
                )
            facts = PackageFacts(
                dependencies=model_edges(node_of, dependency_map),
                node_of=node_of,
                node_labels=labels,
                same_type=sum(
                    1 for p in packages if p.spec.packageType == package.spec.packageType
                ),
                sizes_known=False,
                judge_types=False,
            )
            document = package_document(package, views, facts, time.time_ns())
            records.append(
                self._keys.status(ResourceType.PACKAGE, package.name, document.to_json())
            )
        if records:
            self._submit(records)

    def _lost_model(
        self, node: str, model: str, previous: str | None, *, lost: bool
    ) -> list[Record]:
        now = time.time_ns()
        kind = "node_lost" if lost else "node_absent"
        why = f"the agent of node {node} is gone" if lost else f"node {node} has no agent yet"
        return [
            self._keys.state(
                ResourceType.MODEL,
                model,
                state=UNKNOWN,
                since_ns=now,
                previous=previous,
                reason=f"{kind}: {why}",
            ),
            self._keys.event(
                ResourceType.MODEL,
                model,
                event_type=kind,
                severity="warning" if lost else "info",
                message=(
                    f"node {node} lost its agent; the state of {model} is unknown"
                    if lost
                    else f"node {node} has no agent running; the state of {model} is unknown"
                ),
                details={"node": node, "previous": previous, "detected_by": self._node},
                ts_ns=now,
            ),
        ]


def _labels_of(raw: bytes) -> dict[str, str] | None:
    """The `labels` of a liveness value; None when absent or damaged (an older agent wrote it)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    labels = document.get("labels") if isinstance(document, dict) else None
    if not isinstance(labels, dict):
        return None
    return {str(k): str(v) for k, v in labels.items() if isinstance(v, str)}
