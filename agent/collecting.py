"""The collectors at work: one Runner per collector, started and stopped together.

```
 REGISTRY (resource_monitoring kinds) ──► collectors ──► Runner (interval) ──► samples ──► sink
      + the agent's own metrics, the reported metrics       │ HasViews: model views ──► on_views
                                                            └ Watches: events between collections
```

`Collection` starts every enabled collector under the caller's TaskGroup, stops them (releasing
what a collector `Closes`), and answers what the lifecycle asks: the first cycles, the image and
volume sizes, the container ids of the models, and counts for the status line. What a collector
can do beyond `collect` comes from its shape (agent.collectors.capabilities).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.collectors import REGISTRY, Collector, Context
from agent.collectors.capabilities import (
    Closes,
    HasSizes,
    HasViews,
    MeasuresGpu,
    Restarts,
    Watches,
)
from agent.collectors.models import samples_of
from agent.health import Progress
from agent.model import ModelView, Sample
from agent.runner import Runner
from agent.world import WorldHolder

_log = logging.getLogger(__name__)

MODEL_KINDS = frozenset({"container", "process"})
"""Collectors of models: `resource_monitoring.model.enabled` switches them all."""

READY_TIMEOUT_S = 5.0
"""How long start-up waits for every collector's first cycle before declaring READY anyway."""


@dataclass(slots=True)
class _Running:
    runner: Runner
    tasks: list[asyncio.Task[None]]
    collector: Collector


class Collection:
    def __init__(
        self,
        world: WorldHolder,
        progress: Progress,
        *,
        sink: Callable[[Sequence[Sample]], None],
        on_views: Callable[[Iterable[ModelView]], None],
        views: Callable[[], Mapping[str, ModelView]],
        extra: Callable[[], Sequence[tuple[str, Collector, float]]],
    ) -> None:
        """`sink` takes samples, `on_views` the model views after each collection or event, and
        `views` gives the latest ones; `extra` names collectors beside the registry's: (name,
        collector, interval)."""
        self._world = world
        self._progress = progress
        self._sink = sink
        self._on_views = on_views
        self._extra = extra
        self._running: dict[str, _Running] = {}
        self.started = False
        self.views = views

    def container_ids(self) -> dict[str, str]:
        return {v.container_id: v.name for v in self.views().values() if v.container_id}

    def sizes(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Image and volume sizes, as a collector that knows them last read them."""
        for running in self._running.values():
            if isinstance(running.collector, HasSizes):
                return running.collector.sizes
        return {}, {}

    def restarter(self) -> Restarts | None:
        """The collector that can restart containers (the container collector), if it runs."""
        for running in self._running.values():
            if isinstance(running.collector, Restarts):
                return running.collector
        return None

    def gpu_of(self, model: str) -> tuple[float | None, float] | None:
        """(utilization %, memory MB) of `model`'s GPU processes, where a collector measures it."""
        for running in self._running.values():
            if isinstance(running.collector, MeasuresGpu):
                return running.collector.per_model.get(model)
        return None

    def counts(self) -> tuple[int, int]:
        """(collections, errors) of every runner since it started."""
        stats = [r.runner.stats for r in self._running.values()]
        return sum(s.collections for s in stats), sum(s.errors for s in stats)

    def runner_stats(self) -> list[tuple[str, Runner]]:
        return [(name, r.runner) for name, r in self._running.items()]

    def start(self, tg: asyncio.TaskGroup) -> None:
        monitoring = self._world.config().resource_monitoring
        config = self._world.config()
        context = Context(config, self._world.inventory, self.container_ids)
        for kind, factory in REGISTRY.items():
            section = getattr(monitoring, kind)
            if not section.enabled or (kind in MODEL_KINDS and not monitoring.model.enabled):
                continue
            self._start(tg, kind, factory(context), section.collection_interval)
        for name, collector, interval_s in self._extra():
            self._start(tg, name, collector, interval_s)
        self.started = True

    def _start(
        self, tg: asyncio.TaskGroup, name: str, collector: Collector, interval_s: float
    ) -> None:
        sink = self._sink
        if isinstance(collector, HasViews):
            model_collector = collector

            def sink(samples: Sequence[Sample]) -> None:
                self._sink(samples)
                self._on_views(model_collector.views.values())

        runner = Runner(name, collector, interval_s, sink, self._progress)
        tasks = [tg.create_task(runner.run(), name=f"collector:{name}")]
        if isinstance(collector, Watches):
            watch = collector.watch(self._on_event)
            tasks.append(tg.create_task(watch, name=f"events:{name}"))
        self._running[name] = _Running(runner, tasks, collector)

    def _on_event(self, view: ModelView) -> None:
        """A model view from an event between collections: its samples and its status."""
        self._sink(samples_of([view]))
        self._on_views([view])

    async def stop(self) -> None:
        tasks = [task for running in self._running.values() for task in running.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for running in self._running.values():
            if isinstance(running.collector, Closes):
                closed = running.collector.close()
                if inspect.isawaitable(closed):
                    await closed
        self._running.clear()

    async def stop_for_good(self) -> None:
        """The stop stage: no restart by a reload after this."""
        async with self._world.lock:
            self.started = False
            await self.stop()

    async def restart(self, tg: asyncio.TaskGroup) -> None:
        """After a change of world (the holder's lock is held): the collectors of the new one."""
        if self.started:  # before that, the runners start with this world anyway
            await self.stop()
            self.start(tg)

    async def first_cycles(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._progress.ticks(name) > 0 for name in self._running):
                return
            await asyncio.sleep(0.005)
        late = [name for name in self._running if self._progress.ticks(name) == 0]
        _log.warning("collectors without a first cycle at start: %s", ", ".join(late))
