"""The dependency graph: the manifests' edges, the dependency map, cycles refused at load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import DependencyMonitoring
from agent.errors import ConfigError
from agent.graph import DependencyCycle, DependencyGraph
from agent.manifests import build_inventory, load_manifests
from agent.model import ResourceType
from agent.world import load_world

REPO = Path(__file__).resolve().parents[2]
INVENTORY = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
MODEL, PACKAGE, SCENARIO = ResourceType.MODEL, ResourceType.PACKAGE, ResourceType.SCENARIO


def test_the_manifests_give_scenario_to_package_to_model() -> None:
    graph = DependencyGraph.build(INVENTORY, DependencyMonitoring())
    assert ((PACKAGE, "vision-processing"), "requires") in graph.depends_on[
        (SCENARIO, "adas-activation")
    ]
    assert graph.impacted((MODEL, "vision-system")) == [
        (PACKAGE, "vision-processing"),
        (SCENARIO, "adas-activation"),
    ]


def test_the_dependency_map_adds_edges_with_their_relation() -> None:
    monitoring = DependencyMonitoring.model_validate(
        {
            "dependency_map": [
                {
                    "resource": "vision-system",
                    "depends_on": [{"type": "model", "id": "adas-planner", "relation": "uses"}],
                }
            ]
        }
    )
    graph = DependencyGraph.build(INVENTORY, monitoring)
    assert graph.depends_on[(MODEL, "vision-system")] == (((MODEL, "adas-planner"), "uses"),)
    assert (SCENARIO, "adas-activation") in graph.impacted((MODEL, "adas-planner"))


def test_a_cycle_is_refused_and_named() -> None:
    monitoring = DependencyMonitoring.model_validate(
        {"dependency_map": [{"resource": "vision-system", "depends_on": [
            {"type": "scenario", "id": "adas-activation"}]}]}
    )  # fmt: skip
    with pytest.raises(DependencyCycle) as caught:
        DependencyGraph.build(INVENTORY, monitoring)
    cycle = caught.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {
        (MODEL, "vision-system"),
        (SCENARIO, "adas-activation"),
        (PACKAGE, "vision-processing"),
    }


def test_a_config_with_a_cycle_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""manifests:
  paths: ["{REPO / "config" / "manifests"}"]
node:
  name: VisionHPC
dependency_monitoring:
  dependency_map:
    - resource: vision-system
      depends_on:
        - type: scenario
          id: adas-activation
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_world(path)
    (problem,) = caught.value.problems
    # Located at the dependency_map edge that closes the cycle.
    assert problem.field == "dependency_monitoring.dependency_map[0].depends_on[0]"
    assert (problem.file, problem.line) == (path, 9)
    assert "dependency cycle: " in problem.message
    assert "model/vision-system" in problem.message


def test_check_config_exits_78_naming_the_cycle(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""manifests:
  paths: ["{REPO / "config" / "manifests"}"]
node:
  name: VisionHPC
dependency_monitoring:
  dependency_map:
    - resource: vision-processing
      depends_on: [{{type: scenario, id: adas-activation}}]
""",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 78
    assert f"{path}:8:" in result.stderr
    assert (
        "dependency_monitoring.dependency_map[0].depends_on[0]: dependency cycle: " in result.stderr
    )
    assert "package/vision-processing -> scenario/adas-activation" in result.stderr
