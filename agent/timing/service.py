"""The timing path from report to alert: ingest socket -> supervisors -> alerts -> MQTT and etcd.

```
 ingest socket ──► parse ──► Supervisors (per model, task) ──► Violation / Resolution / Correction
   (datagrams)        ▲        ▲ timers: hang-ups, alive windows        │
 tracer (tracefs) ────┼────────┘                                        ▼
                      │            AlertManager (episodes, dedupe, renotify, rate limit)
        drain first ──┘               │ alerts: critical first           │ then events
                                      ▼                                  ▼
                          MQTT (direct, QoS 1 in flight) + outbox   recorder ──► buffer ──► etcd
```

Reports are handled synchronously in the datagram callback: parsing and supervision cost a few
microseconds, and an alert is handed to the MQTT publisher before anything else is done with it.

Verdicts without a report (a missing end, a silent task) are taken by timers, one per task, armed
at the time its supervisor says the next verdict could change (`TaskSupervisor.next_check_ns`)
plus `timing.hangup_grace`; nothing polls. When a timer fires at T, the ingest socket is drained
first, then the task is judged as of T - grace: every report a sender handed to the kernel before
T has been read, and a sender had `hangup_grace` from its end to its `sendto`. So an activation
whose end came in time is never judged hung because the agent had not read it yet
(docs/timing-supervision.md says what can and cannot be known).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING

from agent.alerts.alerts import Alert, AlertKey, AlertManager
from agent.clock import to_wall
from agent.evaluate.models import state_records
from agent.evaluate.reports import AppMetrics, Scenarios
from agent.ingest.protocol import (
    Activation,
    AppMetric,
    Checkpoint,
    End,
    Heartbeat,
    Refused,
    ScenarioExecution,
    Start,
    StateReport,
    wall_clock,
)
from agent.ingest.server import IngestServer
from agent.model import ResourceType
from agent.runtime.procfs import ProcessMatcher, ProcessScanner
from agent.systemd import resource_fields
from agent.timing.checks import Correction, Outcome, Resolution, Violation
from agent.timing.registry import Supervisors
from agent.timing.safety import safety_document
from agent.timing.tracer import TracerUnavailable, threads_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from agent.alerts.mqtt import MqttPublisher
    from agent.config import Config, TracedTask
    from agent.evaluate.documents import SafetyMetricsDoc
    from agent.evaluate.states import StateTracker
    from agent.ingest.protocol import Report
    from agent.manifests import Inventory
    from agent.model import Record
    from agent.store.keys import KeyMaker
    from agent.timing.tracer import Tracer

_log = logging.getLogger(__name__)
_LOG_LEVEL = {"critical": logging.CRITICAL, "warning": logging.WARNING, "info": logging.INFO}
"""The journal priority of a firing alert (crit, warning, info); a resolution is info."""

TIMING_REPORTS = (Start, End, Activation, Heartbeat, Checkpoint)


RESOLVE_EVERY_S = 5.0


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
        self.reported: dict[tuple[ResourceType, str], str] = {}
        """(type, id) -> the state the orchestrator last reported for it, lower case."""
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
            delivered=self.delivered,
        )
        self._grace_ns = round(config.timing.hangup_grace * 1e9)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._touched: set[tuple[str, str]] = set()
        """Tasks that got reports since their timer was last armed (armed once per batch)."""
        self._due_timer: asyncio.TimerHandle | None = None
        self._commits: set[asyncio.Future[list[int]]] = set()
        self.alerts_raised = 0
        self.corrections = 0
        self.wakeups = 0
        """Supervision timers that fired (each drains the socket and judges one task)."""
        self.traced = 0
        if config.timing.tick is not None:
            _log.warning(
                "timing.tick is ignored: supervision wakes when the next verdict is due "
                "(timing.hangup_grace after a deadline); remove the key"
            )

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
            if wall_clock(report, time.monotonic_ns()):
                raise Refused("wall_clock_time")
            outcomes = self.supervisors.deliver(report)
            if outcomes:
                self.handle(outcomes)
            self._touched.add((report.model, report.task))
            retired = self.supervisors.retired
            while retired:
                key = retired.pop()
                self._touched.discard(key)
                if (timer := self._timers.pop(key, None)) is not None:
                    timer.cancel()
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
        self.reported[(report.resource_type, report.id)] = report.state.lower()
        if report.resource_type is ResourceType.SCENARIO:
            self.scenarios.report(report.id, report.state, report.reason, now)
        change = self._tracker.observe(
            report.resource_type, report.id, report.state, now, report.reason or "reported"
        )
        if change is None:
            return
        records = state_records(self._keys, change, self._world()[0].state_transition_tracking)
        self._submit(records)

    # outcomes to alerts -------------------------------------------------------------------------

    def handle(self, outcomes: list[Outcome]) -> None:
        now = time.time_ns()
        alerts: list[Alert] = []
        corrections: list[Correction | Resolution] = []
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
            elif isinstance(outcome, Correction):
                self.alerts.uncount(key)
                corrections.append(outcome)
            elif outcome.corrected:
                alerts += self.alerts.resolve(
                    key, now_ns=now, message=f"corrected: {outcome.corrected}"
                )
                corrections.append(outcome)
            else:
                alerts += self.alerts.resolve(key, now_ns=now, message="back within its limits")
        self.raise_alerts(alerts)
        if corrections:
            self._corrected(corrections)

    def _corrected(self, corrections: list[Correction | Resolution]) -> None:
        """A taken-back hang-up is an event of its own (beside the resolution, if any)."""
        self.corrections += len(corrections)
        records = []
        for outcome in corrections:
            message = outcome.message if isinstance(outcome, Correction) else outcome.corrected
            records.append(
                self._keys.event(
                    ResourceType.MODEL,
                    outcome.model,
                    event_type="deadline_miss_corrected",
                    severity="info",
                    message=message,
                    details={"task": outcome.task, "kind": outcome.kind},
                )
            )
        self._submit(records)

    def raise_alerts(self, alerts: list[Alert]) -> None:
        """Every alert goes to MQTT first (critical ones ahead), then becomes an event in etcd."""
        if not alerts:
            return
        self.alerts_raised += len(alerts)
        for alert in alerts:
            level = _LOG_LEVEL[alert.severity] if alert.status == "firing" else logging.INFO
            _log.log(
                level,
                "alert %s %s %s of %s %s: %s (alert %s, count %d)",
                alert.kind,
                alert.status,
                alert.severity,
                alert.resource_type,
                alert.resource_id,
                alert.message,
                alert.id,
                alert.count,
                extra=resource_fields(alert.resource_type, alert.resource_id),
            )
        if self.mqtt is not None:
            critical = [a for a in alerts if a.severity == "critical"]
            ordered = critical + [a for a in alerts if a.severity != "critical"]
            commit = self.mqtt.submit(ordered, urgent=bool(critical))
            self._commits.add(commit)
            commit.add_done_callback(self._committed)
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
        if self.alerts.pending:
            self._arm_due()

    def _committed(self, commit: asyncio.Future[list[int]]) -> None:
        self._commits.discard(commit)
        if not commit.cancelled() and (exc := commit.exception()) is not None:
            # The publisher counts and reports what the outbox refused; never lost silently.
            _log.error("alerts could not be written to the MQTT outbox: %s", exc)

    async def drain_alerts(self) -> None:
        """Wait until every alert handed to MQTT is in the outbox (stop stage)."""
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)

    # timers -------------------------------------------------------------------------------------

    def delivered(self) -> None:
        """After a batch of reports: re-arm the timers of the tasks they concerned, once each."""
        touched = self._touched
        while touched:
            self._arm(*touched.pop())

    def _arm(self, model: str, task: str) -> None:
        """(Re)arm the task's timer at its next possible verdict plus the grace."""
        loop = self._loop
        if loop is None:
            return
        key = (model, task)
        supervisor = self.supervisors.get(key)
        handle = self._timers.get(key)
        at = supervisor.next_check_ns() if supervisor is not None else None
        if at is None or supervisor is None:
            if handle is not None:
                handle.cancel()
                del self._timers[key]
            return
        when = (at + self._grace_ns + supervisor.lag_ns) / 1e9
        if handle is not None:
            if handle.when() == when:
                return
            handle.cancel()
        self._timers[key] = loop.call_at(when, self._check, key)

    def _check(self, key: tuple[str, str]) -> None:
        """A task's timer: drain the socket, then judge the task as of now - grace."""
        self._timers.pop(key, None)
        self.wakeups += 1
        now = time.monotonic_ns()
        try:
            self.ingest.drain()
            supervisor = self.supervisors.get(key)
            if supervisor is None:
                return
            outcomes = supervisor.tick(now - self._grace_ns - supervisor.lag_ns)
            if outcomes:
                self.handle(outcomes)
        except Exception:  # noqa: BLE001 - a bug must not end supervision of every other task
            _log.exception("timing check of %s/%s failed", *key)
        self._arm(*key)

    def _arm_due(self) -> None:
        """Wake when the rate limit lets the next deferred alert go."""
        loop = self._loop
        due = self.alerts.next_due_ns()
        if loop is None or due is None or self._due_timer is not None:
            return
        delay = max(0.0, (due - time.time_ns()) / 1e9)
        self._due_timer = loop.call_later(delay, self._release_due)

    def _release_due(self) -> None:
        self._due_timer = None
        self.raise_alerts(self.alerts.due(time.time_ns()))
        self._arm_due()

    def refresh(self) -> None:
        """After a reload: supervisors of models gone or changed are dropped, with their timers."""
        self.supervisors.refresh()
        for key in list(self._timers):
            if self.supervisors.get(key) is None:
                self._timers.pop(key).cancel()

    async def run(self) -> None:
        """Supervise by timers until cancelled (the task only owns their lifetime)."""
        self._loop = asyncio.get_running_loop()
        for model, task in self.supervisors.keys():  # noqa: SIM118 - not a dict
            self._arm(model, task)
        self._arm_due()
        try:
            await asyncio.Future()
        finally:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            if self._due_timer is not None:
                self._due_timer.cancel()
                self._due_timer = None
            self._loop = None

    def global_status(self) -> str:
        """The node's global safety status (the worst local status) as of now."""
        return self.supervisors.global_status(time.monotonic_ns() - self._grace_ns).name

    def judge_all(self) -> None:
        """Drain and judge every task now (tests, and readers that want a fresh verdict)."""
        now = time.monotonic_ns()
        self.ingest.drain()
        outcomes: list[Outcome] = []
        for key in list(self.supervisors.keys()):
            supervisor = self.supervisors.get(key)
            if supervisor is not None:
                outcomes += supervisor.tick(now - self._grace_ns - supervisor.lag_ns)
                self._arm(*key)
        if outcomes:
            self.handle(outcomes)

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
        lag_ns = round(2 * period_s * 1e9)
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
                            supervisor = self.supervisors.task(model, task)
                            if supervisor is not None:
                                # Read every period: judged that much later than socket reports.
                                supervisor.lag_ns = lag_ns
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
                    self.delivered()
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

    # results ----------------------------------------------------------------------------------

    def model_extras(self, model: str) -> tuple[Mapping[str, float], SafetyMetricsDoc | None]:
        """What the model's status document gets from reports: app metrics and safetyMetrics."""
        tasks = self.supervisors.of_model(model)
        now = time.monotonic_ns()
        for task in tasks:
            task.advance(now - self._grace_ns - task.lag_ns)
        inventory = self._world()[1]
        placed = inventory.models.get(model)
        safety = (
            safety_document(
                placed.asil_level if placed else "QM", tasks, time.monotonic_ns(), to_wall
            )
            if tasks
            else None
        )
        return self.apps.of_model(model), safety
