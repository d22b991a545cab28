from __future__ import annotations

from pathlib import Path

from agent.evaluate.dependencies import static_dependency_status, worst
from agent.manifests import build_inventory, load_manifests
from agent.model import ResourceType
from tests.support.seed import REPO


def test_examples_are_all_ok() -> None:
    inventory = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
    statuses = {(s.resource_type, s.resource_id): s for s in static_dependency_status(inventory)}
    assert set(statuses) == {
        (ResourceType.SCENARIO, "adas-activation"),
        (ResourceType.PACKAGE, "adas-software"),
        (ResourceType.PACKAGE, "vision-processing"),
    }
    assert all(s.status == "OK" for s in statuses.values())
    scenario = statuses[(ResourceType.SCENARIO, "adas-activation")]
    assert [d.resource_name for d in scenario.details] == ["adas-software", "vision-processing"]


def test_dangling_reference_is_error_naming_the_missing_resource(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "apiVersion: piccolo.io/v1\nkind: Package\nmetadata: {name: p1}\n"
        "spec:\n  models:\n    - {name: ghost, node: n1}\n---\n"
        "apiVersion: piccolo.io/v1\nkind: Scenario\nmetadata: {name: s1}\n"
        "spec: {action: launch, target: {packages: [p1, p2]}}\n",
        encoding="utf-8",
    )
    inventory = build_inventory("n1", load_manifests([tmp_path]))
    statuses = {s.resource_id: s for s in static_dependency_status(inventory)}
    assert statuses["p1"].status == "Error"
    assert [(d.resource_name, d.status) for d in statuses["p1"].details] == [("ghost", "Error")]
    assert statuses["s1"].status == "Error"
    assert [(d.resource_name, d.status) for d in statuses["s1"].details] == [
        ("p1", "OK"),
        ("p2", "Error"),
    ]


def test_worst() -> None:
    assert worst([]) == "OK"
    assert worst(["OK", "Warning"]) == "Warning"
    assert worst(["Error", "Warning", "OK"]) == "Error"
