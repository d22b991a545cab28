"""The evaluation stage between the collectors and the recorder: every sample is judged against
the performance thresholds before it is recorded, and what changed becomes alerts (MQTT, an event
in etcd, a journal line: `TimingService.raise_alerts`).

Alert kind `threshold`, one episode per (resource, metric): the id stays when it escalates from
warning to critical or falls back; resolved when the value is back below the lowest level by its
hysteresis.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.alerts.alerts import AlertKey
from agent.evaluate.thresholds import Thresholds, rules

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.alerts.alerts import AlertManager
    from agent.config import Config
    from agent.manifests import Inventory
    from agent.model import Alert, Sample

KIND = "threshold"


class Evaluation:
    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        alerts: AlertManager,
        raise_alerts: Callable[[list[Alert]], None],
        record: Callable[[Sequence[Sample]], None],
    ) -> None:
        self._world = world
        self._alerts = alerts
        self._raise = raise_alerts
        self._record = record
        self.thresholds = self._thresholds()
        self.verdicts = 0

    def _thresholds(self) -> Thresholds:
        performance = self._world()[0].performance_monitoring
        return Thresholds(rules(performance.metrics), window_s=performance.collection_interval)

    def refresh(self) -> None:
        """After a reload: the rules as configured now (firing episodes end with the old rules)."""
        self.thresholds = self._thresholds()

    def submit(self, samples: Sequence[Sample]) -> None:
        """Judge `samples`, raise what changed, and hand them on to the recorder."""
        verdicts = self.thresholds.judge(samples, time.monotonic_ns())
        if verdicts:
            self.verdicts += len(verdicts)
            now = time.time_ns()
            inventory = self._world()[1]
            alerts: list[Alert] = []
            for verdict in verdicts:
                key = AlertKey(
                    verdict.resource_type, verdict.resource_id, KIND, verdict.rule.metric
                )
                if verdict.level is None:
                    alerts += self._alerts.resolve(key, now_ns=now, message=verdict.message)
                    continue
                model = inventory.models.get(verdict.resource_id)
                alerts += self._alerts.fire(
                    key,
                    severity=verdict.level,
                    value=verdict.value,
                    threshold=verdict.rule.threshold(verdict.level),
                    asil=model.asil_level if model is not None else "QM",
                    message=verdict.message,
                    now_ns=now,
                )
            self._raise(alerts)
        self._record(samples)
