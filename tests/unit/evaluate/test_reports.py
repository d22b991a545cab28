"""Scenario documents: conditions, events, resource utilization and package usage."""

from __future__ import annotations

import pytest

from agent.evaluate.events import LoggedEvent
from agent.evaluate.reports import Scenarios, resource_utilization
from agent.manifests import Scenario, load_manifests
from agent.model import ModelView
from tests.support.seed import REPO

S = 1_000_000_000


@pytest.fixture
def scenario() -> Scenario:
    found = load_manifests([REPO / "config" / "manifests" / "adas-activation.yaml"])
    return next(i.manifest for i in found if isinstance(i.manifest, Scenario))


def conditions(document: object) -> dict[str, tuple[str, str]]:
    written = document.to_json()  # type: ignore[attr-defined]
    return {c["type"]: (c["status"], c["lastUpdateTime"]) for c in written["conditions"]}


def test_conditions_follow_what_was_reported_and_keep_when_they_changed(
    scenario: Scenario,
) -> None:
    scenarios = Scenarios()
    states = {"adas-software": "Deployed", "vision-processing": None}

    def document(at: int, dependency: str = "OK") -> object:
        return scenarios.document(scenario, dependency, package_state=states.get, now_ns=at * S)

    first = conditions(document(1))
    assert first == {
        "ConditionsMet": ("Unknown", "1970-01-01T00:00:01.000000000Z"),
        "PolicyAllowed": ("Unknown", "1970-01-01T00:00:01.000000000Z"),
        "PackagesReady": ("Unknown", "1970-01-01T00:00:01.000000000Z"),
        "DependenciesOK": ("True", "1970-01-01T00:00:01.000000000Z"),
    }
    scenarios.report(scenario.name, "allowed", "policy", 2 * S)
    states["vision-processing"] = "Deploying"
    second = conditions(document(2))
    assert second["PolicyAllowed"] == ("True", "1970-01-01T00:00:02.000000000Z")
    assert second["ConditionsMet"] == ("False", "1970-01-01T00:00:02.000000000Z")
    assert second["PackagesReady"] == ("False", "1970-01-01T00:00:02.000000000Z")
    scenarios.report(scenario.name, "playing", "conditions met", 3 * S)
    states["vision-processing"] = "Deployed"
    third = conditions(document(3, "Warning"))
    assert third["ConditionsMet"] == ("True", "1970-01-01T00:00:03.000000000Z")
    assert third["PackagesReady"] == ("True", "1970-01-01T00:00:03.000000000Z")
    assert third["DependenciesOK"] == ("False", "1970-01-01T00:00:03.000000000Z")
    # PolicyAllowed did not change: it keeps the time it became True.
    assert third["PolicyAllowed"] == ("True", "1970-01-01T00:00:02.000000000Z")


def test_events_and_utilization_are_written_into_the_metrics(scenario: Scenario) -> None:
    events = (
        LoggedEvent("dependency_impact", "2026-12-06T10:00:02Z", "vision-system failed"),
        LoggedEvent("state_changed", "2026-12-06T10:00:01Z", "inactive -> active"),
    )
    document = Scenarios().document(scenario, "OK", utilization=42.5, events=(7, events))
    metrics = document.to_json()["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["totalEvents"] == 7
    assert metrics["lastEventTime"] == "2026-12-06T10:00:02Z"
    assert metrics["recentEvents"] == [
        {
            "type": "dependency_impact",
            "time": "2026-12-06T10:00:02Z",
            "details": "vision-system failed",
        },
        {"type": "state_changed", "time": "2026-12-06T10:00:01Z", "details": "inactive -> active"},
    ]
    assert metrics["resourceUtilization"] == 42.5
    empty = Scenarios().document(scenario, "OK").to_json()["metrics"]
    assert isinstance(empty, dict)
    assert (empty["totalEvents"], empty["lastEventTime"], empty["recentEvents"]) == (0, None, [])


def view(name: str, **measured: float) -> ModelView:
    return ModelView(name, "n", "Running", "running", "container", **measured)  # type: ignore[arg-type]


def test_resource_utilization_is_the_tighter_of_memory_and_cpu_against_limits() -> None:
    views = [
        view("a", memory_mb=50.0, memory_limit_mb=100.0, cpu_percent=90.0, cpu_limit_cores=1.0),
        view("b", memory_mb=30.0, memory_limit_mb=100.0),
        view("c", memory_mb=500.0),  # no limit: not counted
    ]
    assert resource_utilization(views) == 90.0  # cpu 0.9 of 1 core; memory 80 of 200 MB
    assert resource_utilization(views[1:]) == 30.0
    assert resource_utilization(views[2:]) is None
    assert resource_utilization([]) is None


def test_usage_counts_reported_launches_and_active_scenarios(scenario: Scenario) -> None:
    scenarios = Scenarios()
    assert scenarios.usage("adas-software", [scenario]) == (0, 0)
    scenarios.execution(scenario.name, 100, "success", 1)
    scenarios.execution(scenario.name, 120, "failure", 2)
    scenarios.report(scenario.name, "playing", "", 3)
    assert scenarios.usage("adas-software", [scenario]) == (2, 1)
    assert scenarios.usage("other-package", [scenario]) == (0, 0)
    notify = scenario.model_copy(
        update={"spec": scenario.spec.model_copy(update={"action": "notify"})}
    )
    assert scenarios.usage("adas-software", [notify]) == (0, 1)
