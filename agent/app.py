"""The agent's lifecycle: build the pipeline from config, run it in one TaskGroup, stop in stages.

```
 config + manifests ──► inventory            SIGHUP ──► reload (invalid: keep running config)
 collectors ──► Runner (interval, overruns, errors) ──► latest values
                                  │ ticks
                                  ▼
                         Progress ──► watchdog task ──► WATCHDOG=1 (only while everything ticks)
 SIGTERM/SIGINT ──► staged stop: stop_intake → drain_pipeline → flush_outputs → close
 second SIGINT  ──► forced stop
```

Signals only set events; the control task acts on them. Nothing here maps outcomes to exit codes:
`agent.cli` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.alerts.mqtt import MqttPublisher
from agent.collectors import REGISTRY, Collector, Context
from agent.collectors.agent import AgentCollector
from agent.collectors.container import ContainerCollector
from agent.collectors.models import samples_of
from agent.collectors.process import ProcessCollector
from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.evaluate.dependencies import static_dependency_status
from agent.evaluate.fleet import Fleet
from agent.evaluate.models import ModelStatus
from agent.evaluate.reports import ReportsCollector
from agent.evaluate.rollup import Rollups
from agent.evaluate.states import StateTracker
from agent.health import Progress
from agent.manifests import Inventory, Located, build_inventory, load_manifests
from agent.model import ModelView, ResourceType, Sample
from agent.recorder import Recorder
from agent.runner import Runner
from agent.runtime.openfiles import raise_fd_limit
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.election import Election
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from agent.store.manifest_sync import ManifestSync, read_cache
from agent.store.pusher import Pusher
from agent.systemd import Notifier, configure_logging, resource_fields
from agent.timing.service import TimingService
from agent.timing.tracer import Tracer

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StopStage:
    name: str
    timeout_s: float
    purpose: str


STOP_STAGES: tuple[StopStage, ...] = (
    StopStage("stop_intake", 2.0, "collectors, ingest and tracer stop producing"),
    StopStage("drain_pipeline", 3.0, "queued samples and reports are evaluated into the buffer"),
    StopStage("flush_outputs", 5.0, "a last bounded push to etcd and the MQTT outbox"),
    StopStage("close", 2.0, "connections and the buffer are closed"),
)
STOP_MARGIN_S = 3.0
"""Time for the interpreter to exit after the last stage; the sum must stay below TimeoutStopSec."""

TRACE_READ_S = 0.1
"""How often the tracer's buffer is read into activations."""

MANIFEST_CACHE = "etcd-manifests.json"
"""In the state directory: the manifests last read from etcd."""

LIVENESS_TTL_S = 10
"""TTL of the agent's liveness lease: a dead agent's models turn Unknown within about this."""

MODEL_KINDS = frozenset({"container", "process"})
"""Collectors of models: `resource_monitoring.model.enabled` switches them all."""

READY_TIMEOUT_S = 5.0
"""How long start-up waits for every collector's first cycle before declaring READY anyway."""


class Outcome(enum.Enum):
    STOPPED = "stopped"
    FORCED = "forced"


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


RESTART_ONLY = ("node", "buffer", "data_storage")
"""Sections whose changes take effect only at the next start (identity, files, connections)."""


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
        changed = [s for s in RESTART_ONLY if getattr(config, s) != getattr(running, s)]
        if changed:
            _log.warning("changes to %s take effect at the next start", ", ".join(changed))
            config = config.model_copy(update={s: getattr(running, s) for s in RESTART_ONLY})
    located = tuple(load_manifests(config.manifests.paths, etcd_sources))
    inventory = build_inventory(config.node.name, located)
    return World(config_path, config, inventory, located, etcd_sources)


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path
    runtime_dir: Path


StopHook = Callable[[], Awaitable[None]]


def _problem_fields(field: str) -> dict[str, dict[str, str]] | None:
    """Journal fields for a manifest warning whose field reads `Kind/name`."""
    kind, sep, name = field.partition("/")
    return resource_fields(kind.lower(), name) if sep else None


class Agent:
    def __init__(
        self, world: World, paths: Paths, notifier: Notifier, *, test_hooks: bool = False
    ) -> None:
        self.world = world
        self.paths = paths
        self.progress = Progress()
        self._notifier = notifier
        self._test_hooks = test_hooks
        self._runners: dict[str, tuple[Runner, list[asyncio.Task[None]], Collector]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._forced = False
        self._stopping = False
        self._hooks: dict[str, list[StopHook]] = {stage.name: [] for stage in STOP_STAGES}
        self._tg: asyncio.TaskGroup | None = None
        self._world_lock = asyncio.Lock()
        self._runners_started = False
        self._started = time.monotonic()
        self._build_store()

    def _build_store(self) -> None:
        config = self.world.config
        storage = config.data_storage
        self.keys = KeyMaker(config.node.name)
        self.buffer = AsyncBuffer(
            Buffer(
                self.paths.state_dir / config.buffer.file,
                config.buffer.max_bytes,
                config.buffer.sync,
            )
        )
        self.store = EtcdStore(storage.configuration)
        self.recorder = Recorder(
            self.buffer,
            self.keys,
            Rollups(storage.history_window),
            self.progress,
            deadband_percent=storage.publish_deadband,
            max_age_s=storage.publish_max_age,
        )
        retention = storage.retention
        self.pusher = Pusher(
            self.buffer,
            self.store,
            prefix=storage.data_organization.prefix,
            retention_s={
                "metrics": retention.metrics,
                "events": retention.events,
                "state_transitions": retention.state_transitions,
            },
            max_txn_ops=storage.configuration.max_txn_ops,
            max_request_bytes=storage.configuration.max_request_bytes,
            progress=self.progress,
        )
        self.fleet = Fleet(
            self.store,
            self.keys,
            prefix=storage.data_organization.prefix,
            manifests=lambda: self.world.manifests,
            submit=self.recorder.submit_records,
            package_every_s=config.resource_monitoring.package.collection_interval,
        )
        self.election = Election(
            self.store,
            self.keys,
            prefix=storage.data_organization.prefix,
            ttl_s=LIVENESS_TTL_S,
            compaction=storage.compaction,
            progress=self.progress,
            chores=(self.fleet.step,),
        )
        prefix = config.manifests.etcd_prefix
        self.manifest_sync = (
            ManifestSync(
                self.store,
                prefix,
                self.paths.state_dir / MANIFEST_CACHE,
                self.apply_etcd_manifests,
                self.progress,
                refresh_s=config.manifests.etcd_refresh,
            )
            if prefix
            else None
        )
        self.tracker = StateTracker(
            {
                ResourceType(t.type): frozenset(t.states)
                for t in config.state_transition_tracking.resources
            }
        )
        self.mqtt = (
            MqttPublisher(config.mqtt, config.node.name, __version__, self.buffer, self.progress)
            if config.mqtt.enabled
            else None
        )
        self.timing = TimingService(
            lambda: (self.world.config, self.world.inventory),
            keys=self.keys,
            tracker=self.tracker,
            submit=self.recorder.submit_records,
            mqtt=self.mqtt,
            socket_path=self.paths.runtime_dir / config.ingest.socket,
        )
        self.model_status = ModelStatus(
            self.keys,
            self.tracker,
            lambda: (self.world.config, self.world.inventory),
            self.recorder.submit_records,
            self._sizes,
            extras=self.timing.model_extras,
            max_age_s=storage.publish_max_age,
        )
        self.reports = ReportsCollector(
            self.timing.apps,
            self.timing.scenarios,
            lambda: self.world.inventory,
            self.keys,
            self.recorder.submit_records,
            safety=lambda model: self.timing.model_extras(model)[1],
        )
        self.agent_metrics = AgentCollector(
            config.node.name,
            lambda: self.buffer.stats,
            lambda: self.pusher.stats,
            lambda: self.recorder.stats,
            extra=self._timing_metrics,
        )

    def _timing_metrics(self) -> list[tuple[str, float | int | bool | str, str]]:
        ingest = self.timing.ingest.stats
        values: list[tuple[str, float | int | bool | str, str]] = [
            ("agent_ingest_received", ingest.received, "reports"),
            ("agent_ingest_delivered", ingest.delivered, "reports"),
            ("agent_ingest_dropped", sum(ingest.dropped.values()), "reports"),
            ("agent_alerts_raised", self.timing.alerts_raised, "alerts"),
            ("agent_timing_corrections", self.timing.corrections, "activations"),
            ("safety_global_status", self.timing.global_status(), ""),
        ]
        values += [(f"agent_ingest_dropped_{r}", n, "reports") for r, n in ingest.dropped.items()]
        if self.mqtt is not None:
            values += [
                ("agent_mqtt_connected", self.mqtt.stats.connected, ""),
                ("agent_mqtt_published", self.mqtt.stats.published, "messages"),
            ]
        return values

    # signals ---------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            return
        _log.info("stop requested (%s)", reason)
        self._stop.set()

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
                self.on_stop("flush_outputs", lambda: asyncio.sleep(slow_s))

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.remove_signal_handler(sig)

    # pipeline --------------------------------------------------------------------------------

    def on_stop(self, stage: str, hook: StopHook) -> None:
        """Run `hook` in the named stop stage, within that stage's timeout."""
        self._hooks[stage].append(hook)

    def _sink(self, samples: Sequence[Sample]) -> None:
        self.recorder.submit(samples)

    def _sizes(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Image and volume sizes, as the container collector last read them."""
        for _, _, collector in self._runners.values():
            if isinstance(collector, ContainerCollector):
                return collector.sizes
        return {}, {}

    def _container_ids(self) -> dict[str, str]:
        return {v.container_id: v.name for v in self.model_status.views.values() if v.container_id}

    def _start_runners(self) -> None:
        monitoring = self.world.config.resource_monitoring
        context = Context(self.world.config, lambda: self.world.inventory, self._container_ids)
        for kind, factory in REGISTRY.items():
            section = getattr(monitoring, kind)
            if not section.enabled or (kind in MODEL_KINDS and not monitoring.model.enabled):
                continue
            self._start_runner(kind, factory(context), section.collection_interval)
        # The agent's own health is sampled with the node; reported metrics with the scenarios.
        self._start_runner("agent", self.agent_metrics, monitoring.node.collection_interval)
        self._start_runner("reports", self.reports, monitoring.scenario.collection_interval)

    def _on_model_views(self, views: Iterable[ModelView]) -> None:
        views = list(views)
        self._sink(samples_of(views))
        self.model_status.update(views)

    def _start_runner(self, name: str, collector: Collector, interval_s: float) -> None:
        assert self._tg is not None  # noqa: S101 - only called inside run()
        sink = self._sink
        if isinstance(collector, ContainerCollector | ProcessCollector):
            model_collector = collector

            def sink(samples: Sequence[Sample]) -> None:
                self._sink(samples)
                self.model_status.update(model_collector.views.values())

        runner = Runner(name, collector, interval_s, sink, self.progress)
        tasks = [self._tg.create_task(runner.run(), name=f"collector:{name}")]
        if isinstance(collector, ContainerCollector):
            watch = collector.watch(lambda view: self._on_model_views([view]))
            tasks.append(self._tg.create_task(watch, name=f"events:{name}"))
        self._runners[name] = (runner, tasks, collector)

    async def _stop_runners(self) -> None:
        tasks = [task for _, tasks, _ in self._runners.values() for task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, _, collector in self._runners.values():
            if isinstance(collector, ContainerCollector):
                await collector.close()
            elif isinstance(collector, ProcessCollector):
                collector.close()
        self._runners.clear()

    async def _stop_runners_for_good(self) -> None:
        async with self._world_lock:
            self._runners_started = False
            await self._stop_runners()

    async def _first_cycles(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self.progress.ticks(name) > 0 for name in self._runners):
                return
            await asyncio.sleep(0.005)
        late = [name for name in self._runners if self.progress.ticks(name) == 0]
        _log.warning("collectors without a first cycle at start: %s", ", ".join(late))

    def _publish_inventory(self) -> None:
        """Log what this node hosts and record the dependency status the manifests decide."""
        now = time.time_ns()
        self._sink(
            [
                Sample(dep.resource_type, dep.resource_id, "dependency_status", dep.status, "", now)
                for dep in static_dependency_status(self.world.inventory)
            ]
        )
        inv = self.world.inventory
        for warning in inv.warnings:
            _log.warning("%s", warning, extra=_problem_fields(warning.field))
        for model in inv.models.values():
            _log.info(
                "monitoring model %s (ASIL %s, image %s, packages %s)",
                model.name,
                model.asil_level,
                model.image or "unknown",
                ", ".join(model.packages) or "none",
                extra=resource_fields("model", model.name),
            )

    def status_line(self) -> str:
        inv = self.world.inventory
        cycles = sum(runner.stats.collections for runner, _, _ in self._runners.values())
        errors = sum(runner.stats.errors for runner, _, _ in self._runners.values())
        return f"running: node {inv.node}, {inv.summary()}; {cycles} collections, {errors} errors"

    # watchdog and control --------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Feeds systemd's watchdog at half its timeout, but only while the pipeline progresses.

        A blocked event loop cannot run this task, so no pet is sent; a stalled stage (a runner
        that stopped ticking) withholds the pet on purpose, so systemd restarts the agent.
        """
        timeout = self._notifier.watchdog_s
        period = timeout / 2 if timeout else 5.0
        withheld = False
        last_status = ""
        while True:
            await asyncio.sleep(period)
            stalled = self.progress.stalled()
            if stalled:
                if not withheld:
                    _log.error("pipeline stalled (%s): withholding watchdog", ", ".join(stalled))
                withheld = True
            else:
                if withheld:
                    _log.info("pipeline progressing again: feeding watchdog")
                withheld = False
                if timeout:
                    self._notifier.watchdog()
            status = self.status_line()
            if status != last_status and not self._stopping:
                self._notifier.status(status)
                last_status = status

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
        await self._apply(world)
        _log.info("reloaded: %s", self.status_line())
        self._notifier.ready(self.status_line())
        return True

    async def apply_etcd_manifests(self, sources: tuple[tuple[str, str], ...]) -> bool:
        """Take a new set of manifests from etcd; an invalid set keeps the running one."""
        try:
            world = await asyncio.to_thread(
                load_world, self.world.config_path, self.world.config, sources
            )
        except ConfigError as exc:
            _log.error("manifests in etcd rejected, keeping the running ones:\n%s", exc)
            return False
        await self._apply(world)
        _log.info("manifests from etcd applied: %s", self.status_line())
        return True

    async def _apply(self, world: World) -> None:
        # One change of world at a time: a reload, a manifest set from etcd and the start-up's
        # first runners would otherwise stop and start each other's runners half-way.
        async with self._world_lock:
            old = self.world
            self.world = world
            self.timing.refresh()
            if world.config.logging != old.config.logging:
                log = world.config.logging
                configure_logging(log.level, log.target, log.syslog_identifier)
            self._publish_inventory()
            if self._runners_started:  # before that, the runners start with this world anyway
                await self._stop_runners()
                self._start_runners()

    # run -------------------------------------------------------------------------------------

    def _report_quarantines(self) -> None:
        for report in self.buffer.buffer.quarantine_reports:
            self.recorder.submit_records(
                [
                    self.keys.event(
                        ResourceType.NODE,
                        self.keys.node,
                        event_type="buffer_corrupt",
                        severity="warning",
                        message=report,
                    )
                ]
            )
        self.buffer.buffer.quarantine_reports.clear()

    async def _cached_etcd_manifests(self) -> None:
        """Start with the manifests last read from etcd, before etcd answers (if it ever does)."""
        if self.manifest_sync is None:
            return
        cached = await asyncio.to_thread(read_cache, self.manifest_sync.cache)
        if cached and await self.apply_etcd_manifests(cached):
            self.manifest_sync.current = cached

    def _start_pipeline(self, tg: asyncio.TaskGroup) -> None:
        if self.manifest_sync is not None:
            sync = tg.create_task(self.manifest_sync.run(), name="manifests")
            self.on_stop("stop_intake", lambda: _cancelled(sync))
        recorder = tg.create_task(self.recorder.run(), name="recorder")
        pusher = tg.create_task(self.pusher.run(), name="pusher")
        election = tg.create_task(self.election.run(), name="election")

        async def drain() -> None:
            await _cancelled(recorder)
            await self.recorder.drain()

        async def flush() -> None:
            await _cancelled(pusher)
            await self.pusher.flush()

        async def close() -> None:
            # A stage that ran out of time may have left its task running: nothing may touch the
            # buffer or the store once they close.
            for task in (recorder, pusher, election):
                await _cancelled(task)
            await self.election.resign()
            await self.store.close()
            await self.buffer.close()

        self.on_stop("stop_intake", self._stop_runners_for_good)
        self.on_stop("drain_pipeline", drain)
        self.on_stop("flush_outputs", flush)
        self.on_stop("close", close)
        self._start_timing(tg)

    def _start_timing(self, tg: asyncio.TaskGroup) -> None:
        config = self.world.config
        tasks: list[asyncio.Task[None]] = []
        if config.timing.enabled:
            tasks.append(tg.create_task(self.timing.run(), name="timing"))
            if config.timing.tracer and config.timing.traced_tasks:
                tracer = Tracer(config.timing.tracefs, f"piccolo-agent-{config.node.name}")
                usable, why = tracer.available()
                if usable:
                    trace = self.timing.trace(tracer, config.timing.traced_tasks, TRACE_READ_S)
                    tasks.append(tg.create_task(trace, name="tracer"))
                else:
                    _log.warning("tracer unavailable (%s): traced tasks are not supervised", why)
        if self.mqtt is not None:
            tasks.append(tg.create_task(self.mqtt.run(), name="mqtt"))

        async def stop_intake() -> None:
            self.timing.ingest.close()

        async def flush() -> None:
            if self.mqtt is not None:
                await self.timing.drain_alerts()
                await self.mqtt.stop(timeout_s=STOP_STAGES[2].timeout_s / 2)

        async def close() -> None:
            for task in tasks:
                await _cancelled(task)

        # Before the buffer closes (close hooks run in the order they were registered).
        self._hooks["close"].insert(0, close)
        self.on_stop("stop_intake", stop_intake)
        self.on_stop("flush_outputs", flush)

    async def _staged_stop(self) -> None:
        self._stopping = True
        for stage in STOP_STAGES:
            self._notifier.status(f"stopping: {stage.name}")
            started = time.monotonic()
            try:
                async with asyncio.timeout(stage.timeout_s):
                    for hook in self._hooks[stage.name]:
                        await hook()
            except TimeoutError:
                _log.error("stop stage %s exceeded %.1fs; going on", stage.name, stage.timeout_s)
            _log.debug("stop stage %s took %.3fs", stage.name, time.monotonic() - started)

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
        await self.buffer.open()
        if self.world.config.ingest.enabled:
            await self.timing.ingest.start()
        await self._cached_etcd_manifests()
        self._report_quarantines()
        self._publish_inventory()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._start_pipeline(tg)
                async with self._world_lock:
                    self._start_runners()
                    self._runners_started = True
                    await self._first_cycles()
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                control = tg.create_task(self._control(), name="control")
                self._notifier.ready(self.status_line())
                _log.info(
                    "ready in %.3fs: %s", time.monotonic() - self._started, self.status_line()
                )
                await self._stop.wait()
                self._notifier.stopping("stopping")
                control.cancel()
                await self._staged_stop()
                watchdog.cancel()
        except asyncio.CancelledError:
            if not self._forced:
                raise
            return Outcome.FORCED
        finally:
            self._remove_signals()
        _log.info("stopped")
        return Outcome.STOPPED


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def run_agent(world: World, paths: Paths, *, test_hooks: bool = False) -> Outcome:
    """Run the agent until it is stopped; one event loop for the whole life of the process."""
    notifier = Notifier()
    try:
        return asyncio.run(Agent(world, paths, notifier, test_hooks=test_hooks).run())
    finally:
        with contextlib.suppress(OSError):
            notifier.close()
