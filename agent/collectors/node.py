"""The node itself: CPU, memory, load.

Rates need two samples, so CPU usage is reported from the second collection on.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Self

import psutil

from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.config import Config


class NodeCollector:
    def __init__(self, node: str, metrics: frozenset[str]) -> None:
        self._node = node
        self._metrics = metrics
        self._primed = False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        wanted = config.resource_monitoring.node.metrics
        return cls(config.node.name, frozenset(wanted or ("cpu_usage", "memory_usage", "load")))

    def _read(self) -> list[tuple[str, float, str]]:
        values: list[tuple[str, float, str]] = []
        if "cpu_usage" in self._metrics:
            cpu = psutil.cpu_percent(interval=None)
            if self._primed:
                values.append(("cpu_usage", cpu, "%"))
        if "memory_usage" in self._metrics:
            memory = psutil.virtual_memory()
            values.append(("memory_usage", memory.used / 2**20, "MB"))
            values.append(("memory_usage_percent", memory.percent, "%"))
        if "load" in self._metrics:
            load1, load5, load15 = os.getloadavg()
            values += [("load1", load1, ""), ("load5", load5, ""), ("load15", load15, "")]
        self._primed = True
        return values

    async def collect(self) -> Sequence[Sample]:
        values = await asyncio.to_thread(self._read)
        now = time.time_ns()
        return [
            Sample(ResourceType.NODE, self._node, name, value, unit, now)
            for name, value, unit in values
        ]
