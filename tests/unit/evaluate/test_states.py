from __future__ import annotations

import pytest

from agent.evaluate.states import StateTracker
from agent.model import ResourceType

MODEL = ResourceType.MODEL
MS = 1_000_000


@pytest.fixture
def tracker() -> StateTracker:
    return StateTracker(
        {
            MODEL: frozenset({"unloaded", "loading", "loaded", "error"}),
            ResourceType.PACKAGE: frozenset({"undeployed", "deploying", "deployed", "failed"}),
        }
    )


def test_first_observation_then_changes_with_time_in_state(tracker: StateTracker) -> None:
    first = tracker.observe(MODEL, "m", "Pending", 10 * MS, "created")
    assert first is not None
    assert (first.previous, first.state, first.time_in_previous_ms) == (None, "Pending", None)
    assert tracker.observe(MODEL, "m", "Pending", 20 * MS, "still") is None
    change = tracker.observe(MODEL, "m", "Running", 35 * MS, "started")
    assert change is not None
    assert (change.previous, change.time_in_previous_ms, change.reason) == (
        "Pending",
        25.0,
        "started",
    )
    assert tracker.current(MODEL, "m") == ("Running", 35 * MS)


@pytest.mark.parametrize(
    ("kind", "previous", "state", "expected"),
    [
        (MODEL, "Pending", "Running", True),
        (MODEL, "Running", "Failed", True),
        (MODEL, "Running", "Exploded", False),
        (ResourceType.PACKAGE, "Deploying", "Deployed", True),
        (ResourceType.PACKAGE, "Deployed", "Degraded", False),
        (ResourceType.SCENARIO, "Active", "Whatever", True),  # no states configured
    ],
)
def test_transitions_are_expected_only_between_configured_states(
    tracker: StateTracker,
    kind: ResourceType,
    previous: str,
    state: str,
    expected: bool,  # noqa: FBT001 - a parametrized value
) -> None:
    tracker.observe(kind, "r", previous, 0, "")
    change = tracker.observe(kind, "r", state, MS, "")
    assert change is not None
    assert change.expected is expected


def test_forget_starts_over(tracker: StateTracker) -> None:
    tracker.observe(MODEL, "m", "Running", 0, "")
    tracker.forget(MODEL, "m")
    change = tracker.observe(MODEL, "m", "Running", MS, "")
    assert change is not None
    assert change.previous is None
