"""The agent's lifecycle: signals, start-up and readiness, the watchdog, reload, the staged stop.

```
 config + manifests ──► WorldHolder            SIGHUP ──► reload (invalid: keep running config)
 agent.pipeline.build ──► stages ──► Pipeline.start / Collection.start (one TaskGroup)
                                  │ ticks
                                  ▼
                         Progress ──► watchdog task ──► WATCHDOG=1 (only while everything ticks)
 SIGTERM/SIGINT ──► StopPlan: stop_intake → drain_pipeline → flush_outputs → close
 a failed stage ──► restarted, or (rule `stop`) the same staged stop, exit 1 (agent.stages)
 second SIGINT  ──► forced stop;  any stop ──► ends within its budget (agent.stopping)
```

The stages and their wiring: `agent.pipeline`; the collectors: `agent.collecting`; config and
manifests: `agent.world`. Signals only set events; the control task acts on them; `agent.cli`
maps outcomes to exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError
from agent.health import Progress, feed_watchdog
from agent.manifests import manifest_signature
from agent.pipeline import build
from agent.runtime.openfiles import raise_fd_limit
from agent.stopping import STOP_STAGES, StopPlan, leave, start_deadline, unless_stopped
from agent.systemd import Notifier, configure_logging
from agent.world import World, WorldHolder, load_world

__all__ = ["STOP_MARGIN_S", "STOP_STAGES", "Agent", "Outcome", "Paths", "World", "run_agent"]

_log = logging.getLogger(__name__)

STOP_MARGIN_S = 3.0  # for the interpreter to exit after the last stage (< TimeoutStopSec)


class Outcome(enum.Enum):
    STOPPED = "stopped"
    FORCED = "forced"
    FAILED = "failed"
    """A stage whose rule is `stop` failed (agent.pipeline.RULES): stopped cleanly, exit 1."""


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path
    runtime_dir: Path


class Agent:
    def __init__(
        self, world: World, paths: Paths, notifier: Notifier, *, test_hooks: bool = False
    ) -> None:
        self.holder = WorldHolder(world)
        self.progress = Progress()
        self._notifier = notifier
        self._test_hooks = test_hooks
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._forced = False
        self._stopping = False
        self._stops = StopPlan()
        self._tg: asyncio.TaskGroup | None = None
        self._started = time.monotonic()
        self.pipeline = build(
            self.holder,
            paths.state_dir,
            paths.runtime_dir,
            self.progress,
            on_etcd_manifests=self.apply_etcd_manifests,
            on_fatal=lambda stage: self.request_stop(f"stage {stage} failed"),
        )
        self.holder.subscribe(self._world_changed)

    @property
    def world(self) -> World:
        return self.holder.world

    # signals ---------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            return
        _log.info("stop requested (%s)", reason)
        self._stop.set()
        start_deadline()

    def _on_sigint(self, main: asyncio.Task[Outcome]) -> None:
        if self._stop.is_set():
            _log.warning("second SIGINT: forcing the stop")
            self._forced = True
            main.cancel()
        else:
            self.request_stop("SIGINT")

    def _install_signals(self, main: asyncio.Task[Outcome]) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_sigint, main)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if self._test_hooks:
            # Test-only: block the event loop so that tests can watch the watchdog pets stop.
            block_s = float(os.environ.get("PICCOLO_AGENT_TEST_BLOCK_S", "5"))
            loop.add_signal_handler(signal.SIGUSR2, loop.call_soon, time.sleep, block_s)
            # Test-only: a stop stage that hangs, to show stage timeouts and the forced stop.
            if slow_s := float(os.environ.get("PICCOLO_AGENT_TEST_SLOW_STOP_S", "0")):
                self._stops.on("flush_outputs", lambda: asyncio.sleep(slow_s))

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.remove_signal_handler(sig)

    # what runs -------------------------------------------------------------------------------

    def status_line(self) -> str:
        inv = self.world.inventory
        cycles, errors = self.pipeline.collection.counts()
        return f"running: node {inv.node}, {inv.summary()}; {cycles} collections, {errors} errors"

    # watchdog and control --------------------------------------------------------------------

    async def _control(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read config and manifests; an invalid set keeps the running one. True if applied."""
        self._notifier.reloading()
        _log.info("reloading %s", self.world.config_path)
        try:
            world = await asyncio.to_thread(
                load_world, self.world.config_path, self.world.config, self.world.etcd_sources
            )
        except ConfigError as exc:
            _log.error("reload rejected, keeping the running configuration:\n%s", exc)
            self._notifier.ready(f"{self.status_line()} (last reload rejected)")
            return False
        await self.holder.apply(world)
        for text in world.warnings:
            _log.warning("%s", text)
        _log.info("reloaded: %s", self.status_line())
        self._notifier.ready(self.status_line())
        return True

    async def _watch_manifests(self) -> None:
        """Apply a changed manifest set like a reload, the way a kubelet watches its static-pod
        folder: every `manifests.watch` seconds a few stat calls compare the files' times and
        sizes with the last ones seen."""
        name = "manifest_watch"
        self.progress.register(name, 3600.0)
        try:
            seen = manifest_signature(self.world.config.manifests.paths)
            while True:
                interval = self.world.config.manifests.watch
                if interval is None:
                    await asyncio.sleep(60.0)
                    continue
                await asyncio.sleep(interval)
                self.progress.tick(name)
                now = manifest_signature(self.world.config.manifests.paths)
                if now != seen:
                    seen = now
                    _log.info("the manifest files changed: applying them")
                    self._reload.set()
        finally:
            self.progress.unregister(name)

    async def apply_etcd_manifests(self, sources: tuple[tuple[str, str], ...]) -> bool:
        """Take a new set of manifests from etcd; an invalid set keeps the running one."""
        try:
            world = await asyncio.to_thread(
                load_world, self.world.config_path, self.world.config, sources
            )
        except ConfigError as exc:
            _log.error("manifests in etcd rejected, keeping the running ones:\n%s", exc)
            return False
        await self.holder.apply(world)
        _log.info("manifests from etcd applied: %s", self.status_line())
        return True

    async def _world_changed(self, old: World, world: World) -> None:
        """A reload or a manifest set from etcd was applied (the holder's lock is held)."""
        for name in sorted(old.inventory.models.keys() - world.inventory.models.keys()):
            _log.warning("model %s is no longer in this node's inventory: not monitored now", name)
        self.pipeline.timing.refresh()
        self.pipeline.evaluation.refresh()
        if self.pipeline.anomalies is not None:
            self.pipeline.anomalies.refresh()
        if world.config.logging != old.config.logging:
            log = world.config.logging
            configure_logging(log.level, log.target, log.syslog_identifier)
        self.pipeline.publish_inventory(self.world.inventory)
        if self._tg is not None:
            await self.pipeline.collection.restart(self._tg)

    # run -------------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        main = asyncio.current_task()
        assert main is not None  # noqa: S101 - run() is always awaited inside a task
        # Blocking reads are short: two threads serve them, instead of one per core plus four,
        # each of which would cost a stack and a malloc arena.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-io")
        )
        self._install_signals(main)
        self._notifier.status("starting")
        # Collectors keep the kernel files they sample open (agent.runtime.openfiles).
        raise_fd_limit()
        try:
            if await unless_stopped(self._stop, self._open()):
                await self._run_stages()
            else:
                await self.pipeline.buffer.close()
        except asyncio.CancelledError:
            if not self._forced:
                raise
            return Outcome.FORCED
        finally:
            self._remove_signals()
        _log.info("stopped")
        return Outcome.FAILED if self.pipeline.failures.fatal else Outcome.STOPPED

    async def _open(self) -> None:
        pipeline = self.pipeline
        await pipeline.buffer.open()
        if self.world.config.ingest.enabled:
            await pipeline.timing.ingest.start()
        await pipeline.cached_manifests(self.apply_etcd_manifests)
        pipeline.report_quarantines()
        if pipeline.anomalies is not None:
            await asyncio.to_thread(pipeline.anomalies.load)
        pipeline.publish_inventory(self.world.inventory)

    async def _run_stages(self) -> None:
        pipeline = self.pipeline
        async with asyncio.TaskGroup() as tg:
            pipeline.start(tg, self._stops, self.holder)
            async with self.holder.lock:
                self._tg = tg
                pipeline.collection.start(tg)
            if await unless_stopped(self._stop, pipeline.collection.first_cycles()):
                self.progress.ready = True
                self._notifier.ready(self.status_line())
                _log.info(
                    "ready in %.3fs: %s", time.monotonic() - self._started, self.status_line()
                )
            watchdog = pipeline.task(tg, "watchdog", self._feed_watchdog)
            control = pipeline.task(tg, "control", self._control)
            watch = pipeline.task(tg, "manifest_watch", self._watch_manifests)
            await self._stop.wait()
            self._stopping = True
            self._notifier.stopping("stopping")
            control.cancel()
            watch.cancel()
            await self._stops.run(self._notifier.status)
            watchdog.cancel()
            await leave(self._stops.abandoned)

    def _feed_watchdog(self) -> Awaitable[None]:
        return feed_watchdog(
            self.progress,
            self._notifier.watchdog_s,
            self._notifier.watchdog,
            lambda status: None if self._stopping else self._notifier.status(status),
            self.status_line,
        )


def run_agent(world: World, paths: Paths, *, test_hooks: bool = False) -> Outcome:
    """Run the agent until it is stopped; one event loop for the whole life of the process."""
    notifier = Notifier()
    try:
        return asyncio.run(Agent(world, paths, notifier, test_hooks=test_hooks).run())
    finally:
        with contextlib.suppress(OSError):
            notifier.close()
