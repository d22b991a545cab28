"""The alert lifecycle as tables: each step is a call at a time, with what it must return."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from agent.alerts.alerts import Alert, AlertKey, AlertManager, AlertSeverity, alert_id

S = 1_000_000_000
T0 = 1_764_140_209_123_456_789  # 2025-11-26T06:56:49.123456789Z
CAM = AlertKey("model", "camera", "deadline_miss", "responseTime")
LIDAR = AlertKey("model", "lidar", "deadline_miss", "responseTime")
RADAR = AlertKey("model", "radar", "threshold", "cpu")
GPS = AlertKey("node", "ecu-1", "threshold", "memory")
KEYS = {"cam": CAM, "lidar": LIDAR, "radar": RADAR, "gps": GPS}


@dataclass(frozen=True)
class Step:
    """`op` at T0 + `at_s`: fire/resolve `key` (with `severity`), or `due`.

    `out` is what must come back, one `key:status:count[:severity]` per alert, in order.
    """

    at_s: float
    op: str
    key: str = ""
    out: tuple[str, ...] = ()
    severity: AlertSeverity = "warning"


def fire(at_s: float, key: str, *out: str, severity: AlertSeverity = "warning") -> Step:
    return Step(at_s, "fire", key, out, severity)


def resolve(at_s: float, key: str, *out: str) -> Step:
    return Step(at_s, "resolve", key, out)


def due(at_s: float, *out: str) -> Step:
    return Step(at_s, "due", "", out)


def fire_at(
    manager: AlertManager,
    key: AlertKey,
    now_ns: int,
    *,
    severity: AlertSeverity = "warning",
    value: float | str | None = 1,
    message: str = "m",
) -> list[Alert]:
    return manager.fire(
        key,
        severity=severity,
        value=value,
        threshold=50,
        asil="B",
        message=message,
        now_ns=now_ns,
    )


def describe(alert: Alert) -> str:
    key = next(name for name, k in KEYS.items() if k.resource_id == alert.resource_id)
    text = f"{key}:{alert.status}:{alert.count}"
    return text if alert.severity == "warning" else f"{text}:{alert.severity}"


def play(steps: list[Step], *, renotify_s: float = 60.0, rate: float = 100.0) -> AlertManager:
    manager = AlertManager("node-a", renotify_s=renotify_s, rate_limit_per_s=rate)
    for number, step in enumerate(steps):
        now = T0 + round(step.at_s * S)
        if step.op == "fire":
            got = manager.fire(
                KEYS[step.key],
                severity=step.severity,
                value=number,
                threshold=100,
                asil="B",
                message=f"step {number}",
                now_ns=now,
            )
        elif step.op == "resolve":
            got = manager.resolve(KEYS[step.key], now_ns=now)
        else:
            got = manager.due(now)
        assert tuple(describe(a) for a in got) == step.out, f"step {number}: {step}"
    return manager


LIFECYCLE = {
    "the first fire publishes a firing alert": [fire(0, "cam", "cam:firing:1")],
    "repeats are counted, not published": [
        fire(0, "cam", "cam:firing:1"),
        fire(1, "cam"),
        fire(2, "cam"),
        resolve(3, "cam", "cam:resolved:3"),
    ],
    "a firing alert is re-sent each renotify interval with its current count": [
        fire(0, "cam", "cam:firing:1"),
        fire(5, "cam"),
        fire(10, "cam", "cam:firing:3"),
        fire(15, "cam"),
        fire(19.9, "cam"),
        fire(20, "cam", "cam:firing:6"),
    ],
    "a severity change is published at once": [
        fire(0, "cam", "cam:firing:1"),
        fire(1, "cam", "cam:firing:2:critical", severity="critical"),
        fire(2, "cam", severity="critical"),
        fire(3, "cam", "cam:firing:4", severity="warning"),
    ],
    "resolving what does not fire publishes nothing": [
        resolve(0, "cam"),
        fire(1, "cam", "cam:firing:1"),
        resolve(2, "cam", "cam:resolved:1"),
        resolve(3, "cam"),
    ],
    "after a resolve the condition starts a new episode": [
        fire(0, "cam", "cam:firing:1"),
        fire(1, "cam"),
        resolve(2, "cam", "cam:resolved:2"),
        fire(3, "cam", "cam:firing:1"),
    ],
    "conditions are kept apart by resource, kind and metric": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(1, "cam"),
        resolve(2, "lidar", "lidar:resolved:1"),
        fire(3, "cam"),
    ],
}

RATE_LIMIT = {
    "beyond the burst, alerts wait and come out as tokens return": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar"),
        fire(0, "gps"),
        due(0.4),
        due(0.5, "radar:firing:1"),
        due(0.9),
        due(1.0, "gps:firing:1"),
        due(5.0),
    ],
    "a new alert waits behind older deferred ones even when a token is free": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar"),
        fire(0.5, "gps"),
        due(0.5, "radar:firing:1"),
        due(1.0, "gps:firing:1"),
    ],
    "a waiting firing alert goes once, in its place, with the latest count": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar"),
        fire(0, "gps"),
        fire(0.1, "radar"),
        fire(0.2, "radar"),
        due(0.5, "radar:firing:3"),
        due(1.0, "gps:firing:1"),
    ],
    "a deferred resolve keeps its firing alert before it": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar"),
        resolve(0.1, "radar"),
        due(0.5, "radar:firing:1"),
        due(1.0, "radar:resolved:1"),
    ],
    "critical alerts bypass the limit and take no token": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar", "radar:firing:1:critical", severity="critical"),
        fire(0, "gps", "gps:firing:1:critical", severity="critical"),
        resolve(0.1, "gps", "gps:resolved:1:critical"),
        resolve(0.5, "cam", "cam:resolved:1"),
    ],
    "a critical alert replaces its episode's waiting alert of the same status": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "gps"),
        fire(0, "radar"),
        fire(0.1, "radar", "radar:firing:2:critical", severity="critical"),
        resolve(0.2, "radar", "radar:resolved:2:critical"),
        due(0.5, "gps:firing:1"),
        due(1.0),
    ],
    "a waiting de-escalated alert is replaced when its episode escalates again": [
        fire(0, "cam", "cam:firing:1"),
        fire(0, "lidar", "lidar:firing:1"),
        fire(0, "radar", "radar:firing:1:critical", severity="critical"),
        fire(0.1, "radar"),
        fire(0.2, "radar", "radar:firing:3:critical", severity="critical"),
        due(0.5),
        resolve(0.6, "radar", "radar:resolved:3:critical"),
        due(5.0),
    ],
    "a wall clock stepping back adds no tokens and takes none away": [
        fire(10, "cam", "cam:firing:1"),
        fire(10, "lidar", "lidar:firing:1"),
        fire(10, "radar"),
        due(5),
        due(10.4),
        due(10.5, "radar:firing:1"),
    ],
}


@pytest.mark.parametrize("steps", LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_lifecycle(steps: list[Step]) -> None:
    play(steps, renotify_s=10.0)


@pytest.mark.parametrize("steps", RATE_LIMIT.values(), ids=RATE_LIMIT.keys())
def test_rate_limit(steps: list[Step]) -> None:
    play(steps, rate=2.0)  # 2 per second, a burst of 2


def test_an_episode_keeps_one_id_and_the_next_gets_another() -> None:
    manager = AlertManager("node-a", renotify_s=1.0, rate_limit_per_s=100.0)
    (first,) = fire_at(manager, CAM, T0)
    (again,) = fire_at(manager, CAM, T0 + 2 * S)
    (resolved,) = manager.resolve(CAM, now_ns=T0 + 3 * S)
    (second,) = fire_at(manager, CAM, T0 + 4 * S)
    assert first.id == again.id == resolved.id != second.id
    assert first.id == alert_id("node-a", CAM, T0)
    assert len(first.id) == 16
    assert int(first.id, 16) >= 0
    assert alert_id("node-b", CAM, T0) != first.id, "another node's episode has another id"
    assert manager.firing() == [second]


def test_firing_shows_the_current_state_of_each_episode() -> None:
    manager = AlertManager("node-a", renotify_s=60.0, rate_limit_per_s=100.0)
    fire_at(manager, CAM, T0, severity="critical", value=51.0, message="first")
    fire_at(manager, LIDAR, T0 + 1, severity="critical")
    fire_at(manager, CAM, T0 + S, severity="critical", value=75.5, message="worse")
    cam, lidar = manager.firing()
    assert (cam.count, cam.value, cam.message, cam.first_seen_ns, cam.last_seen_ns) == (
        2,
        75.5,
        "worse",
        T0,
        T0 + S,
    )
    assert lidar.resource_id == "lidar"
    (resolved,) = manager.resolve(CAM, now_ns=T0 + 2 * S)
    assert (resolved.message, resolved.value, resolved.last_seen_ns) == ("worse", 75.5, T0 + 2 * S)
    (resolved,) = manager.resolve(LIDAR, now_ns=T0 + 2 * S, message="recovered")
    assert resolved.message == "recovered"
    assert manager.firing() == []
    assert (manager.stats.fired, manager.stats.resolved) == (2, 2)


def test_next_due_says_when_a_deferred_alert_may_go() -> None:
    manager = AlertManager("node-a", renotify_s=60.0, rate_limit_per_s=4.0)  # burst 4
    keys = [AlertKey("model", f"m{i}", "anomaly", "cpu") for i in range(6)]
    assert manager.next_due_ns() is None
    sent = [a for key in keys for a in fire_at(manager, key, T0, severity="info")]
    assert (len(sent), manager.pending, manager.stats.deferred) == (4, 2, 2)
    assert manager.next_due_ns() == T0 + S // 4
    assert manager.due(T0 + S // 4 - 1) == []
    (released,) = manager.due(T0 + S // 4)
    assert released.resource_id == "m4"
    assert manager.next_due_ns() == T0 + S // 2
    assert [a.resource_id for a in manager.due(T0 + 10 * S)] == ["m5"]
    assert manager.next_due_ns() is None


def test_a_flood_beyond_the_queue_drops_the_oldest_deferred_and_counts_it() -> None:
    manager = AlertManager("node-a", renotify_s=60.0, rate_limit_per_s=1.0, max_pending=3)
    for i in range(6):
        fire_at(manager, AlertKey("model", f"m{i}", "threshold", "cpu"), T0)
    assert (manager.pending, manager.stats.dropped) == (3, 2)
    released = [a.resource_id for t in range(1, 5) for a in manager.due(T0 + t * S)]
    assert released == ["m3", "m4", "m5"]


def test_the_payload_carries_every_field_of_the_contract() -> None:
    manager = AlertManager("node-a", renotify_s=60.0, rate_limit_per_s=100.0)
    manager.fire(
        CAM,
        severity="critical",
        value=12.5,
        threshold=10,
        asil="C",
        message="response 12.5 ms > deadline 10 ms",
        now_ns=T0,
    )
    manager.fire(
        CAM,
        severity="critical",
        value=float("inf"),
        threshold=10,
        asil="C",
        message="hung",
        now_ns=T0 + 1500,
    )
    (alert,) = manager.resolve(CAM, now_ns=T0 + 2 * S, message="zurück unter der Frist")
    assert "zurück".encode() in alert.payload(), "UTF-8, not escaped"
    assert alert.topic("piccolo/monitoring/") == "piccolo/monitoring/alerts/node-a/model/camera"
    assert alert.payload() == alert.payload(), "deterministic"
    assert b" " not in alert.payload().split(b'"message"')[0], "compact JSON"
    assert json.loads(alert.payload()) == {
        "id": alert.id,
        "status": "resolved",
        "severity": "critical",
        "kind": "deadline_miss",
        "resource": {"type": "model", "id": "camera"},
        "node": "node-a",
        "metric": "responseTime",
        "value": "inf",
        "threshold": 10,
        "asil": "C",
        "first_seen": "2025-11-26T06:56:49.123456789Z",
        "last_seen": "2025-11-26T06:56:51.123456789Z",
        "count": 2,
        "message": "zurück unter der Frist",
    }
    assert manager.firing() == []


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "kind"),
    [
        ("vehicle", "camera", "threshold"),
        ("model", "cam/front", "threshold"),
        ("model", "cam+", "threshold"),
        ("model", "#", "threshold"),
        ("model", "", "threshold"),
        ("model", "camera", ""),
    ],
)
def test_a_key_that_would_break_the_topic_is_refused(
    resource_type: str, resource_id: str, kind: str
) -> None:
    with pytest.raises(ValueError, match=r"."):
        AlertKey(resource_type, resource_id, kind, "cpu")


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AlertManager("node-a", renotify_s=0, rate_limit_per_s=1.0)
    with pytest.raises(ValueError, match="invalid node name"):
        AlertManager("node/a", renotify_s=1, rate_limit_per_s=1.0)
