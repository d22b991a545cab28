"""Dependency status of Scenarios and Packages (seed 2.1, 3.3, 7.1 `dependencyDetails`).

A scenario depends on its target packages, a package on its models. A dependency that no manifest
defines is `Error`: the resource cannot be whole. Live states of the dependencies refine this in the
state tracker; this module gives the part the manifests alone decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.model import ResourceType

if TYPE_CHECKING:
    from agent.manifests import Inventory

Health = Literal["OK", "Warning", "Error"]
_RANK: dict[Health, int] = {"OK": 0, "Warning": 1, "Error": 2}


@dataclass(frozen=True, slots=True)
class Dependency:
    resource_type: Literal["Package", "Model"]
    resource_name: str
    status: Health
    reason: str


@dataclass(frozen=True, slots=True)
class DependencyStatus:
    resource_type: ResourceType
    resource_id: str
    status: Health
    details: tuple[Dependency, ...]


def worst(statuses: list[Health]) -> Health:
    return max(statuses, key=_RANK.__getitem__, default="OK")


def _check(kind: Literal["Package", "Model"], name: str, inventory: Inventory) -> Dependency:
    if (kind, name) in inventory.dangling:
        return Dependency(kind, name, "Error", "no manifest defines it")
    return Dependency(kind, name, "OK", "defined")


def static_dependency_status(inventory: Inventory) -> list[DependencyStatus]:
    """One status per scenario and package of the node, from what the manifests define."""
    result: list[DependencyStatus] = []
    for scenario in inventory.scenarios.values():
        details = tuple(_check("Package", p, inventory) for p in scenario.spec.target.packages)
        status = worst([d.status for d in details])
        result.append(DependencyStatus(ResourceType.SCENARIO, scenario.name, status, details))
    for package in inventory.packages.values():
        details = tuple(_check("Model", m.name, inventory) for m in package.spec.models)
        status = worst([d.status for d in details])
        result.append(DependencyStatus(ResourceType.PACKAGE, package.name, status, details))
    return result
