"""The pipeline builder: every stage made from the config, typed, and started in data-flow order.

```
 intake      collectors (Collection) · ingest socket + tracer (TimingService) · manifest sync
 evaluation  supervisors, alert lifecycle (TimingService) · model/package/scenario status
             (ModelStatus, ReportsCollector) · state tracker · fleet (elected agent only)
 buffer      Recorder ──► durable local buffer (SQLite)
 outputs     Pusher ──► etcd · MqttPublisher ──► broker · Election (liveness, leader, chores)
```

`build` makes the stages; `start` runs their tasks in the caller's TaskGroup and registers what
each does in which stop stage, in data-flow order (intake first, then evaluation, the buffer,
the outputs), so `StopPlan.run` stops the agent from its inputs to its outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.alerts.mqtt import MqttPublisher
from agent.collecting import Collection
from agent.collectors import Collector
from agent.collectors.agent import AgentCollector
from agent.evaluate.dependencies import static_dependency_status
from agent.evaluate.fleet import Fleet
from agent.evaluate.models import ModelStatus
from agent.evaluate.reports import ReportsCollector
from agent.evaluate.rollup import Rollups
from agent.evaluate.states import StateTracker
from agent.health import Progress
from agent.model import ResourceType, Sample
from agent.recorder import Recorder
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.election import Election
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from agent.store.manifest_sync import ManifestSync
from agent.store.pusher import Pusher
from agent.systemd import resource_fields
from agent.timing.service import TimingService
from agent.timing.tracer import Tracer
from agent.world import WorldHolder

if TYPE_CHECKING:
    from agent.manifests import Inventory

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

TRACE_READ_S = 0.1
"""How often the tracer's buffer is read into activations."""
MANIFEST_CACHE = "etcd-manifests.json"
"""In the state directory: the manifests last read from etcd."""
LIVENESS_TTL_S = 10
"""TTL of the agent's liveness lease: a dead agent's models turn Unknown within about this."""

StopHook = Callable[[], Awaitable[None]]


class StopPlan:
    """What runs in each stop stage, in the order it was registered (data-flow order)."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[StopHook]] = {stage.name: [] for stage in STOP_STAGES}

    def on(self, stage: str, hook: StopHook) -> None:
        self._hooks[stage].append(hook)

    async def run(self, status: Callable[[str], object]) -> None:
        for stage in STOP_STAGES:
            status(f"stopping: {stage.name}")
            started = time.monotonic()
            try:
                async with asyncio.timeout(stage.timeout_s):
                    for hook in self._hooks[stage.name]:
                        await hook()
            except TimeoutError:
                _log.error("stop stage %s exceeded %.1fs; going on", stage.name, stage.timeout_s)
            _log.debug("stop stage %s took %.3fs", stage.name, time.monotonic() - started)


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Pipeline:
    keys: KeyMaker
    buffer: AsyncBuffer
    store: EtcdStore
    recorder: Recorder
    pusher: Pusher
    fleet: Fleet
    election: Election
    manifest_sync: ManifestSync | None
    tracker: StateTracker
    mqtt: MqttPublisher | None
    timing: TimingService
    model_status: ModelStatus
    reports: ReportsCollector
    agent_metrics: AgentCollector
    collection: Collection

    def publish_inventory(self, inventory: Inventory) -> None:
        """Log what this node hosts and record the dependency status the manifests decide."""
        now = time.time_ns()
        self.recorder.submit(
            [
                Sample(dep.resource_type, dep.resource_id, "dependency_status", dep.status, "", now)
                for dep in static_dependency_status(inventory)
            ]
        )
        for warning in inventory.warnings:
            _log.warning("%s", warning, extra=_problem_fields(warning.field))
        for model in inventory.models.values():
            _log.info(
                "monitoring model %s (ASIL %s, image %s, packages %s)",
                model.name,
                model.asil_level,
                model.image or "unknown",
                ", ".join(model.packages) or "none",
                extra=resource_fields("model", model.name),
            )

    def report_quarantines(self) -> None:
        """A corrupt buffer moved aside at open is an event of the node."""
        buffer = self.buffer.buffer
        for report in buffer.quarantine_reports:
            event = self.keys.event(
                ResourceType.NODE,
                self.keys.node,
                event_type="buffer_corrupt",
                severity="warning",
                message=report,
            )
            self.recorder.submit_records([event])
        buffer.quarantine_reports.clear()

    def self_metrics(self) -> list[tuple[str, float | int | bool | str, str]]:
        """The agent's own health beyond its buffer, pusher and recorder."""
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
        for name, runner in self.collection.runner_stats():
            stats = runner.stats
            values += [
                (f"agent_collector_{name}_collections", stats.collections, "collections"),
                (f"agent_collector_{name}_errors", stats.errors, "errors"),
                (f"agent_collector_{name}_overruns", stats.overruns, "cycles"),
            ]
        return values

    def start(self, tg: asyncio.TaskGroup, stops: StopPlan, world: WorldHolder) -> None:
        """Run every stage's tasks but the collectors' (`Collection.start`), in data-flow order,
        and register what each does in which stop stage."""
        late = self._start_intake(tg, stops, world)
        # evaluation into the buffer
        recorder = tg.create_task(self.recorder.run(), name="recorder")

        async def drain() -> None:
            await cancelled(recorder)
            await self.recorder.drain()

        stops.on("drain_pipeline", drain)
        # outputs
        pusher = tg.create_task(self.pusher.run(), name="pusher")
        election = tg.create_task(self.election.run(), name="election")
        mqtt = self.mqtt
        if mqtt is not None:
            late.append(tg.create_task(mqtt.run(), name="mqtt"))

        async def flush() -> None:
            await cancelled(pusher)
            await self.pusher.flush()
            if mqtt is not None:
                await self.timing.drain_alerts()
                await mqtt.stop(timeout_s=STOP_STAGES[2].timeout_s / 2)

        async def close() -> None:
            # A stage that ran out of time may have left its task running: nothing may touch the
            # buffer or the store once they close.
            for task in (*late, recorder, pusher, election):
                await cancelled(task)
            await self.election.resign()
            await self.store.close()
            await self.buffer.close()

        stops.on("flush_outputs", flush)
        stops.on("close", close)

    def _start_intake(
        self, tg: asyncio.TaskGroup, stops: StopPlan, world: WorldHolder
    ) -> list[asyncio.Task[None]]:
        """Manifests from etcd, the collectors' stop, the ingest socket, the timing timers and
        the tracer; returns the tasks that end only in the close stage."""
        config = world.config()
        if self.manifest_sync is not None:
            sync = tg.create_task(self.manifest_sync.run(), name="manifests")
            stops.on("stop_intake", lambda: cancelled(sync))
        stops.on("stop_intake", self.collection.stop_for_good)

        async def stop_ingest() -> None:
            self.timing.ingest.close()

        stops.on("stop_intake", stop_ingest)
        tasks: list[asyncio.Task[None]] = []
        if not config.timing.enabled:
            return tasks
        tasks.append(tg.create_task(self.timing.run(), name="timing"))
        if config.timing.tracer and config.timing.traced_tasks:
            tracer = Tracer(config.timing.tracefs, f"piccolo-agent-{config.node.name}")
            usable, why = tracer.available()
            if usable:
                trace = self.timing.trace(tracer, config.timing.traced_tasks, TRACE_READ_S)
                tasks.append(tg.create_task(trace, name="tracer"))
            else:
                _log.warning("tracer unavailable (%s): traced tasks are not supervised", why)
        return tasks


def _problem_fields(field: str) -> dict[str, dict[str, str]] | None:
    """Journal fields for a manifest warning whose field reads `Kind/name`."""
    kind, sep, name = field.partition("/")
    return resource_fields(kind.lower(), name) if sep else None


def build(
    world: WorldHolder,
    state_dir: Path,
    runtime_dir: Path,
    progress: Progress,
    *,
    on_etcd_manifests: Callable[[tuple[tuple[str, str], ...]], Awaitable[bool]],
) -> Pipeline:
    config = world.config()
    storage = config.data_storage
    keys = KeyMaker(config.node.name)

    def burst_ended(reason: str, count: int, message: str) -> None:
        # The buffer dropped records (full, disk full, failing): one event per burst, written
        # once it takes records again.
        event = keys.event(
            ResourceType.NODE,
            keys.node,
            event_type=f"buffer_{reason}",
            severity="warning",
            message=message,
            details={"dropped": count, "reason": reason},
        )
        recorder.submit_records([event])

    buffer = AsyncBuffer(
        Buffer(
            state_dir / config.buffer.file,
            config.buffer.max_bytes,
            config.buffer.sync,
            min_free_bytes=config.buffer.min_free_bytes,
        ),
        burst_ended=burst_ended,
    )
    store = EtcdStore(storage.configuration)
    recorder = Recorder(
        buffer,
        keys,
        Rollups(storage.history_window),
        progress,
        deadband_percent=storage.publish_deadband,
        max_age_s=storage.publish_max_age,
    )
    retention = storage.retention
    pusher = Pusher(
        buffer,
        store,
        prefix=storage.data_organization.prefix,
        retention_s={
            "metrics": retention.metrics,
            "events": retention.events,
            "state_transitions": retention.state_transitions,
        },
        max_txn_ops=storage.configuration.max_txn_ops,
        max_request_bytes=storage.configuration.max_request_bytes,
        progress=progress,
    )
    fleet = Fleet(
        store,
        keys,
        prefix=storage.data_organization.prefix,
        manifests=world.manifests,
        submit=recorder.submit_records,
        package_every_s=config.resource_monitoring.package.collection_interval,
    )
    election = Election(
        store,
        keys,
        prefix=storage.data_organization.prefix,
        ttl_s=LIVENESS_TTL_S,
        compaction=storage.compaction,
        progress=progress,
        chores=(fleet.step,),
    )
    prefix = config.manifests.etcd_prefix
    manifest_sync = (
        ManifestSync(
            store,
            prefix,
            state_dir / MANIFEST_CACHE,
            on_etcd_manifests,
            progress,
            refresh_s=config.manifests.etcd_refresh,
        )
        if prefix
        else None
    )
    tracker = StateTracker(
        {
            ResourceType(t.type): frozenset(t.states)
            for t in config.state_transition_tracking.resources
        }
    )
    mqtt = (
        MqttPublisher(config.mqtt, config.node.name, __version__, buffer, progress)
        if config.mqtt.enabled
        else None
    )
    timing = TimingService(
        world.both,
        keys=keys,
        tracker=tracker,
        submit=recorder.submit_records,
        mqtt=mqtt,
        socket_path=runtime_dir / config.ingest.socket,
    )

    # The status documents need the collectors' sizes, and the collectors feed the documents:
    # these closures find `collection` and `pipeline` once they exist (called only after build).
    def sizes() -> tuple[Mapping[str, int], Mapping[str, int]]:
        return collection.sizes()

    def self_metrics() -> list[tuple[str, float | int | bool | str, str]]:
        return pipeline.self_metrics()

    model_status = ModelStatus(
        keys,
        tracker,
        world.both,
        recorder.submit_records,
        sizes,
        extras=timing.model_extras,
        max_age_s=storage.publish_max_age,
    )
    reports = ReportsCollector(
        timing.apps,
        timing.scenarios,
        world.inventory,
        keys,
        recorder.submit_records,
        safety=lambda model: timing.model_extras(model)[1],
    )
    agent_metrics = AgentCollector(
        config.node.name,
        lambda: buffer.stats,
        lambda: pusher.stats,
        lambda: recorder.stats,
        extra=self_metrics,
    )

    def extra() -> list[tuple[str, Collector, float]]:
        # The agent's own health is sampled with the node; reported metrics with the scenarios.
        monitoring = world.config().resource_monitoring
        return [
            ("agent", agent_metrics, monitoring.node.collection_interval),
            ("reports", reports, monitoring.scenario.collection_interval),
        ]

    collection = Collection(
        world,
        progress,
        sink=recorder.submit,
        on_views=model_status.update,
        views=lambda: model_status.views,
        extra=extra,
    )
    pipeline = Pipeline(
        keys=keys,
        buffer=buffer,
        store=store,
        recorder=recorder,
        pusher=pusher,
        fleet=fleet,
        election=election,
        manifest_sync=manifest_sync,
        tracker=tracker,
        mqtt=mqtt,
        timing=timing,
        model_status=model_status,
        reports=reports,
        agent_metrics=agent_metrics,
        collection=collection,
    )
    return pipeline
