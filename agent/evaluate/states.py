"""Resource states, their lifecycles and transitions (seed 3.1, 4.2).

Each resource type has a lifecycle (seed 4.2) and a graph of allowed transitions, `LIFECYCLES`;
`state_transition_tracking.resources[].transitions` replaces a type's graph. States are reported in
the vocabulary of the seed's status templates (7.x) or of the orchestrator; `TEMPLATE_STATES` maps
them onto the lifecycle words, in one table:

| type | lifecycle | template and reported states mapped onto it |
|---|---|---|
| model | unloaded | Succeeded, Unknown, unloaded |
| model | loading | Pending, Created, loading |
| model | loaded | Running, loaded |
| model | error | Failed, error |
| package | undeployed | Undeployed |
| package | deploying | Deploying, Initializing |
| package | deployed | Deployed, Running, Degraded (a health, not a lifecycle step) |
| package | failed | Failed, Error |
| scenario | inactive | Inactive, Idle, Waiting, Allowed |
| scenario | active | Active, Playing, Running |
| scenario | failed | Failed, Error, Denied |

The tracker keeps each resource's current state and when it entered it. A change yields a
`StateChange` with the time spent in the previous state (its transition duration) and whether the
transition is expected: an edge of the type's graph, or a change of words within one lifecycle
state. A word that maps onto no lifecycle state is unexpected. Types that
`state_transition_tracking.resources` does not list are not judged. Listeners (the evaluation
stage) are told of every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.model import ResourceType

_log = logging.getLogger(__name__)

LIFECYCLES: dict[ResourceType, dict[str, tuple[str, ...]]] = {
    # Observed by sampling, a step can be missed: a model restarted between two samples goes from
    # unloaded or error straight to loaded, a package redeployed from deployed to deployed.
    ResourceType.MODEL: {
        "unloaded": ("loading", "loaded"),
        "loading": ("loaded", "error", "unloaded"),
        "loaded": ("error", "unloaded", "loading"),
        "error": ("loading", "loaded", "unloaded"),
    },
    ResourceType.PACKAGE: {
        "undeployed": ("deploying", "deployed"),
        "deploying": ("deployed", "failed", "undeployed"),
        "deployed": ("deploying", "failed", "undeployed"),
        "failed": ("deploying", "deployed", "undeployed"),
    },
    ResourceType.SCENARIO: {
        "inactive": ("active", "failed"),
        "active": ("inactive", "failed"),
        "failed": ("inactive", "active"),
    },
}
"""Lifecycle state -> the states it may go to, per resource type (the defaults)."""

TEMPLATE_STATES: dict[ResourceType, dict[str, str]] = {
    ResourceType.MODEL: {
        "succeeded": "unloaded",
        "unknown": "unloaded",
        "pending": "loading",
        "created": "loading",
        "running": "loaded",
        "failed": "error",
    },
    ResourceType.PACKAGE: {
        "initializing": "deploying",
        "running": "deployed",
        "degraded": "deployed",
        "error": "failed",
    },
    ResourceType.SCENARIO: {
        "idle": "inactive",
        "waiting": "inactive",
        "allowed": "inactive",
        "playing": "active",
        "running": "active",
        "error": "failed",
        "denied": "failed",
    },
}
"""Template or reported state (lower case) -> lifecycle state, per resource type."""
ALIASES: dict[str, str] = TEMPLATE_STATES[ResourceType.MODEL]
"""The model's mapping (the name earlier code used)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    resource_type: ResourceType
    resource_id: str
    previous: str | None
    state: str
    at_ns: int
    time_in_previous_ms: float | None
    """The transition duration: from entering the previous state to leaving it."""
    reason: str
    expected: bool


def lifecycle_state(resource_type: ResourceType, state: str, known: frozenset[str]) -> str | None:
    """The lifecycle word `state` stands for, or None when it maps onto none of `known`."""
    lowered = state.lower()
    if lowered in known:
        return lowered
    mapped = TEMPLATE_STATES.get(resource_type, {}).get(lowered)
    return mapped if mapped in known else None


class StateTracker:
    def __init__(
        self,
        states: Mapping[ResourceType, frozenset[str]] | None = None,
        transitions: Mapping[ResourceType, Mapping[str, tuple[str, ...]]] | None = None,
    ) -> None:
        """`states`: the lifecycle words of each judged type; `transitions`: a type's graph, in
        place of its default (`LIFECYCLES`)."""
        self._states = {t: frozenset(s.lower() for s in v) for t, v in (states or {}).items()}
        self._graphs: dict[ResourceType, dict[str, frozenset[str]]] = {}
        for kind in self._states:
            graph = (transitions or {}).get(kind) or LIFECYCLES.get(kind, {})
            self._graphs[kind] = {
                a.lower(): frozenset(b.lower() for b in to) for a, to in graph.items()
            }
        self._current: dict[tuple[ResourceType, str], tuple[str, int]] = {}
        self._listeners: list[Callable[[StateChange], None]] = []
        self._forgotten: list[Callable[[ResourceType, str], None]] = []

    def subscribe(
        self,
        listener: Callable[[StateChange], None],
        forgotten: Callable[[ResourceType, str], None] | None = None,
    ) -> None:
        """`listener(change)` after every change (a failing listener is logged, never raised);
        `forgotten(type, id)` when a resource is forgotten (it left the node)."""
        self._listeners.append(listener)
        if forgotten is not None:
            self._forgotten.append(forgotten)

    def items(self) -> list[tuple[ResourceType, str, str, int]]:
        """(type, id, state, since_ns) of every resource with a state."""
        return [(t, i, state, since) for (t, i), (state, since) in self._current.items()]

    def current(self, resource_type: ResourceType, resource_id: str) -> tuple[str, int] | None:
        """(state, since_ns), or None before the first observation."""
        return self._current.get((resource_type, resource_id))

    def _expected(self, resource_type: ResourceType, previous: str | None, state: str) -> bool:
        known = self._states.get(resource_type)
        if not known:
            return True
        to = lifecycle_state(resource_type, state, known)
        if to is None:
            return False
        if previous is None:
            return True
        came = lifecycle_state(resource_type, previous, known)
        if came is None or came == to:
            return True  # back from a word already judged unexpected, or the same step
        return to in self._graphs[resource_type].get(came, frozenset())

    def words(self, resource_type: ResourceType, state: str) -> set[str]:
        """The names a state answers to in the config: its own word and its lifecycle word."""
        words = {state.lower()}
        if (word := self.lifecycle(resource_type, state)) is not None:
            words.add(word)
        return words

    def lifecycle(self, resource_type: ResourceType, state: str) -> str | None:
        """The lifecycle word of `state` for a judged type (None: unknown, or not judged)."""
        known = self._states.get(resource_type)
        return lifecycle_state(resource_type, state, known) if known else None

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
        change = StateChange(
            resource_type,
            resource_id,
            previous,
            state,
            at_ns,
            None if since is None else max(0.0, (at_ns - since) / 1e6),
            reason,
            self._expected(resource_type, previous, state),
        )
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - a judge's bug must not stop the state being kept
                _log.exception("a state-change listener failed")
        return change

    def forget(self, resource_type: ResourceType, resource_id: str) -> None:
        self._current.pop((resource_type, resource_id), None)
        for forgotten in self._forgotten:
            forgotten(resource_type, resource_id)
