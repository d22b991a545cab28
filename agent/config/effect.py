"""No setting without an effect: the settings the agent accepts but does not act on yet (named at
start and by `check-config`), and the seed fields accepted only for compatibility."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from agent.config import Config


NOT_ACTED_ON: dict[str, str] = {
    "ingest.queue_size": "reports are judged as they are read; there is no queue to size",
    "resource_state_monitoring.tracking.state_transitions": (
        "transitions are recorded as state_transition_tracking says"
    ),
    "data_access": "the API's endpoints are fixed (docs/api.md); the seed's list changes nothing",
    "resource_monitoring.scenario.enabled": "scenario reports are always read",
    "resource_monitoring.package.enabled": "package documents are always written",
    "resource_monitoring.model.collection_interval": (
        "models are sampled at the container and process collectors' intervals"
    ),
    **{
        f"resource_monitoring.{kind}.metrics": "every metric is collected; the list filters nothing"
        for kind in ("scenario", "package", "model", "container", "process", "gpu")
    },
}
"""Dotted paths (a section means everything in it) that the schema accepts, for the seed's
templates and for what is coming, but that no code acts on yet. `unacted_settings` names those a
configuration turns on; the agent logs them at start and `check-config` prints them. A test
(tests/unit/test_config_readers.py) keeps this list and the code in step."""


COMPATIBILITY: dict[str, str] = {
    "data_storage.type": "only etcd; the seed's block names it",
    "data_storage.data_organization.key_structure": (
        "the key layout is fixed (ARCHITECTURE.md); the seed's block may write it out, unchanged"
    ),
    "data_storage.compaction.policy": "only revision-based compaction exists",
}
"""Seed fields accepted only so the seed's YAML blocks validate; each can take one value only."""


def _lookup(config: BaseModel, path: str) -> tuple[object, object]:
    """(value, default) of the setting at `path` in `config`."""
    node: object = config
    default: object = None
    for part in path.split("."):
        assert isinstance(node, BaseModel)  # noqa: S101 - paths are this module's own
        field = type(node).model_fields[part]
        default = field.get_default(call_default_factory=True)
        node = getattr(node, part)
    return node, default


def _in_effect(value: object, default: object) -> bool:
    if isinstance(value, BaseModel):
        enabled = getattr(value, "enabled", None)
        if isinstance(enabled, bool):
            return enabled
        return value != default
    if isinstance(value, bool):
        return value
    return value != default and value not in (None, (), [], {}, "")


def unacted_settings(config: Config) -> list[tuple[str, str]]:
    """(path, why) of each setting in `NOT_ACTED_ON` that `config` turns on or sets."""
    found = []
    for path, why in NOT_ACTED_ON.items():
        value, default = _lookup(config, path)
        if _in_effect(value, default):
            found.append((path, why))
    return found
