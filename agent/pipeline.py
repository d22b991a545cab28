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

Every long-lived task runs under `agent.stages.supervised`, by its stage's rule; the stop plan
and its bounds are `agent.stopping`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.alerts.mqtt import MqttPublisher
from agent.collecting import Collection
from agent.collectors import Collector
from agent.collectors.agent import AgentCollector
from agent.collectors.node import HostAddress
from agent.evaluate.alerting import Evaluation
from agent.evaluate.anomalies import Anomalies
from agent.evaluate.coverage import configured_checks, functional_safety
from agent.evaluate.events import EventLog
from agent.evaluate.fleet import Fleet
from agent.evaluate.impact import Impact, RemoteStates
from agent.evaluate.models import ModelStatus
from agent.evaluate.reports import ReportsCollector
from agent.evaluate.rollup import Rollups
from agent.evaluate.states import StateTracker
from agent.evaluate.transitions import TransitionJudge
from agent.health import Progress
from agent.model import ResourceType
from agent.recorder import Recorder
from agent.recovery.service import Recovery
from agent.serve.api import Local, QueryApi
from agent.serve.prometheus import TaskFigures, expose
from agent.serve.server import ApiServer
from agent.stages import RULES, StageFailures, supervised
from agent.stopping import STOP_STAGES, StopPlan, cancelled
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.election import Election
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from agent.store.manifest_sync import ManifestSync, read_cache
from agent.store.pusher import Pusher
from agent.systemd import resource_fields
from agent.timing.service import TimingService
from agent.timing.tracer import Tracer
from agent.world import WorldHolder

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from agent.evaluate.documents import FunctionalSafety
    from agent.manifests import Inventory
    from agent.model import ModelView, Sample

_log = logging.getLogger(__name__)


TRACE_READ_S = 0.1
"""How often the tracer's buffer is read into activations."""
MANIFEST_CACHE = "etcd-manifests.json"
"""In the state directory: the manifests last read from etcd."""
LIVENESS_TTL_S = 10
"""TTL of the agent's liveness lease: a dead agent's models turn Unknown within about this."""


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
    evaluation: Evaluation
    transitions: TransitionJudge
    impact: Impact
    failures: StageFailures
    on_fatal: Callable[[str], None]
    anomalies: Anomalies | None = None
    recovery: Recovery | None = None
    api: ApiServer | None = None

    def publish_inventory(self, inventory: Inventory) -> None:
        """Log what this node hosts and record the dependency status the manifests decide."""
        self.impact.refresh()
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

    async def cached_manifests(
        self, apply: Callable[[tuple[tuple[str, str], ...]], Awaitable[bool]]
    ) -> None:
        """Start with the manifests last read from etcd, before etcd answers (if it ever does)."""
        sync = self.manifest_sync
        if sync is None:
            return
        cached = await asyncio.to_thread(read_cache, sync.cache)
        if cached and await apply(cached):
            sync.current = cached

    def report_quarantines(self) -> None:
        """A corrupt buffer moved aside at open, and what its salvage recovered, are events of
        the node (`buffer_corrupt`, `buffer_salvaged`)."""
        buffer = self.buffer.buffer
        for event_type, report in buffer.quarantine_reports:
            event = self.keys.event(
                ResourceType.NODE,
                self.keys.node,
                event_type=event_type,
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
        values += [(f"agent_stage_failures_{s}", self.failures.counts[s], "errors") for s in RULES]
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

    def task(
        self, tg: asyncio.TaskGroup, stage: str, run: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        """Run a stage's task in `tg` under its rule (`supervised`)."""
        return tg.create_task(supervised(stage, run, self.failures, self.on_fatal), name=stage)

    def start(self, tg: asyncio.TaskGroup, stops: StopPlan, world: WorldHolder) -> None:
        """Run every stage's tasks but the collectors' (`Collection.start`), in data-flow order,
        and register what each does in which stop stage."""
        late = self._start_intake(tg, stops, world)
        # evaluation into the buffer
        recorder = self.task(tg, "recorder", self.recorder.run)

        async def drain() -> None:
            await cancelled(recorder)
            await self.recorder.drain()

        stops.on("drain_pipeline", drain)
        anomalies = self.anomalies
        if anomalies is not None:

            async def save_baselines() -> None:
                await asyncio.to_thread(anomalies.save)

            stops.on("drain_pipeline", save_baselines)
        # outputs
        pusher = self.task(tg, "pusher", self.pusher.run)
        election = self.task(tg, "election", self.election.run)
        mqtt = self.mqtt
        if mqtt is not None:
            late.append(self.task(tg, "mqtt", mqtt.run))

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
        if self.api is not None:
            # Answers until the close stage: `status` and `query` work while the agent stops.
            api = self.task(tg, "api", self.api.run)
            stops.on("close", lambda: cancelled(api))

    def _start_intake(
        self, tg: asyncio.TaskGroup, stops: StopPlan, world: WorldHolder
    ) -> list[asyncio.Task[None]]:
        """Manifests from etcd, the collectors' stop, the ingest socket, the timing timers and
        the tracer; returns the tasks that end only in the close stage."""
        config = world.config()
        if self.manifest_sync is not None:
            sync = self.task(tg, "manifests", self.manifest_sync.run)
            stops.on("stop_intake", lambda: cancelled(sync))
        stops.on("stop_intake", self.collection.stop_for_good)

        async def stop_ingest() -> None:
            self.timing.ingest.close()

        stops.on("stop_intake", stop_ingest)

        async def stop_judging() -> None:
            self.transitions.close()

        stops.on("stop_intake", stop_judging)
        if self.recovery is not None:
            stops.on("stop_intake", self.recovery.close)
        tasks: list[asyncio.Task[None]] = []
        if not config.timing.enabled:
            return tasks
        tasks.append(self.task(tg, "timing", self.timing.run))
        if config.timing.tracer and config.timing.traced_tasks:
            tracer = Tracer(config.timing.tracefs, f"piccolo-agent-{config.node.name}")
            usable, why = tracer.available()
            if usable:
                targets = config.timing.traced_tasks

                def trace() -> Awaitable[None]:
                    return self.timing.trace(tracer, targets, TRACE_READ_S)

                tasks.append(self.task(tg, "tracer", trace))
            else:
                _log.warning("tracer unavailable (%s): traced tasks are not supervised", why)
        return tasks


def _state_of(tracker: StateTracker, kind: ResourceType, name: str) -> str | None:
    current = tracker.current(kind, name)
    return None if current is None else current[0]


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
    on_fatal: Callable[[str], None],
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
    event_log = EventLog()
    recorder = Recorder(
        buffer,
        keys,
        Rollups(storage.history_window),
        progress,
        deadband_percent=storage.publish_deadband,
        deadband_points=storage.publish_deadband_points,
        max_age_s=storage.publish_max_age,
        on_records=event_log.observe,
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
        dependency_map=lambda: world.config().dependency_monitoring.dependency_map,
    )
    election = Election(
        store,
        keys,
        prefix=storage.data_organization.prefix,
        ttl_s=LIVENESS_TTL_S,
        compaction=storage.compaction,
        progress=progress,
        chores=(fleet.step,),
        labels=lambda: world.config().node.labels,
        rounds=(fleet.observe, lambda: remote.step()),  # noqa: PLW0108 - remote comes later
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
    tracked = config.state_transition_tracking.resources
    tracker = StateTracker(
        {ResourceType(t.type): frozenset(t.states) for t in tracked},
        {ResourceType(t.type): t.transitions for t in tracked if t.transitions},
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
        uses=lambda package: timing.scenarios.usage(
            package.name, world.inventory().scenarios.values()
        ),
        health=lambda package: pipeline.impact.health((ResourceType.PACKAGE, package)),
        host_ip=HostAddress().get,
        gpu=lambda model: collection.gpu_of(model),  # noqa: PLW0108 - collection comes later
        functional=lambda model, view: functional_of(world, timing, model, view),
        max_age_s=storage.publish_max_age,
    )
    reports = ReportsCollector(
        timing.apps,
        timing.scenarios,
        world.inventory,
        keys,
        recorder.submit_records,
        safety=lambda model: timing.model_extras(model)[1],
        dependency=lambda scenario: pipeline.impact.scenario_dependency(scenario),  # noqa: PLW0108 - pipeline comes later
        package_state=lambda package: _state_of(tracker, ResourceType.PACKAGE, package),
        views=lambda: model_status.views,
        events=lambda scenario: event_log.of(ResourceType.SCENARIO.value, scenario),
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
            ("states", pipeline.transitions, monitoring.node.collection_interval),
        ]

    anomalies = Anomalies(
        world.both,
        timing.alerts,
        timing.raise_alerts,
        keys=keys,
        submit_records=recorder.submit_records,
        submit_samples=recorder.submit,
        state_dir=state_dir,
    )
    tracker.subscribe(anomalies.transition)

    def judged(samples: Sequence[Sample]) -> None:
        anomalies.submit(samples)
        recorder.submit(samples)

    evaluation = Evaluation(world.both, timing.alerts, timing.raise_alerts, judged)
    transitions = TransitionJudge(world.both, tracker, timing.alerts, timing.raise_alerts)
    impact = Impact(
        world.both,
        tracker,
        timing.alerts,
        timing.raise_alerts,
        keys=keys,
        submit_records=recorder.submit_records,
        submit_samples=recorder.submit,
    )
    remote = RemoteStates(store, storage.data_organization.prefix, impact)
    recovery = Recovery(
        world.both,
        timing.alerts,
        timing.raise_alerts,
        keys=keys,
        submit_records=recorder.submit_records,
        restarter=lambda: collection.restarter(),  # noqa: PLW0108 - collection comes later
        reported=lambda kind, name: timing.reported.get((kind, name)),
    )

    def on_views(views: Iterable[ModelView]) -> None:
        seen = list(views)
        model_status.update(seen)
        recovery.observe(seen)

    collection = Collection(
        world,
        progress,
        sink=evaluation.submit,
        on_views=on_views,
        views=lambda: model_status.views,
        extra=extra,
    )

    def exposition(openmetrics: bool) -> bytes:  # noqa: FBT001 - the Local protocol's shape
        return prometheus_text(world, recorder, timing, openmetrics=openmetrics)

    local = Local(
        node=config.node.name,
        latest=lambda: recorder.latest,
        state=tracker.current,
        pending=buffer.pending_under,
        alerts=timing.alerts.firing,
        health=lambda: (progress.ready, progress.stalled()),
        metrics=exposition,
    )
    query = QueryApi(
        store, prefix=storage.data_organization.prefix, manifests=world.manifests, local=local
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
        evaluation=evaluation,
        transitions=transitions,
        impact=impact,
        failures=StageFailures(),
        on_fatal=on_fatal,
        anomalies=anomalies,
        recovery=recovery,
        api=ApiServer(config.api, query) if config.api.enabled else None,
    )
    return pipeline


def functional_of(
    world: WorldHolder, timing: TimingService, model: str, view: ModelView
) -> FunctionalSafety:
    """The model's functionalSafetyMetrics from what is configured and what ran."""
    config, inventory = world.both()
    tasks = timing.supervisors.of_model(model)
    checks = {
        f"{task.spec.task}/{name}": name in task.last_check
        for task in tasks
        for name in configured_checks(task.spec)
    }
    placed = inventory.models.get(model)
    return functional_safety(
        model,
        view,
        config,
        specs=[task.spec for task in tasks],
        checks=checks,
        asil=placed.asil_level if placed is not None else "QM",
    )


def prometheus_text(
    world: WorldHolder, recorder: Recorder, timing: TimingService, *, openmetrics: bool
) -> bytes:
    """The `/metrics` exposition: the latest samples of the resources in the inventory, the
    supervised tasks and the firing alerts."""
    config, inventory = world.both()
    present: dict[tuple[str, str], str] = {("node", config.node.name): ""}
    present.update({("model", n): m.asil_level for n, m in inventory.models.items()})
    present.update({("package", n): p.metadata.asil_level for n, p in inventory.packages.items()})
    present.update({("scenario", n): s.metadata.asil_level for n, s in inventory.scenarios.items()})
    supervisors = timing.supervisors
    tasks = []
    for model, task in list(supervisors.keys()):
        supervisor = supervisors.get((model, task))
        if supervisor is None:
            continue
        tasks.append(
            TaskFigures(
                model=model,
                task=task,
                activations=supervisor.activations,
                deadline_misses=supervisor.deadline_misses,
                budget_overruns=supervisor.budget_overruns,
                wcet_ns=supervisor.wcet_ns,
                mean_ns=supervisor.mean_ns,
                scheduling_latency_ns=supervisor.scheduling_latency_ns,
            )
        )
    exposition = expose(
        config.node.name,
        list(recorder.latest.values()),
        present=present,
        tasks=tasks,
        alerts=timing.alerts.firing(),
    )
    return exposition.render(openmetrics=openmetrics)
