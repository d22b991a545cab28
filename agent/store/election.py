"""Agent liveness in etcd, and the one elected agent that does the fleet-wide chores.

Every agent keeps `nodes/{node}/agent` on a short lease that it refreshes every third of its TTL.
The same lease carries its candidacy: the elected agent is the one whose create-if-absent of
`election/leader` succeeded; when it dies, its lease expires, the key goes, and the next agent to
try takes over within one TTL plus one refresh period.

The elected agent compacts etcd every `compaction.interval` when enabled, to the revision it saw
one interval earlier, so one interval of history always stays readable, and runs the `chores` it
was given each round (fleet-wide evaluation: agent.evaluate.fleet). The store only stores: what
the chores judge lives in the evaluation layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from agent import __version__
from agent.backoff import Backoff
from agent.clock import rfc3339
from agent.errors import SinkUnavailable
from agent.store.etcd import LeaseNotFound, StoreRejected
from agent.store.keys import agent_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from agent.config import Compaction
    from agent.health import Progress
    from agent.store.etcd import EtcdStore
    from agent.store.keys import KeyMaker

_log = logging.getLogger(__name__)

LEADER_KEY = "election/leader"


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
        progress: Progress,
        chores: Sequence[Callable[[], Awaitable[None]]] = (),
        labels: Callable[[], Mapping[str, str]] = dict,
        rounds: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """`labels()`: the node's labels (`node.labels`), published in its liveness key and
        written again when they change (a reload). `chores` run on the elected agent, `rounds`
        on every agent, after each liveness round."""
        self.leader = False
        self._rounds = tuple(rounds)
        self._labels = labels
        self._published_labels: dict[str, str] | None = None
        self.lease: int | None = None
        self._store = store
        self._keys = keys
        self._node = keys.node
        self._prefix = prefix.rstrip("/") + "/"
        self._ttl = ttl_s
        self._compaction = compaction
        self._chores = tuple(chores)
        self._progress = progress
        self._started_ns = time.time_ns()
        self._last_ok = 0.0
        self._compact_at: float | None = None
        self._compact_revision: int | None = None
        self._backoff = Backoff(cap_s=ttl_s / 3)

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
        labels = dict(self._labels())
        if self.lease is None:
            self.lease = await self._store.grant(self._ttl)
            self._published_labels = None
        if labels != self._published_labels:
            value = {
                "schema": 1,
                "node": self._node,
                "version": __version__,
                "started": rfc3339(self._started_ns),
                "labels": labels,
            }
            await self._store.put(
                self._key(agent_key(self._node)),
                json.dumps(value, separators=(",", ":")).encode(),
                self.lease,
            )
            self._published_labels = labels
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
        for round_ in self._rounds:
            await round_()
        if self.leader:
            await self._compact()
            for chore in self._chores:
                await chore()

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
