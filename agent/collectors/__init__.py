"""Collectors: each one only collects. The runner in `agent.runner` owns intervals and errors.

One explicit registry maps the `resource_monitoring` kind to its collector factory; nothing is
discovered by scanning folders. Model collectors (container, process) also keep `views`, what they
know of each model, which the evaluation turns into states and status documents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import psutil

from agent.collectors.container import ContainerCollector
from agent.collectors.gpu import GpuCollector
from agent.collectors.node import NodeCollector
from agent.collectors.process import ProcessCollector
from agent.runtime.podman import PodmanClient

if TYPE_CHECKING:
    from agent.config import Config
    from agent.manifests import Inventory
    from agent.model import Sample


class Collector(Protocol):
    """Produces the samples of one source; raises `CollectorFailed` (or anything) on failure."""

    async def collect(self) -> Sequence[Sample]: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What a collector factory may use: the config, and the running inventory (it may change)."""

    config: Config
    inventory: Callable[[], Inventory]
    containers: Callable[[], Mapping[str, str]]
    """Container id -> model, from the latest model views."""


def _bound(config: Config) -> frozenset[str]:
    return frozenset(b.model for b in config.resource_monitoring.process.bindings)


def _container(context: Context) -> ContainerCollector:
    section = context.config.resource_monitoring.container
    bound = _bound(context.config)
    return ContainerCollector(
        PodmanClient(section.socket, section.request_timeout),
        context.config.node.name,
        lambda: {n: m for n, m in context.inventory().models.items() if n not in bound},
        psutil.virtual_memory().total,
    )


def _process(context: Context) -> ProcessCollector:
    config = context.config
    return ProcessCollector(
        config.node.name, config.resource_monitoring.process.bindings, psutil.virtual_memory().total
    )


def _gpu(context: Context) -> GpuCollector:
    return GpuCollector(context.config.node.name, context.containers)


def _node(context: Context) -> NodeCollector:
    return NodeCollector.from_config(context.config)


REGISTRY: dict[str, Callable[[Context], Collector]] = {
    "node": _node,
    "container": _container,
    "process": _process,
    "gpu": _gpu,
}
