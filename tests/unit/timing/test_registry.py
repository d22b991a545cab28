"""Task names per model are bounded: invented names cannot make supervisors without end."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import CheckpointGraph, Timing
from agent.ingest.protocol import Refused, Start
from agent.manifests import build_inventory, load_manifests
from agent.timing import registry
from agent.timing.registry import Supervisors

REPO = Path(__file__).resolve().parents[3]
INVENTORY = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
MODEL = "vision-system"


def supervisors(timing: Timing) -> Supervisors:
    return Supervisors(lambda: (INVENTORY, timing))


def test_one_task_name_more_than_the_bound_is_refused() -> None:
    sup = supervisors(Timing(max_tasks_per_model=8))
    for i in range(8):
        assert sup.task(MODEL, f"t{i}") is not None
    with pytest.raises(Refused) as refused:
        sup.task(MODEL, "one-more")
    assert refused.value.reason == "too_many_tasks"
    # Known tasks go on; another model has its own bound; unknown models stay None.
    assert sup.task(MODEL, "t3") is not None
    assert sup.task("no-such-model", "t") is None
    assert len(sup.keys()) == 8


def test_the_config_naming_more_tasks_raises_the_bound() -> None:
    graphs = tuple(
        CheckpointGraph(model=MODEL, task=f"g{i}", initial=("a",), transitions={"a": ()})
        for i in range(12)
    )
    sup = supervisors(Timing(max_tasks_per_model=4, checkpoint_graphs=graphs))
    for i in range(12):
        sup.task(MODEL, f"x{i}")
    with pytest.raises(Refused):
        sup.task(MODEL, "x12")


def test_a_silent_healthy_task_is_retired_to_make_room(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = supervisors(Timing(max_tasks_per_model=2))
    busy = sup.task(MODEL, "busy")
    assert busy is not None
    busy.start(1, 10, None)  # an activation open: never retired
    sup.task(MODEL, "quiet")
    with pytest.raises(Refused):
        sup.task(MODEL, "new")  # "quiet" reported just now: not silent for RETIRE_IDLE_S
    monkeypatch.setattr(registry, "RETIRE_IDLE_S", 0.0)
    assert sup.task(MODEL, "new") is not None
    assert sup.retired == [(MODEL, "quiet")]
    assert sorted(k[1] for k in sup.keys())  # noqa: SIM118 - not a dict == ["busy", "new"]
    assert sup.task(MODEL, "another") is not None  # "new" goes; "busy" still has a start open
    assert sup.retired == [(MODEL, "quiet"), (MODEL, "new")]
    assert sorted(k[1] for k in sup.keys())  # noqa: SIM118 - not a dict == ["another", "busy"]
    assert sup.deliver(Start(MODEL, "busy", 2, 20, None)) == []
