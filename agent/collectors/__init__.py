"""Collectors: each one only collects. The runner in `agent.runner` owns intervals and errors.

One explicit registry maps the `resource_monitoring` kind to its collector; nothing is discovered
by scanning folders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from agent.collectors.node import NodeCollector

if TYPE_CHECKING:
    from agent.config import Config
    from agent.model import Sample


class Collector(Protocol):
    """Produces the samples of one source; raises `CollectorFailed` (or anything) on failure."""

    async def collect(self) -> Sequence[Sample]: ...


REGISTRY: dict[str, Callable[[Config], Collector]] = {
    "node": NodeCollector.from_config,
}
