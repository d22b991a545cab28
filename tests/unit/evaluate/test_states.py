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
        (MODEL, "Failed", "Pending", True),  # error -> loading
        (MODEL, "Running", "Exploded", False),  # a word of no lifecycle state
        (MODEL, "unloaded", "error", False),  # not an edge of the graph
        (MODEL, "Exploded", "Running", True),  # back from an unexpected word
        (ResourceType.PACKAGE, "Deploying", "Deployed", True),
        (ResourceType.PACKAGE, "Deployed", "Degraded", True),  # the same lifecycle state
        (ResourceType.PACKAGE, "Undeployed", "Failed", False),
        (ResourceType.SCENARIO, "Active", "Whatever", True),  # scenarios not tracked here
    ],
)
def test_transitions_are_expected_only_along_the_lifecycle_graph(
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


def test_a_configured_graph_replaces_the_default_and_listeners_hear_every_change() -> None:
    heard: list[tuple[str | None, str, bool]] = []
    forgotten: list[str] = []
    tracker = StateTracker(
        {MODEL: frozenset({"unloaded", "loading", "loaded", "error"})},
        {MODEL: {"unloaded": ("loading",), "loading": ("loaded",), "loaded": ("unloaded",)}},
    )
    tracker.subscribe(
        lambda c: heard.append((c.previous, c.state, c.expected)),
        lambda _type, rid: forgotten.append(rid),
    )
    tracker.observe(MODEL, "m", "Pending", 0, "")
    tracker.observe(MODEL, "m", "Running", MS, "")
    tracker.observe(MODEL, "m", "Failed", 2 * MS, "")  # loaded -> error: not in this graph
    tracker.forget(MODEL, "m")
    assert heard == [
        (None, "Pending", True),
        ("Pending", "Running", True),
        ("Running", "Failed", False),
    ]
    assert forgotten == ["m"]
