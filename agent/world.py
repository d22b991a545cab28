"""What the configuration file and the manifests say, and the one holder of the current set.

`WorldHolder` owns the running `World`: a reload, a manifest set from etcd and the start-up's
first runners change it one at a time (under `lock`), and each subscriber is told of the change
in the order it subscribed. Stages read the current config and inventory through the holder's
methods, never through a copy taken at build time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.graph import DependencyCycle, DependencyGraph, Node
from agent.manifests import (
    Inventory,
    Located,
    build_inventory,
    load_manifests,
    missing_folders,
    nodes_of,
)
from agent.yamlsrc import load_single

_log = logging.getLogger(__name__)

RESTART_ONLY = ("node", "buffer", "data_storage")
"""Sections whose changes take effect only at the next start (identity, files, connections);
`node.labels` excepted."""


@dataclass(frozen=True, slots=True)
class World:
    """What the configuration file and the manifests say, validated together."""

    config_path: Path
    config: Config
    inventory: Inventory
    manifests: tuple[Located, ...]
    """Every manifest read, this node's or not: the elected agent needs the other nodes' too."""
    etcd_sources: tuple[tuple[str, str], ...] = ()
    """The manifests read from `manifests.etcd_prefix`: (key, YAML text)."""
    warnings: tuple[str, ...] = ()
    """What is valid but likely not meant: a manifest folder that does not exist yet, a node
    name no manifest uses (check-config prints them, the agent logs them)."""


def load_world(
    config_path: Path,
    running: Config | None = None,
    etcd_sources: tuple[tuple[str, str], ...] = (),
) -> World:
    """Config and manifests from disk (and from etcd); raises `ConfigError` naming each problem.

    With `running`, the sections in `RESTART_ONLY` keep their running values.
    """
    config = load_config(config_path)
    if running is not None:
        # node.labels are no identity: a reload takes them (republished with the liveness key).
        kept = {s: getattr(running, s) for s in RESTART_ONLY}
        kept["node"] = running.node.model_copy(update={"labels": config.node.labels})
        changed = [s for s in RESTART_ONLY if getattr(config, s) != kept[s]]
        if changed:
            _log.warning("changes to %s take effect at the next start", ", ".join(changed))
        config = config.model_copy(update=kept)
    located = tuple(load_manifests(config.manifests.paths, etcd_sources))
    inventory = build_inventory(config.node.name, located)
    try:
        DependencyGraph.build(inventory, config.dependency_monitoring)
    except DependencyCycle as exc:
        doc = load_single(config_path)
        raise ConfigError([doc.problem(_cycle_entry(config, exc.cycle), str(exc))]) from None
    return World(config_path, config, inventory, located, etcd_sources, _warnings(config, located))


def _warnings(config: Config, located: tuple[Located, ...]) -> tuple[str, ...]:
    found = [
        f"manifest folder {path} does not exist (yet): no manifests from it"
        for path in missing_folders(config.manifests.paths)
    ]
    nodes = sorted({node for item in located for node in nodes_of(item.manifest)})
    if nodes and config.node.name not in nodes:
        found.append(
            f"node.name {config.node.name!r} matches no manifest: they place resources on "
            f"{', '.join(nodes)}; this agent monitors nothing but its node"
        )
    return tuple(found)


def _cycle_entry(config: Config, cycle: list[Node]) -> tuple[str | int, ...]:
    """Where in the config the cycle closes: the first dependency_map edge that is one of its
    steps (the manifests' own edges cannot make a cycle alone)."""
    where: tuple[str | int, ...] = ("dependency_monitoring", "dependency_map")
    steps = {(a[1], b[1]) for a, b in itertools.pairwise(cycle)}
    for i, entry in enumerate(config.dependency_monitoring.dependency_map):
        for j, dep in enumerate(entry.depends_on):
            if (entry.resource, dep.id) in steps:
                return (*where, i, "depends_on", j)
    return where


Subscriber = Callable[[World, World], Awaitable[None]]
"""Told (old, new) after the holder took a new world."""


class WorldHolder:
    def __init__(self, world: World) -> None:
        self.world = world
        self.lock = asyncio.Lock()
        """Held while the world changes, and by anyone who must not see it change half-way."""
        self._subscribers: list[Subscriber] = []

    def config(self) -> Config:
        return self.world.config

    def inventory(self) -> Inventory:
        return self.world.inventory

    def both(self) -> tuple[Config, Inventory]:
        world = self.world
        return world.config, world.inventory

    def manifests(self) -> tuple[Located, ...]:
        return self.world.manifests

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def apply(self, world: World) -> None:
        """Take `world` and tell every subscriber, one change at a time."""
        async with self.lock:
            old, self.world = self.world, world
            for subscriber in self._subscribers:
                await subscriber(old, world)
