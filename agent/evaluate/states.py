"""Resource states and their transitions (seed 3.1, 4.2).

The tracker keeps each resource's current state and when it entered it. A change yields a
`StateChange` with the time spent in the previous state, and whether the transition is expected:
both states must be among those `state_transition_tracking` lists for the resource type. The agent
reports states in the vocabulary of the seed's status templates (a model's phase Running,
Pending, Succeeded, Failed, Unknown; a package's Deployed, Deploying, Undeployed, Failed);
`ALIASES` maps them onto the lifecycle words of seed 4.2 (loaded, loading, error, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.model import ResourceType

ALIASES: dict[str, str] = {
    # Model phases onto the model lifecycle of seed 4.2.
    "running": "loaded",
    "pending": "loading",
    "succeeded": "unloaded",
    "unknown": "unloaded",
    "failed": "error",
    # Package deployment states are the lifecycle words already (deployed, deploying, ...).
}


@dataclass(frozen=True, slots=True)
class StateChange:
    resource_type: ResourceType
    resource_id: str
    previous: str | None
    state: str
    at_ns: int
    time_in_previous_ms: float | None
    reason: str
    expected: bool


def _lifecycle(state: str, known: frozenset[str]) -> str:
    lowered = state.lower()
    return lowered if lowered in known else ALIASES.get(lowered, lowered)


class StateTracker:
    def __init__(self, states: Mapping[ResourceType, frozenset[str]] | None = None) -> None:
        self._states = {t: frozenset(s.lower() for s in v) for t, v in (states or {}).items()}
        self._current: dict[tuple[ResourceType, str], tuple[str, int]] = {}

    def current(self, resource_type: ResourceType, resource_id: str) -> tuple[str, int] | None:
        """(state, since_ns), or None before the first observation."""
        return self._current.get((resource_type, resource_id))

    def _expected(self, resource_type: ResourceType, previous: str | None, state: str) -> bool:
        known = self._states.get(resource_type)
        if not known:
            return True
        wanted = [state] if previous is None else [previous, state]
        return all(_lifecycle(s, known) in known for s in wanted)

    def observe(
        self, resource_type: ResourceType, resource_id: str, state: str, at_ns: int, reason: str
    ) -> StateChange | None:
        """Record `state`; returns the change, or None when the state is the same as before."""
        key = (resource_type, resource_id)
        before = self._current.get(key)
        if before is not None and before[0] == state:
            return None
        self._current[key] = (state, at_ns)
        previous, since = before if before is not None else (None, None)
        return StateChange(
            resource_type,
            resource_id,
            previous,
            state,
            at_ns,
            None if since is None else max(0.0, (at_ns - since) / 1e6),
            reason,
            self._expected(resource_type, previous, state),
        )

    def forget(self, resource_type: ResourceType, resource_id: str) -> None:
        self._current.pop((resource_type, resource_id), None)
