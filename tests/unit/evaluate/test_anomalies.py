"""The anomaly stage's pattern-based method and its baselines, with the real alert manager."""

from __future__ import annotations

import json
from pathlib import Path

from agent.alerts.alerts import AlertManager
from agent.config import Config
from agent.evaluate.anomalies import FILE, Anomalies
from agent.evaluate.states import StateChange
from agent.manifests import build_inventory, load_manifests
from agent.model import Alert, Record, ResourceType, Sample
from agent.store.keys import KeyMaker
from tests.support.seed import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def stage(tmp_path: Path, clock: Clock, **detection: object) -> tuple[Anomalies, list[Alert]]:
    config = Config.model_validate({"anomaly_detection": detection})
    inventory = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
    raised: list[Alert] = []
    records: list[Record] = []
    samples: list[Sample] = []
    anomalies = Anomalies(
        lambda: (config, inventory),
        AlertManager("VisionHPC", renotify_s=300, rate_limit_per_s=1000),
        raised.extend,
        keys=KeyMaker("VisionHPC"),
        submit_records=records.extend,
        submit_samples=samples.extend,
        state_dir=tmp_path,
        clock=clock,
    )
    return anomalies, raised


def change(at: int) -> StateChange:
    return StateChange(
        ResourceType.MODEL, "vision-system", "Running", "Failed", at, 10.0, "x", expected=True
    )


def test_flapping_is_a_burst_of_transitions_against_the_learned_rate(tmp_path: Path) -> None:
    clock = Clock()
    methods = [{"type": "pattern_based", "metrics": ["state_transitions"], "window_size": "1m"}]
    anomalies, raised = stage(tmp_path, clock, methods=methods, baseline={"learning_period": "1s"})
    for minute in range(60):  # an hour of one transition a minute: the normal rate
        anomalies.transition(change(minute))
        clock.now += 60
    assert not [a for a in raised if a.kind == "anomaly"]
    for _ in range(40):  # then 40 in one minute: flapping
        anomalies.transition(change(0))
    clock.now += 60
    anomalies.transition(change(0))  # closes the window
    fired = [a for a in raised if a.kind == "anomaly" and a.status == "firing"]
    assert fired, raised
    assert (fired[0].resource_id, fired[0].metric) == ("vision-system", "state_transitions")


def test_baselines_are_saved_atomically_and_read_back(tmp_path: Path) -> None:
    clock = Clock()
    methods = [{"type": "statistical", "metrics": ["memory_usage"]}]
    anomalies, _ = stage(tmp_path, clock, methods=methods)
    for i in range(100):
        anomalies.submit(
            [Sample(ResourceType.MODEL, "vision-system", "memory_usage", 50.0 + i % 3, "MB", i)]
        )
    anomalies.save()
    document = json.loads((tmp_path / FILE).read_text())
    assert document["format"] == 1
    assert list(document["series"]) == ["model/vision-system/memory_usage"]
    assert not (tmp_path / (FILE.removesuffix(".json") + ".tmp")).exists()
    again, _ = stage(tmp_path, clock, methods=methods)
    again.load()
    assert again.detectors["model/vision-system/memory_usage"].n == 100
