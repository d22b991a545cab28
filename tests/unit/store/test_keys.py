"""Every record the agent writes is strict JSON, whatever the values it was made from."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

import pytest

from agent.evaluate.reports import AppMetrics, Scenarios
from agent.evaluate.rollup import Rollups
from agent.model import Alert, Record, ResourceType, Sample, saturating_add
from agent.store.keys import KeyMaker

HUGE = sys.float_info.max
EXTREMES = [HUGE, -HUGE, 1.7e308, 5e-324, -0.0, 0.0, 2**63 - 1, -(2**63)]


def strict(data: bytes) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


def test_saturating_add_holds_at_the_float_bound_and_is_exact_below_it() -> None:
    assert saturating_add(HUGE, HUGE) == HUGE
    assert saturating_add(-HUGE, -1.7e308) == -HUGE
    assert saturating_add(0.1, 0.2) == 0.1 + 0.2
    assert saturating_add(2.0, float("nan")) == 2.0


def test_sums_of_absurd_reports_stay_finite() -> None:
    apps = AppMetrics()
    scenarios = Scenarios()
    for _ in range(10):
        apps.record("m", "latency", 1.7e308, "ms")
        scenarios.execution("s", 1.7e308, "success", 1)
    ((_, _, mean, _),) = apps.drain()
    assert mean == pytest.approx(HUGE / 10)
    rollups = Rollups(60)
    series = (ResourceType.MODEL, "m", "latency")
    for i in range(10):
        rollups.add(Sample(ResourceType.MODEL, "m", "latency", 1.7e308, "ms", i), series)
    rollups.add(Sample(ResourceType.MODEL, "m", "latency", float("inf"), "ms", 11), series)
    (closed,) = rollups.close_expired(10**18)
    assert all(isinstance(v, int) or abs(v) <= HUGE for v in closed.stats.values())


@pytest.mark.parametrize("value", [*EXTREMES, float("inf"), float("-inf"), float("nan")])
def test_every_record_type_is_strict_json_or_refused(value: float) -> None:
    keys = KeyMaker("node-1")
    finite = math.isfinite(value)
    records = [
        keys.metric(ResourceType.MODEL, "m", name="x", value=value, unit="ms", ts_ns=1),
        keys.state(ResourceType.MODEL, "m", state="Running", since_ns=1, previous=None, reason=""),
        keys.transition(
            ResourceType.MODEL,
            "m",
            previous="a",
            state="b",
            at_ns=1,
            time_in_previous_ms=value if finite else None,
            expected=True,
        ),
    ]
    for record in records:
        strict(record.value)
    alert = Alert(
        "id", "firing", "critical", "deadline_miss", "model", "m", "node-1", "x", value, value,
        "D", 1, 2, 3, "message",
    )  # fmt: skip
    strict(alert.payload())
    documents: list[Callable[[], Record]] = [
        lambda: keys.rollup(
            ResourceType.MODEL, "m", name="x", window_start_ns=0, window_s=60,
            stats={"min": value, "max": value, "avg": value, "count": 1, "last": value},
        ),
        lambda: keys.status(ResourceType.MODEL, "m", {"metrics": {"latency": value}}),
        lambda: keys.event(
            ResourceType.MODEL, "m", event_type="x", severity="info", message="m",
            details={"value": value},
        ),
    ]  # fmt: skip
    for make in documents:
        if finite:
            strict(make().value)
        else:
            with pytest.raises(ValueError, match="JSON compliant"):
                make()
