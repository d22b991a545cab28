"""Scenario, Package and Model manifests (seed section 7, `apiVersion: piccolo.io/v1`).

Users write `spec`; `status` belongs to the system and is ignored on input. A file may hold several
documents. A reference to a resource that no manifest defines is not fatal (it may be defined
elsewhere): it is reported as a warning naming both ends, and at runtime as dependency status Error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigError, Problem
from agent.model import ResourceId
from agent.units import PositiveDuration
from agent.validation import validate
from agent.yamlsrc import Document, iter_documents

API_VERSION = "piccolo.io/v1"
ASIL_LEVELS = ("QM", "A", "B", "C", "D")
Kind = Literal["Scenario", "Package", "Model"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Spec):
    name: ResourceId
    namespace: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _asil(cls, labels: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
        level = labels.get("asilLevel")
        if level is not None and level not in ASIL_LEVELS:
            raise ValueError(f"asilLevel must be one of {', '.join(ASIL_LEVELS)}; got {level!r}")
        return labels

    @property
    def asil_level(self) -> str:
        level = self.labels.get("asilLevel", "QM")
        return level if isinstance(level, str) else "QM"


# The Scenario kind, seed 7.1


class ScenarioTarget(_Spec):
    packages: tuple[ResourceId, ...] = ()


class ScenarioSpec(_Spec):
    condition: dict[str, str | int | float | bool] = Field(default_factory=dict)
    action: Literal["launch", "update", "modify", "notify", "rollback", "pause", "resume"]
    target: ScenarioTarget = ScenarioTarget()


# The Package kind, seed 7.2


class Pattern(_Spec):
    type: Literal["selector", "plain", "distributed"] = "plain"
    nodeSelector: dict[str, str] = Field(default_factory=dict)  # noqa: N815 - the manifest's name


class TypeProperties(_Spec):
    category: str | None = None
    criticality: Literal["high", "medium", "low"] | None = None
    lifecycle: str | None = None


class PackageModel(_Spec):
    name: ResourceId
    image: str | None = None
    node: ResourceId | None = None


class PackageSpec(_Spec):
    pattern: Pattern = Pattern()
    packageType: str | None = None  # noqa: N815
    typeProperties: TypeProperties = TypeProperties()  # noqa: N815
    models: tuple[PackageModel, ...] = ()

    @field_validator("models")
    @classmethod
    def _unique(cls, models: tuple[PackageModel, ...]) -> tuple[PackageModel, ...]:
        names = [m.name for m in models]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"model listed more than once: {', '.join(dupes)}")
        return models


# The Model kind, seed 7.3


class Limits(_Spec):
    cpu: float | str | None = None
    memory: str | None = None
    gpu: int | None = None


class Resources(_Spec):
    limits: Limits = Limits()
    requests: Limits = Limits()


class Container(_Spec):
    name: str
    image: str | None = None
    resources: Resources = Resources()


class Scheduling(_Spec):
    timeCritical: bool = False  # noqa: N815
    priority: int | None = None
    period: PositiveDuration | None = None
    deadline: PositiveDuration | None = None
    executionTime: PositiveDuration | None = None  # noqa: N815
    cpuAffinity: tuple[int, ...] = ()  # noqa: N815
    isolationLevel: str | None = None  # noqa: N815
    criticality: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        period, deadline, budget = self.period, self.deadline, self.executionTime
        if deadline is not None and period is not None and deadline > period:
            raise ValueError(f"deadline ({deadline * 1e3:g}ms) exceeds period ({period * 1e3:g}ms)")
        bound = deadline if deadline is not None else period
        if budget is not None and bound is not None and budget > bound:
            raise ValueError(
                f"executionTime ({budget * 1e3:g}ms) exceeds the deadline ({bound * 1e3:g}ms)"
            )
        return self


class DeviceAccess(_Spec):
    manager: str
    devices: tuple[str, ...] = ()


class Volume(_Spec):
    name: str
    mountPath: str  # noqa: N815
    volume: str | None = None


class Network(_Spec):
    name: str


class ModelSpec(_Spec):
    image: str | None = None
    node: ResourceId | None = None
    hostNetwork: bool = False  # noqa: N815
    containers: tuple[Container, ...] = ()
    scheduling: Scheduling | None = None
    deviceAccess: tuple[DeviceAccess, ...] = ()  # noqa: N815
    volumes: tuple[Volume, ...] = ()
    networks: tuple[Network, ...] = ()


class _Manifest(_Spec):
    apiVersion: Literal["piccolo.io/v1"]  # noqa: N815
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


class Scenario(_Manifest):
    kind: Literal["Scenario"]
    spec: ScenarioSpec


class Package(_Manifest):
    kind: Literal["Package"]
    spec: PackageSpec = PackageSpec()


class Model(_Manifest):
    kind: Literal["Model"]
    spec: ModelSpec = ModelSpec()


Manifest = Scenario | Package | Model
_BY_KIND: dict[str, type[Scenario | Package | Model]] = {
    "Scenario": Scenario,
    "Package": Package,
    "Model": Model,
}


@dataclass(frozen=True, slots=True)
class Located:
    """A manifest and where it was defined."""

    manifest: Manifest
    file: Path
    line: int


def _parse(doc: Document) -> Manifest:
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError(
            [doc.problem((), "a manifest is a mapping with apiVersion, kind, metadata, spec")]
        )
    kind = data.get("kind")
    if kind not in _BY_KIND:
        where = ("kind",) if "kind" in data else ()
        raise ConfigError(
            [doc.problem(where, f"kind must be one of Scenario, Package, Model; got {kind!r}")]
        )
    # `status` is the system's: whatever a user wrote there is ignored, not validated.
    body = {k: v for k, v in data.items() if k != "status"}
    return validate(_BY_KIND[kind], Document(doc.file, body, doc.start, doc.values, doc.keys))


_YAML = frozenset({".yaml", ".yml"})


def missing_folders(paths: Iterable[Path]) -> list[Path]:
    """The folders named that do not exist (yet): no manifests come from them, a warning."""
    return [p for p in paths if not p.exists() and p.suffix not in _YAML]


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and the *.yaml/*.yml files of the folders named, in name order.

    A folder that does not exist yet gives none (`missing_folders` names it: the default
    /etc/piccolo/manifests of a fresh node); a missing file is an error."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in _YAML and p.is_file()))
        elif path.exists():
            files.append(path)
        elif path.suffix in _YAML:
            problems.append(Problem(path, None, None, "", "manifest file not found"))
    if problems:
        raise ConfigError(problems)
    return files


def manifest_signature(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """What changes when a manifest is added, removed or edited: (path, mtime ns, size) of each
    path named and each YAML file of the folders among them (a few stat calls)."""
    found: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            found.append((str(path), -1, -1))
            continue
        found.append((str(path), info.st_mtime_ns, info.st_size))
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.suffix in _YAML:
                    with contextlib.suppress(OSError):
                        child_info = child.stat()
                        found.append((str(child), child_info.st_mtime_ns, child_info.st_size))
    return tuple(found)


def load_manifests(paths: Iterable[Path], sources: Iterable[tuple[str, str]] = ()) -> list[Located]:
    """Every manifest in `paths`, then in `sources` (name, YAML text) such as etcd keys.

    All problems of all files are collected into one `ConfigError`.
    """
    found: list[Located] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], Located] = {}
    inputs: list[tuple[Path, str | None]] = [(file, None) for file in manifest_files(paths)]
    inputs += [(Path(name), text) for name, text in sources]
    for file, text in inputs:
        try:
            for doc in iter_documents(file, text):
                if doc.data is None:
                    continue  # an empty document, such as after a trailing `---`
                try:
                    manifest = _parse(doc)
                except ConfigError as exc:
                    problems.extend(exc.problems)
                    continue
                located = Located(manifest, file, doc.start[0])
                key = (manifest.kind, manifest.name)
                if (first := seen.get(key)) is not None:
                    problems.append(
                        doc.problem(
                            ("metadata", "name"),
                            f"{manifest.kind} {manifest.name!r} is already defined at "
                            f"{first.file}:{first.line}",
                        )
                    )
                    continue
                seen[key] = located
                found.append(located)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return found


def nodes_of(manifest: Manifest) -> set[str]:
    """The nodes a manifest places resources on (a Model's node, a Package's models' nodes)."""
    if isinstance(manifest, Model):
        return {manifest.spec.node} if manifest.spec.node else set()
    if isinstance(manifest, Package):
        return {m.node for m in manifest.spec.models if m.node}
    return set()


@dataclass(frozen=True, slots=True)
class PlacedModel:
    """A model that runs on this node: its manifest where one exists, the packages listing it."""

    name: str
    image: str | None
    manifest: Model | None
    packages: tuple[str, ...]

    @property
    def asil_level(self) -> str:
        return self.manifest.metadata.asil_level if self.manifest else "QM"


@dataclass(frozen=True, slots=True)
class Inventory:
    """The resources this node hosts, and the warnings about references that lead nowhere."""

    node: str
    models: Mapping[str, PlacedModel]
    packages: Mapping[str, Package]
    scenarios: Mapping[str, Scenario]
    warnings: tuple[Problem, ...]
    dangling: frozenset[tuple[str, str]]
    """(kind, name) of referenced resources that no manifest defines."""

    def summary(self) -> str:
        def count(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        return ", ".join(
            (
                count(len(self.models), "model"),
                count(len(self.packages), "package"),
                count(len(self.scenarios), "scenario"),
            )
        )


def _check_references(
    origin: Mapping[tuple[str, str], Located],
    models: Mapping[str, Model],
    packages: Mapping[str, Package],
    scenarios: Mapping[str, Scenario],
) -> tuple[list[Problem], set[tuple[str, str]]]:
    """Warnings for references no manifest resolves or that disagree, and the dangling targets."""
    warnings: list[Problem] = []
    dangling: set[tuple[str, str]] = set()

    def warn(source: Manifest, message: str) -> None:
        item = origin[(source.kind, source.name)]
        warnings.append(
            Problem(item.file, item.line, None, f"{source.kind}/{source.name}", message)
        )

    for package in packages.values():
        for entry in package.spec.models:
            model = models.get(entry.name)
            if model is None:
                dangling.add(("Model", entry.name))
                warn(package, f"refers to Model {entry.name!r}, which no manifest defines")
            elif entry.node and model.spec.node and entry.node != model.spec.node:
                warn(
                    package,
                    f"places model {entry.name!r} on node {entry.node!r}, but the Model manifest "
                    f"says {model.spec.node!r}",
                )
    for scenario in scenarios.values():
        for name in scenario.spec.target.packages:
            if name not in packages:
                dangling.add(("Package", name))
                warn(scenario, f"refers to Package {name!r}, which no manifest defines")
    return warnings, dangling


def _placement(
    node: str, models: Mapping[str, Model], packages: Mapping[str, Package]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Models on `node` with the packages listing them, and images known from package entries."""
    placed: dict[str, list[str]] = {n: [] for n, m in models.items() if m.spec.node == node}
    images: dict[str, str] = {}
    for package in packages.values():
        for entry in package.spec.models:
            if entry.node == node or entry.name in placed:
                placed.setdefault(entry.name, []).append(package.name)
            if entry.image:
                images.setdefault(entry.name, entry.image)
    return placed, images


def build_inventory(node: str, located: Iterable[Located]) -> Inventory:
    """This node's models (by `spec.node` or a package's `models[].node`), packages, scenarios."""
    models: dict[str, Model] = {}
    packages: dict[str, Package] = {}
    scenarios: dict[str, Scenario] = {}
    origin: dict[tuple[str, str], Located] = {}
    for item in located:
        manifest = item.manifest
        origin[(manifest.kind, manifest.name)] = item
        if isinstance(manifest, Model):
            models[manifest.name] = manifest
        elif isinstance(manifest, Package):
            packages[manifest.name] = manifest
        else:
            scenarios[manifest.name] = manifest
    warnings, dangling = _check_references(origin, models, packages, scenarios)
    placed, images = _placement(node, models, packages)

    node_models = {
        name: PlacedModel(
            name=name,
            image=(models[name].spec.image if name in models else None) or images.get(name),
            manifest=models.get(name),
            packages=tuple(sorted(pnames)),
        )
        for name, pnames in sorted(placed.items())
    }
    on_node = {p for m in node_models.values() for p in m.packages}
    return Inventory(
        node=node,
        models=node_models,
        packages={p: packages[p] for p in sorted(on_node)},
        scenarios={
            name: s
            for name, s in sorted(scenarios.items())
            if any(p in on_node for p in s.spec.target.packages)
        },
        warnings=tuple(warnings),
        dangling=frozenset(dangling),
    )
