"""Agent liveness in etcd, and the one elected agent that does the fleet-wide chores.

Every agent keeps `nodes/{node}/agent` on a short lease that it refreshes every third of its TTL.
The same lease carries its candidacy: the elected agent is the one whose create-if-absent of
`election/leader` succeeded; when it dies, its lease expires, the key goes, and the next agent to
try takes over within one TTL plus one refresh period.

The elected agent:
- compacts etcd every `compaction.interval` when enabled, to the revision it saw one interval
  earlier, so one interval of history always stays readable;
- marks the models of every node whose liveness key is gone `Unknown`, with a `node_lost` event,
  so stale metrics never look alive. The check is stateless (it compares the manifests' nodes with
  the liveness keys and the models' stored states), so a new leader picks up where the old one was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from agent import __version__
from agent.backoff import Backoff
from agent.errors import SinkUnavailable
from agent.evaluate.packages import PackageFacts, package_status
from agent.evaluate.status import view_from_status
from agent.manifests import Model, Package, Scenario, build_inventory
from agent.model import ResourceType
from agent.store.etcd import LeaseNotFound, StoreRejected
from agent.store.keys import agent_key, rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.config import Compaction
    from agent.health import Progress
    from agent.manifests import Located
    from agent.model import ModelView
    from agent.store.etcd import EtcdStore
    from agent.store.keys import KeyMaker, Record

_log = logging.getLogger(__name__)

LEADER_KEY = "election/leader"
UNKNOWN = "Unknown"


class Election:
    name = "election"

    def __init__(
        self,
        store: EtcdStore,
        keys: KeyMaker,
        *,
        prefix: str,
        ttl_s: int,
        compaction: Compaction,
        manifests: Callable[[], Sequence[Located]],
        submit: Callable[[list[Record]], None],
        progress: Progress,
        package_every_s: float = 30.0,
    ) -> None:
        self.leader = False
        self.lease: int | None = None
        self._store = store
        self._keys = keys
        self._node = keys.node
        self._prefix = prefix.rstrip("/") + "/"
        self._ttl = ttl_s
        self._compaction = compaction
        self._manifests = manifests
        self._submit = submit
        self._progress = progress
        self._started_ns = time.time_ns()
        self._last_ok = 0.0
        self._compact_at: float | None = None
        self._compact_revision: int | None = None
        self._marked: set[str] = set()
        self._backoff = Backoff(cap_s=ttl_s / 3)
        self._package_every_s = package_every_s
        self._packages_at = 0.0

    def _key(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    @property
    def period_s(self) -> float:
        return self._ttl / 3

    async def _liveness(self) -> None:
        if self.lease is not None:
            try:
                await self._store.refresh(self.lease)
            except LeaseNotFound:
                _log.warning("liveness lease expired; announcing this agent again")
                self.lease = None
                self.leader = False
        if self.lease is None:
            self.lease = await self._store.grant(self._ttl)
            value = {
                "schema": 1,
                "node": self._node,
                "version": __version__,
                "started": rfc3339(self._started_ns),
            }
            await self._store.put(
                self._key(agent_key(self._node)),
                json.dumps(value, separators=(",", ":")).encode(),
                self.lease,
            )
        self._last_ok = time.monotonic()

    async def _campaign(self) -> None:
        assert self.lease is not None  # noqa: S101 - _liveness ran first
        if await self._store.create_if_absent(
            self._key(LEADER_KEY), self._node.encode(), self.lease
        ):
            _log.info("this agent is now the elected agent")
            self.leader = True
            self._compact_at = None
            return
        holder = await self._store.get(self._key(LEADER_KEY))
        self.leader = holder == self._node.encode()

    async def step(self) -> None:
        """One round: stay alive, campaign, and do the chores when elected."""
        await self._liveness()
        was_leader = self.leader
        await self._campaign()
        if was_leader and not self.leader:
            _log.warning("this agent is no longer the elected agent")
        if self.leader:
            await self._compact()
            await self._mark_lost_nodes()
            await self._roll_up_packages()

    async def _compact(self) -> None:
        if not self._compaction.enabled:
            return
        now = time.monotonic()
        if self._compact_at is not None and now < self._compact_at:
            return
        revision = await self._store.revision()
        if self._compact_revision is not None and self._compact_at is not None:
            try:
                await self._store.compact(self._compact_revision)
            except StoreRejected as exc:
                _log.info("compaction to %d skipped: %s", self._compact_revision, exc)
            else:
                _log.info("compacted etcd to revision %d", self._compact_revision)
        self._compact_revision = revision
        self._compact_at = now + self._compaction.interval

    async def _alive_nodes(self) -> set[str]:
        entries = await self._store.get_prefix(self._key("nodes/"))
        alive = set()
        for key, _ in entries:
            parts = key.decode()[len(self._prefix) :].split("/")
            if len(parts) == 3 and parts[2] == "agent":
                alive.add(parts[1])
        return alive

    async def _mark_lost_nodes(self) -> None:
        located = self._manifests()
        nodes = {node for item in located for node in _nodes_of(item.manifest)}
        alive = await self._alive_nodes()
        self._marked &= nodes - alive
        for node in sorted(nodes - alive - self._marked):
            models = build_inventory(node, located).models
            records: list[Record] = []
            for name in models:
                state = await self._store.get(self._key(f"model/{name}/state"))
                if state is not None and json.loads(state).get("state") == UNKNOWN:
                    continue
                previous = json.loads(state).get("state") if state else None
                records += self._lost_model(node, name, previous)
            if records:
                _log.warning(
                    "node %s lost its agent: marking %d model(s) Unknown", node, len(records) // 2
                )
                records.append(
                    self._keys.event(
                        ResourceType.NODE,
                        node,
                        event_type="node_lost",
                        severity="warning",
                        message=f"the agent of node {node} stopped renewing its liveness key",
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
        scenarios = [i.manifest for i in located if isinstance(i.manifest, Scenario)]
        placed = {
            i.manifest.name: i.manifest.spec.node
            for i in located
            if isinstance(i.manifest, Model) and i.manifest.spec.node
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
                raw = await self._store.get(self._key(f"model/{name}"))
                document = json.loads(raw) if raw else None
                status = document.get("status") if isinstance(document, dict) else None
                views[name] = (
                    view_from_status(name, node, status) if isinstance(status, dict) else None
                )
            facts = PackageFacts(
                scenarios=tuple(
                    s.name for s in scenarios if package.name in s.spec.target.packages
                ),
                node_of=node_of,
            )
            status_doc = package_status(package, views, facts, time.time_ns())
            records.append(self._keys.status(ResourceType.PACKAGE, package.name, status_doc))
        if records:
            self._submit(records)

    def _lost_model(self, node: str, model: str, previous: str | None) -> list[Record]:
        now = time.time_ns()
        return [
            self._keys.state(
                ResourceType.MODEL,
                model,
                state=UNKNOWN,
                since_ns=now,
                previous=previous,
                reason=f"node_lost: the agent of node {node} is gone",
            ),
            self._keys.event(
                ResourceType.MODEL,
                model,
                event_type="node_lost",
                severity="warning",
                message=f"node {node} lost its agent; the state of {model} is unknown",
                details={"node": node, "previous": previous, "detected_by": self._node},
                ts_ns=now,
            ),
        ]

    async def run(self) -> None:
        self._progress.register(self.name, self._ttl * 2 + 30.0)
        try:
            while True:
                self._progress.tick(self.name)
                try:
                    await self.step()
                except SinkUnavailable as exc:
                    if self.leader and time.monotonic() - self._last_ok > self._ttl:
                        _log.warning("etcd unreachable for a whole lease TTL; not elected any more")
                        self.leader = False
                    _log.debug("liveness round failed: %s", exc)
                    await asyncio.sleep(self._backoff.next())
                    continue
                self._backoff.reset()
                await asyncio.sleep(self.period_s)
        finally:
            self._progress.unregister(self.name)

    async def resign(self) -> None:
        """Give up liveness and candidacy at once, so another agent takes over without waiting."""
        if self.lease is None:
            return
        try:
            await self._store.revoke(self.lease)
        except SinkUnavailable as exc:
            _log.info("could not revoke the liveness lease (%s); it expires by itself", exc)
        self.lease = None
        self.leader = False


def _nodes_of(manifest: object) -> set[str]:
    if isinstance(manifest, Model):
        return {manifest.spec.node} if manifest.spec.node else set()
    if isinstance(manifest, Package):
        return {m.node for m in manifest.spec.models if m.node}
    return set()
