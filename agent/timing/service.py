"""The timing path from report to alert: ingest socket -> supervisors -> alerts -> MQTT and etcd.

```
 ingest socket ──► parse ──► Supervisors (per model, task) ──► Violation / Resolution
   (datagrams)                 ▲ tick: hang-ups, alive windows         │
 tracer (tracefs) ─────────────┘                                       ▼
                                   AlertManager (episodes, dedupe, renotify, rate limit)
                                      │ alerts, in order                │ events
                                      ▼                                 ▼
                          durable outbox ──► MQTT (QoS 1)       recorder ──► buffer ──► etcd
```

Reports are handled synchronously in the datagram callback: parsing and supervision cost a few
microseconds, and a critical alert goes on at once. Alerts leave through one queue and one task, so
their order in the outbox (and on the broker) is the order in which they were raised.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING

from agent.alerts.alerts import Alert, AlertKey, AlertManager
from agent.evaluate.reports import AppMetrics, Scenarios
from agent.ingest.protocol import (
    Activation,
    AppMetric,
    Checkpoint,
    End,
    Heartbeat,
    ScenarioExecution,
    Start,
    StateReport,
)
from agent.ingest.server import IngestServer
from agent.model import ResourceType
from agent.runtime.procfs import ProcessMatcher, ProcessScanner
from agent.store.keys import rfc3339
from agent.timing.registry import Supervisors
from agent.timing.supervision import Outcome, Violation, safety_metrics
from agent.timing.tracer import TracerUnavailable, threads_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from agent.alerts.mqtt import MqttPublisher
    from agent.config import Config, TracedTask
    from agent.evaluate.states import StateTracker
    from agent.ingest.protocol import Report
    from agent.manifests import Inventory
    from agent.store.keys import KeyMaker, Record
    from agent.timing.tracer import Tracer

_log = logging.getLogger(__name__)

TIMING_REPORTS = (Start, End, Activation, Heartbeat, Checkpoint)


RESOLVE_EVERY_S = 5.0
IDLE_TICK_S = 0.25


def _resolve(targets: Sequence[TracedTask], scanner: ProcessScanner) -> dict[int, tuple[str, str]]:
    """pid -> (model, task) of every traced task's processes now (one scan for all of them)."""
    matchers = [
        ProcessMatcher(
            name=target.name,
            cmdline=target.cmdline,
            pidfile=target.pidfile,
            systemd_unit=target.systemd_unit,
        )
        for target in targets
    ]
    by_matcher = scanner.find(matchers)
    found: dict[int, tuple[str, str]] = {}
    for target, matcher in zip(targets, matchers, strict=True):
        for pid in by_matcher[matcher]:
            found[pid] = (target.model, target.task)
    return found


def to_wall(monotonic_ns: int) -> str:
    """A CLOCK_MONOTONIC time as the RFC 3339 wall-clock time it corresponds to now."""
    return rfc3339(time.time_ns() - (time.monotonic_ns() - monotonic_ns))


class TimingService:
    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        *,
        keys: KeyMaker,
        tracker: StateTracker,
        submit: Callable[[list[Record]], None],
        mqtt: MqttPublisher | None,
        socket_path: Path,
    ) -> None:
        config, _ = world()
        self._world = world
        self._keys = keys
        self._tracker = tracker
        self._submit = submit
        self.mqtt = mqtt
        self.apps = AppMetrics()
        self.scenarios = Scenarios()
        self.supervisors = Supervisors(lambda: (world()[1], world()[0].timing))
        self.alerts = AlertManager(
            keys.node,
            renotify_s=config.mqtt.renotify_interval,
            rate_limit_per_s=config.mqtt.rate_limit_per_s,
        )
        ingest = config.ingest
        self.ingest = IngestServer(
            socket_path,
            max_datagram_bytes=ingest.max_datagram_bytes,
            mode=ingest.mode,
            group=ingest.group,
            accept=self.accept,
            deliver=self.deliver,
        )
        self._outgoing: asyncio.Queue[list[Alert]] = asyncio.Queue()
        self.alerts_raised = 0
        self.traced = 0

    # reports ----------------------------------------------------------------------------------

    def accept(self, report: Report) -> bool:
        """Whether the report concerns a resource of this node (others are counted, dropped)."""
        inventory = self._world()[1]
        if isinstance(report, ScenarioExecution):
            return report.scenario in inventory.scenarios
        if isinstance(report, StateReport):
            known = {
                ResourceType.SCENARIO: inventory.scenarios,
                ResourceType.PACKAGE: inventory.packages,
                ResourceType.MODEL: inventory.models,
            }.get(report.resource_type, {})
            return report.id in known
        return report.model in inventory.models

    def deliver(self, report: Report) -> None:
        if isinstance(report, TIMING_REPORTS):
            outcomes = self.supervisors.deliver(report)
            if outcomes:
                self.handle(outcomes)
        elif isinstance(report, AppMetric):
            self.apps.record(report.model, report.name, report.value, report.unit)
        elif isinstance(report, ScenarioExecution):
            self.scenarios.execution(
                report.scenario, report.duration_ms, report.result, time.time_ns()
            )
        else:
            self._state(report)

    def _state(self, report: StateReport) -> None:
        now = time.time_ns()
        if report.resource_type is ResourceType.SCENARIO:
            self.scenarios.states[report.id] = (report.state, report.reason, now)
        change = self._tracker.observe(
            report.resource_type, report.id, report.state, now, report.reason or "reported"
        )
        if change is None:
            return
        records = [
            self._keys.state(
                change.resource_type,
                change.resource_id,
                state=change.state,
                since_ns=now,
                previous=change.previous,
                reason=change.reason,
            )
        ]
        if change.previous is not None:
            records.append(
                self._keys.transition(
                    change.resource_type,
                    change.resource_id,
                    previous=change.previous,
                    state=change.state,
                    at_ns=now,
                    time_in_previous_ms=change.time_in_previous_ms,
                    expected=change.expected,
                )
            )
        self._submit(records)

    # outcomes to alerts -------------------------------------------------------------------------

    def handle(self, outcomes: list[Outcome]) -> None:
        now = time.time_ns()
        alerts: list[Alert] = []
        for outcome in outcomes:
            key = AlertKey("model", outcome.model, outcome.kind, outcome.task)
            if isinstance(outcome, Violation):
                spec = self.supervisors.task(outcome.model, outcome.task)
                alerts += self.alerts.fire(
                    key,
                    severity="critical" if outcome.critical else "warning",
                    value=outcome.value,
                    threshold=outcome.threshold,
                    asil=spec.spec.asil if spec is not None else "QM",
                    message=outcome.message,
                    now_ns=now,
                )
            else:
                alerts += self.alerts.resolve(key, now_ns=now, message="back within its limits")
        self.raise_alerts(alerts)

    def raise_alerts(self, alerts: list[Alert]) -> None:
        """Every alert becomes an event in etcd and goes, in order, to the MQTT outbox."""
        if not alerts:
            return
        self.alerts_raised += len(alerts)
        self._submit(
            [
                self._keys.event(
                    ResourceType(alert.resource_type),
                    alert.resource_id,
                    event_type=alert.kind,
                    severity=alert.severity if alert.status == "firing" else "info",
                    message=alert.message
                    if alert.status == "firing"
                    else f"resolved: {alert.message}",
                    details={
                        "alert": alert.id,
                        "status": alert.status,
                        "metric": alert.metric,
                        "value": alert.value,
                        "threshold": alert.threshold,
                        "count": alert.count,
                    },
                )
                for alert in alerts
            ]
        )
        if self.mqtt is not None:
            self._outgoing.put_nowait(alerts)

    async def forward(self) -> None:
        """The one task that moves alerts into the outbox, keeping their order."""
        assert self.mqtt is not None  # noqa: S101 - started only with a publisher
        while True:
            batch = await self._outgoing.get()
            while not self._outgoing.empty():
                batch += self._outgoing.get_nowait()
            await self.mqtt.enqueue(batch)

    async def drain_alerts(self) -> None:
        """Move what is still queued into the outbox (stop stage)."""
        batch: list[Alert] = []
        while not self._outgoing.empty():
            batch += self._outgoing.get_nowait()
        if batch and self.mqtt is not None:
            await self.mqtt.enqueue(batch)

    async def trace(self, tracer: Tracer, targets: Sequence[TracedTask], period_s: float) -> None:
        """Feed the supervisors with the activations scheduler tracepoints show.

        Processes are looked up again every `RESOLVE_EVERY_S`; the tracer restarts when they
        changed. An activation whose switch-in the kernel did not record still counts as alive.
        """
        owners: dict[int, tuple[str, str]] = {}
        threads: dict[int, int] = {}
        resolved_at = -RESOLVE_EVERY_S
        scanner = ProcessScanner()
        missed_before = 0
        seq = itertools.count()
        try:
            while True:
                if time.monotonic() - resolved_at >= RESOLVE_EVERY_S:
                    resolved_at = time.monotonic()
                    _log.debug("traced activations so far: %d", self.traced)
                    found = await asyncio.to_thread(_resolve, targets, scanner)
                    # A process may start threads after it was found: follow them too.
                    found_threads = await asyncio.to_thread(threads_of, found)
                    if found != owners or found_threads != threads:
                        traced = await self._retrace(tracer, found)
                        owners, threads = (found, found_threads) if traced else ({}, {})
                if owners:
                    for activation in await asyncio.to_thread(tracer.read):
                        model, task = owners.get(activation.pid, ("", ""))
                        if model:
                            self.traced += 1
                            self.deliver(
                                Activation(
                                    model,
                                    task,
                                    next(seq),
                                    activation.start_ns,
                                    activation.end_ns,
                                    activation.wakeup_ns,
                                )
                            )
                    missed = sum(tracer.missed_switch_ins.values())
                    for _ in range(missed - missed_before):
                        for model, task in set(owners.values()):
                            self.deliver(Heartbeat(model, task, time.monotonic_ns()))
                    missed_before = missed
                await asyncio.sleep(period_s)
        finally:
            await asyncio.to_thread(tracer.stop)

    @staticmethod
    async def _retrace(tracer: Tracer, owners: Mapping[int, tuple[str, str]]) -> bool:
        """Restart tracing for `owners`; False when tracefs refused (tried again later)."""
        await asyncio.to_thread(tracer.stop)
        if not owners:
            return True
        try:
            await asyncio.to_thread(tracer.start, owners)
        except TracerUnavailable as exc:
            # Tracing is never worth a crash: the next look-up tries again.
            _log.warning("cannot trace the traced tasks now: %s", exc)
            return False
        _log.info("tracing %d process(es) of traced tasks", len(owners))
        return True

    async def tick(self, period_s: float) -> None:
        """Hang-ups and alive windows, and alerts that waited for the rate limit.

        Every `period_s` while tasks are supervised; with none (yet) only every `IDLE_TICK_S`,
        since a node without instrumented tasks should not wake up hundreds of times a second.
        """
        while True:
            idle = not self.supervisors.active() and not self.alerts.pending
            await asyncio.sleep(IDLE_TICK_S if idle else period_s)
            outcomes = self.supervisors.tick(time.monotonic_ns())
            if outcomes:
                self.handle(outcomes)
            self.raise_alerts(self.alerts.due(time.time_ns()))

    # results ----------------------------------------------------------------------------------

    def model_extras(self, model: str) -> tuple[Mapping[str, float], dict[str, object] | None]:
        """What the model's status document gets from reports: app metrics and safetyMetrics."""
        tasks = self.supervisors.of_model(model)
        inventory = self._world()[1]
        placed = inventory.models.get(model)
        safety = (
            safety_metrics(
                placed.asil_level if placed else "QM", tasks, time.monotonic_ns(), to_wall
            )
            if tasks
            else None
        )
        return self.apps.of_model(model), safety
