"""The alert lifecycle: one episode per condition, repeats counted, re-sent, rate-limited.

Pure and clock-injected: every call takes `now_ns`, the wall clock (`time.time_ns()`), because it
is also what the payload shows as `first_seen` and `last_seen`. Nothing here does I/O; the caller
hands what a call returns to the publisher (`agent.alerts.mqtt`).

Contract
    - An episode is the time a condition (an `AlertKey`: resource, kind, metric) fires until it is
      resolved. Its alert `id` is fixed when it starts and is the same on every message of it,
      firing and resolved; a later episode of the same condition gets a new id.
    - `fire` starts an episode and returns its firing alert (count 1). While it is firing, `fire`
      only counts (`count`, `last_seen`, value and message are updated) and returns nothing, except
      when `renotify_s` has passed since its last emission or its severity changed: then the
      firing alert goes again with the current count.
    - `resolve` ends a firing episode and returns its resolved alert: the last firing value,
      `last_seen` = the time of resolution, the given message (or the last firing message).
      Resolving a condition that is not firing returns nothing.
    - Rate limit: a token bucket of `rate_limit_per_s` tokens a second holding up to that many
      (at least 1), kept in integer nanoseconds as a GCRA (virtual scheduling), so it does not
      drift by rounding. Each non-critical alert takes a token; without one it is deferred, not
      lost: it waits in a FIFO queue that `due` releases as tokens come back (`next_due_ns` says
      when). A new non-critical alert also waits while older ones do, so alerts keep their
      order. A waiting firing alert always shows its episode's current state: it goes once, in
      its place, with the latest count.
    - Critical alerts bypass the limit and go at once, without taking a token. A waiting firing
      alert of the same episode (queued before it escalated) is its older self: it is replaced,
      so the receiver never gets the stale severity after the new one.
    - A wall clock that steps back is taken as standing still until it has caught up.
    - The queue holds at most `max_pending` alerts; past that the oldest is dropped and counted in
      `stats.dropped` (only a flood of distinct episodes beyond the rate can get there).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace

from agent.model import (
    Alert,
    AlertSeverity,
    AlertStatus,
    AlertValue,
    ResourceType,
    check_name,
    check_resource_id,
)

__all__ = [
    "Alert",
    "AlertKey",
    "AlertManager",
    "AlertSeverity",
    "AlertStats",
    "AlertStatus",
    "AlertValue",
    "alert_id",
]

MAX_PENDING = 10_000
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class AlertKey:
    """What fires once until resolved: a resource, a kind of problem, and the metric it concerns.

    The resource type and id become MQTT topic levels, so they are checked here: a type named in
    `ResourceType`, an id of the etcd key alphabet (no `/`, `+` or `#`).
    """

    resource_type: str
    resource_id: str
    kind: str
    metric: str

    def __post_init__(self) -> None:
        ResourceType(self.resource_type)
        check_resource_id(self.resource_id)
        if not self.kind:
            raise ValueError("an alert needs a kind")


def alert_id(node: str, key: AlertKey, first_seen_ns: int) -> str:
    """16 hex digits naming one episode on one node; stable for the episode, new for the next."""
    text = f"{node}:{key.resource_type}:{key.resource_id}:{key.kind}:{key.metric}:{first_seen_ns}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class AlertStats:
    fired: int = 0
    """Episodes started."""
    renotified: int = 0
    resolved: int = 0
    deferred: int = 0
    """Alerts that had to wait for the rate limit (merged ones included)."""
    dropped: int = 0
    """Deferred alerts dropped because the queue was full."""


@dataclass(slots=True)
class _Episode:
    alert: Alert
    """The current state of the episode (status firing)."""
    emitted_ns: int
    """When its firing alert last went out or was queued; the renotify interval counts from here."""


class AlertManager:
    """Dedupes, counts, re-sends and rate-limits alerts of one node; see the module docstring."""

    def __init__(
        self,
        node: str,
        *,
        renotify_s: float,
        rate_limit_per_s: float,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if renotify_s <= 0 or rate_limit_per_s <= 0 or max_pending < 1:
            raise ValueError("renotify_s, rate_limit_per_s and max_pending must be positive")
        self.node = check_name("node", node)
        self.stats = AlertStats()
        self._renotify_ns = round(renotify_s * _NS)
        self._interval_ns = max(1, round(_NS / rate_limit_per_s))
        burst = max(1, int(rate_limit_per_s))
        self._tolerance_ns = (burst - 1) * self._interval_ns
        self._tat_ns: int | None = None
        """Theoretical arrival time: when the bucket would be full again (GCRA)."""
        self._clock_ns: int | None = None
        """The latest `now_ns` seen: the limiter's clock never runs backwards."""
        self._max_pending = max_pending
        self._episodes: dict[AlertKey, _Episode] = {}
        self._pending: OrderedDict[tuple[str, AlertStatus], Alert] = OrderedDict()

    # the lifecycle ------------------------------------------------------------------------------

    def fire(
        self,
        key: AlertKey,
        *,
        severity: AlertSeverity,
        value: AlertValue,
        threshold: AlertValue,
        asil: str,
        message: str,
        now_ns: int,
    ) -> list[Alert]:
        """The condition `key` holds now; returns what may be published now (often nothing)."""
        episode = self._episodes.get(key)
        if episode is None:
            alert = Alert(
                id=alert_id(self.node, key, now_ns),
                status="firing",
                severity=severity,
                kind=key.kind,
                resource_type=key.resource_type,
                resource_id=key.resource_id,
                node=self.node,
                metric=key.metric,
                value=value,
                threshold=threshold,
                asil=asil,
                first_seen_ns=now_ns,
                last_seen_ns=now_ns,
                count=1,
                message=message,
            )
            self._episodes[key] = _Episode(alert, now_ns)
            self.stats.fired += 1
            return self._emit(alert, now_ns)
        previous = episode.alert
        episode.alert = replace(
            previous,
            severity=severity,
            value=value,
            threshold=threshold,
            asil=asil,
            message=message,
            last_seen_ns=max(previous.last_seen_ns, now_ns),
            count=previous.count + 1,
        )
        slot: tuple[str, AlertStatus] = (previous.id, "firing")
        if slot in self._pending:
            self._pending[slot] = episode.alert  # in place: it keeps its turn
        if severity == previous.severity and now_ns - episode.emitted_ns < self._renotify_ns:
            return []
        episode.emitted_ns = now_ns
        self.stats.renotified += 1
        return self._emit(episode.alert, now_ns)

    def resolve(self, key: AlertKey, *, now_ns: int, message: str = "") -> list[Alert]:
        """The condition `key` no longer holds; returns its resolved alert if it may go now."""
        episode = self._episodes.pop(key, None)
        if episode is None:
            return []
        firing = episode.alert
        alert = replace(
            firing,
            status="resolved",
            last_seen_ns=max(firing.last_seen_ns, now_ns),
            message=message or firing.message,
        )
        self.stats.resolved += 1
        return self._emit(alert, now_ns)

    def uncount(self, key: AlertKey) -> None:
        """One repeat of the firing episode `key` was taken back (a corrected hang-up); nothing is
        sent now, the next message of the episode shows the count."""
        episode = self._episodes.get(key)
        if episode is not None and episode.alert.count > 1:
            episode.alert = replace(episode.alert, count=episode.alert.count - 1)

    def is_firing(self, key: AlertKey) -> bool:
        return key in self._episodes

    def firing(self) -> list[Alert]:
        """The current state of every firing episode, oldest episode first."""
        return [episode.alert for episode in self._episodes.values()]

    # rate limit ---------------------------------------------------------------------------------

    def due(self, now_ns: int) -> list[Alert]:
        """Deferred alerts that may go now, oldest first."""
        now = self._clock(now_ns)
        released: list[Alert] = []
        while self._pending and self._take_token(now):
            released.append(self._pending.popitem(last=False)[1])
        return released

    def next_due_ns(self) -> int | None:
        """When `due` will next release something (None: nothing is deferred)."""
        if not self._pending:
            return None
        clock = self._clock_ns or 0
        return clock if self._tat_ns is None else max(clock, self._tat_ns - self._tolerance_ns)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _clock(self, now_ns: int) -> int:
        self._clock_ns = now_ns if self._clock_ns is None else max(self._clock_ns, now_ns)
        return self._clock_ns

    def _take_token(self, now: int) -> bool:
        tat = now if self._tat_ns is None else max(self._tat_ns, now)
        if tat - now > self._tolerance_ns:
            return False
        self._tat_ns = tat + self._interval_ns
        return True

    def _emit(self, alert: Alert, now_ns: int) -> list[Alert]:
        now = self._clock(now_ns)
        if alert.severity == "critical":
            # Only a firing alert can wait behind it: a resolved one ends the episode.
            self._pending.pop((alert.id, alert.status), None)
            return [alert]
        if not self._pending and self._take_token(now):
            return [alert]
        self.stats.deferred += 1
        slot = (alert.id, alert.status)
        if slot not in self._pending and len(self._pending) >= self._max_pending:
            self._pending.popitem(last=False)
            self.stats.dropped += 1
        self._pending[slot] = alert  # an existing slot keeps its place in the queue
        return []
