"""Judging state changes (seed 3.1 `resource_state_monitoring.alerting`): unexpected transitions
and stuck states, as alerts.

- `unexpected_transition`: a change the lifecycle graph does not allow (agent.evaluate.states);
  warning, critical for a resource of ASIL A-D (a package or scenario takes the highest ASIL of
  its models). Resolved by the resource's next expected transition.
- `stuck_state`: a resource that stays in a state named in `stuck_states.thresholds` (its reported
  word or its lifecycle word, e.g. `loading: 30s`) longer than the threshold. A timer armed when it
  enters the state fires at the threshold, not at the next sample; leaving the state resolves it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from agent.alerts.alerts import AlertKey
from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.alerts.alerts import AlertManager
    from agent.config import Config
    from agent.evaluate.states import StateChange, StateTracker
    from agent.manifests import Inventory
    from agent.model import Alert, AlertSeverity

UNEXPECTED = "unexpected_transition"
STUCK = "stuck_state"
_ASIL_RANK = {"QM": 0, "A": 1, "B": 2, "C": 3, "D": 4}


def asil_of(inventory: Inventory, resource_type: ResourceType, resource_id: str) -> str:
    """A model's ASIL; a package's or scenario's the highest of its own label and its models'
    ("QM" if none)."""
    if resource_type is ResourceType.MODEL:
        model = inventory.models.get(resource_id)
        return model.asil_level if model is not None else "QM"
    names: list[str] = []
    levels: list[str] = []
    if resource_type is ResourceType.PACKAGE and (pkg := inventory.packages.get(resource_id)):
        names = [m.name for m in pkg.spec.models]
        levels.append(pkg.metadata.asil_level)
    elif resource_type is ResourceType.SCENARIO and (sc := inventory.scenarios.get(resource_id)):
        levels.append(sc.metadata.asil_level)
        for package in sc.spec.target.packages:
            if (pkg := inventory.packages.get(package)) is not None:
                names += [m.name for m in pkg.spec.models]
    levels += [asil_of(inventory, ResourceType.MODEL, name) for name in names]
    return max(levels, key=lambda a: _ASIL_RANK.get(a, 0), default="QM")


class TransitionJudge:
    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        tracker: StateTracker,
        alerts: AlertManager,
        raise_alerts: Callable[[list[Alert]], None],
    ) -> None:
        self._world = world
        self._tracker = tracker
        self._alerts = alerts
        self._raise = raise_alerts
        self._timers: dict[tuple[ResourceType, str], asyncio.TimerHandle] = {}
        self.stuck_fired = 0
        self.lateness_ms: deque[float] = deque(maxlen=1000)
        """How late each stuck_state fired after its threshold (the last 1,000)."""
        tracker.subscribe(self.changed, self.forget)

    def _severity(self, resource_type: ResourceType, resource_id: str) -> AlertSeverity:
        asil = asil_of(self._world()[1], resource_type, resource_id)
        return "critical" if asil in {"A", "B", "C", "D"} else "warning"

    def changed(self, change: StateChange) -> None:
        config = self._world()[0].resource_state_monitoring
        now = time.time_ns()
        alerts: list[Alert] = []
        rtype, rid = change.resource_type, change.resource_id
        if change.previous is not None and config.enabled:
            key = AlertKey(rtype, rid, UNEXPECTED, "state")
            if not change.expected and config.alerting.unexpected_transitions:
                alerts += self._alerts.fire(
                    key,
                    severity=self._severity(rtype, rid),
                    value=change.state,
                    threshold=change.previous,
                    asil=asil_of(self._world()[1], rtype, rid),
                    message=(
                        f"{change.previous} -> {change.state} is not an allowed transition of "
                        f"a {rtype.value} ({change.reason})"
                    ),
                    now_ns=now,
                )
            elif change.expected:
                alerts += self._alerts.resolve(
                    key, now_ns=now, message=f"{change.previous} -> {change.state}: allowed"
                )
        alerts += self._arm(change, now)
        self._raise(alerts)

    def _threshold_s(self, change: StateChange) -> float | None:
        config = self._world()[0].resource_state_monitoring
        stuck = config.alerting.stuck_states
        if not (config.enabled and stuck.enabled and stuck.thresholds):
            return None
        words = self._tracker.words(change.resource_type, change.state)
        limits = [s for name, s in stuck.thresholds.items() if name.lower() in words]
        return min(limits) if limits else None

    def _arm(self, change: StateChange, now: int) -> list[Alert]:
        """Leaving a state resolves its stuck alert; entering one with a threshold arms a timer."""
        key = (change.resource_type, change.resource_id)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        alerts = self._alerts.resolve(
            AlertKey(change.resource_type, change.resource_id, STUCK, "state"),
            now_ns=now,
            message=f"left {change.previous} for {change.state}",
        )
        limit = self._threshold_s(change)
        if limit is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # judged outside the agent's loop (a test of another stage)
                return alerts
            due = time.monotonic() + limit
            self._timers[key] = loop.call_at(loop.time() + limit, self._stuck, change, limit, due)
        return alerts

    def _stuck(self, change: StateChange, limit: float, due: float) -> None:
        self._timers.pop((change.resource_type, change.resource_id), None)
        late_ms = (time.monotonic() - due) * 1000
        self.lateness_ms.append(late_ms)
        self.stuck_fired += 1
        rtype, rid = change.resource_type, change.resource_id
        self._raise(
            self._alerts.fire(
                AlertKey(rtype, rid, STUCK, "state"),
                severity=self._severity(rtype, rid),
                value=change.state,
                threshold=limit,
                asil=asil_of(self._world()[1], rtype, rid),
                message=f"{rtype.value} {rid} has been {change.state} for more than {limit:g}s",
                now_ns=time.time_ns(),
            )
        )

    async def collect(self) -> list[Sample]:
        """`time_in_state` (seconds) of every resource with a state, when
        `resource_state_monitoring.tracking.time_in_state` is on (a collector of the pipeline)."""
        config = self._world()[0].resource_state_monitoring
        if not (config.enabled and config.tracking.time_in_state):
            return []
        now = time.time_ns()
        return [
            Sample(kind, rid, "time_in_state", round(max(0, now - since) / 1e9, 3), "s", now)
            for kind, rid, _state, since in self._tracker.items()
        ]

    def forget(self, resource_type: ResourceType, resource_id: str) -> None:
        if (timer := self._timers.pop((resource_type, resource_id), None)) is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
