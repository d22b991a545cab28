from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from agent.config import load_config
from agent.evaluate.documents import SafetyMetricsDoc, Supervision, TaskSafety
from agent.evaluate.models import ModelStatus, local_packages
from agent.evaluate.states import StateTracker
from agent.manifests import build_inventory, load_manifests
from agent.model import ModelView, Record, ResourceType
from agent.store.keys import KeyMaker
from tests.support.seed import REPO

S = 1_000_000_000


def setup() -> tuple[ModelStatus, list[Record]]:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory("VisionHPC", load_manifests(config.manifests.paths))
    submitted: list[Record] = []
    tracker = StateTracker(
        {ResourceType.MODEL: frozenset({"unloaded", "loading", "loaded", "error"})}
    )
    status = ModelStatus(
        KeyMaker("VisionHPC"),
        tracker,
        lambda: (config, inventory),
        submitted.extend,
        lambda: ({}, {}),
    )
    return status, submitted


def by_key(records: list[Record], suffix: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.key.endswith(suffix)]


def test_a_phase_change_gives_state_transition_event_and_status() -> None:
    status, submitted = setup()
    view = ModelView("vision-system", "VisionHPC", "Pending", "created", "container")
    status.update([view], now_ns=10 * S)
    assert [r.key for r in submitted] == [
        "model/vision-system/state",
        "model/vision-system",
        "package/vision-processing/state",
        "package/vision-processing",
    ]
    submitted.clear()
    running = ModelView(
        "vision-system",
        "VisionHPC",
        "Running",
        "running",
        "container",
        ready=True,
        started_ns=11 * S,
        created_ns=10 * S,
    )
    status.update([running], now_ns=12 * S)
    keys = [
        r.key.rsplit("/", 1)[0] if "/transitions/" in r.key or "/events/" in r.key else r.key
        for r in submitted
    ]
    assert keys == [
        "model/vision-system/state",
        "model/vision-system/transitions",
        "model/vision-system/events",
        "model/vision-system",
        "package/vision-processing/state",
        "package/vision-processing/transitions",
        "package/vision-processing/events",
        "package/vision-processing",
    ]
    (transition,) = [
        json.loads(r.value)
        for r in submitted
        if r.key.startswith("model/vision-system/transitions/")
    ]
    assert (transition["from"], transition["to"]) == ("Pending", "Running")
    assert transition["time_in_previous_ms"] == 2000.0
    assert transition["expected"] is True
    (package,) = by_key(submitted, "package/vision-processing")
    assert package["status"]["metrics"]["deploymentStatus"] == "Deployed"
    (model,) = by_key(submitted, "model/vision-system")
    assert model["status"]["phase"] == "Running"
    assert model["status"]["metrics"]["loadTime"] == 1000.0


def test_only_packages_wholly_on_this_node_are_rolled_up_locally() -> None:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory("VisionHPC", load_manifests(config.manifests.paths))
    assert [p.name for p in local_packages(inventory)] == ["vision-processing"]


def test_the_supervisors_safety_metrics_go_into_the_document_and_rewrite_it_on_change() -> None:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory("VisionHPC", load_manifests(config.manifests.paths))
    submitted: list[Record] = []
    safety = SafetyMetricsDoc(
        asil_level="B",
        safety_monitor_status="Active",
        supervision=Supervision(
            deadline_miss_count=0,
            local_status="OK",
            tasks=(TaskSafety("detect", activations=10, status="OK"),),
        ),
    )
    current = {"safety": safety}
    status = ModelStatus(
        KeyMaker("VisionHPC"),
        StateTracker(),
        lambda: (config, inventory),
        submitted.extend,
        lambda: ({}, {}),
        extras=lambda _: ({"latency": 4.5}, current["safety"]),
    )
    running = ModelView("vision-system", "VisionHPC", "Running", "running", "container", ready=True)
    status.update([running], now_ns=10 * S)
    (model,) = by_key(submitted, "model/vision-system")
    assert model["status"]["metrics"]["safetyMetrics"] == safety.to_json()
    assert model["status"]["metrics"]["latency"] == 4.5
    status.update([running], now_ns=11 * S)  # the first write after a change is not remembered
    submitted.clear()
    status.update([running], now_ns=12 * S)  # nothing a reader acts on changed
    assert by_key(submitted, "model/vision-system") == []
    assert safety.supervision is not None
    current["safety"] = replace(
        safety, supervision=replace(safety.supervision, local_status="FAILED")
    )
    status.update([running], now_ns=13 * S)
    (model,) = by_key(submitted, "model/vision-system")
    assert model["status"]["metrics"]["safetyMetrics"]["localStatus"] == "FAILED"
