"""The transition judge's pure parts: ASIL of a resource, time in state, unexpected alerts."""

from __future__ import annotations

import time
from pathlib import Path

from agent.alerts.alerts import AlertManager
from agent.config import Config
from agent.evaluate.states import StateTracker
from agent.evaluate.transitions import TransitionJudge, asil_of
from agent.manifests import build_inventory, load_manifests
from agent.model import Alert, ResourceType

REPO = Path(__file__).resolve().parents[3]
INVENTORY = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
MODEL = ResourceType.MODEL
LIFECYCLE = frozenset({"unloaded", "loading", "loaded", "error"})


def test_a_package_or_scenario_takes_the_highest_asil_of_its_own_label_and_its_models() -> None:
    assert asil_of(INVENTORY, MODEL, "vision-system") == "B"
    assert asil_of(INVENTORY, ResourceType.PACKAGE, "vision-processing") == "B"
    assert asil_of(INVENTORY, ResourceType.SCENARIO, "adas-activation") in {"B", "C", "D"}
    assert asil_of(INVENTORY, MODEL, "no-such-model") == "QM"


async def test_time_in_state_and_unexpected_transitions() -> None:
    config = Config()
    raised: list[Alert] = []
    tracker = StateTracker({MODEL: LIFECYCLE})
    alerts = AlertManager("VisionHPC", renotify_s=300, rate_limit_per_s=100)
    judge = TransitionJudge(lambda: (config, INVENTORY), tracker, alerts, raised.extend)
    now = time.time_ns()
    tracker.observe(MODEL, "vision-system", "Succeeded", now - 3 * 10**9, "")
    (sample,) = await judge.collect()
    assert (sample.metric, sample.unit) == ("time_in_state", "s")
    assert 2.9 <= float(sample.value) <= 4.0
    tracker.observe(MODEL, "vision-system", "Failed", now, "crashed")  # unloaded -> error
    (alert,) = raised
    assert (alert.kind, alert.status, alert.severity) == (
        "unexpected_transition",
        "firing",
        "critical",
    )
    tracker.observe(MODEL, "vision-system", "Pending", now, "restart")  # error -> loading
    assert [a.status for a in raised] == ["firing", "resolved"]
    judge.close()
