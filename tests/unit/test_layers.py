"""The package's layers hold (ARCHITECTURE.md, "Layers"), and each external client has one home.

Every `import` in `agent/` is read with `ast` (those under `if TYPE_CHECKING:` too: a type that
points up a layer is a dependency all the same). A module may import from its own layer and the
layers below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.seed import REPO

AGENT = REPO / "agent"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("agent.cli", "agent.__main__", "agent.console")),
    (
        "lifecycle",
        ("agent.app", "agent.pipeline", "agent.collecting", "agent.stages", "agent.stopping"),
    ),
    (
        "stages",
        (
            "agent.collectors",
            "agent.ingest",
            "agent.alerts",
            "agent.timing",
            "agent.evaluate",
            "agent.serve",
            "agent.recovery",
            "agent.alerts.alerts",
            "agent.recorder",
            "agent.runner",
            "agent.statusview",
        ),
    ),
    (
        "store",
        (
            "agent.store",
            "agent.store.buffer",
            "agent.store.keys",
            "agent.store.pusher",
            "agent.store.election",
            "agent.store.manifest_sync",
            "agent.store.leases",
        ),
    ),
    ("adapters", ("agent.runtime", "agent.store.etcd", "agent.alerts.mqtt", "agent.systemd")),
    (
        "configuration",
        (
            "agent.config",
            "agent.manifests",
            "agent.graph",
            "agent.world",
            "agent.yamlsrc",
            "agent.validation",
        ),
    ),
    (
        "values",
        (
            "agent.model",
            "agent.metrics",
            "agent.clock",
            "agent.units",
            "agent.errors",
            "agent.backoff",
            "agent.health",
            "agent",
        ),
    ),
)
"""Top to bottom. A module belongs to the layer of its longest matching prefix."""

ONE_IMPORTER: dict[str, str | tuple[str, ...]] = {
    "aetcd": "agent.store.etcd",
    "grpc": "agent.store.etcd",
    "aiomqtt": "agent.alerts.mqtt",
    "paho": "agent.alerts.mqtt",
    "h11": ("agent.runtime.podman", "agent.runtime.httpd"),
    "pynvml": "agent.collectors.gpu",
    "systemd": "agent.systemd",
    "sqlite3": "agent.store.buffer",
}
"""External clients and the one module that may import each (h11, the HTTP/1.1 protocol: the
one client adapter and the one server adapter)."""


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from agent import model` imports the module agent.model.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


SOURCES = sorted(AGENT.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def upward_imports(paths: list[Path], root: Path = REPO) -> list[str]:
    problems = []
    for path in paths:
        source = module_name(path, root)
        own = layer_of(source)
        if own is None:
            continue
        for line, target in imports(path, root):
            if not target.startswith("agent"):
                continue
            layer = layer_of(target)
            if layer is not None and layer < own and not is_module_attribute(target, root):
                problems.append(
                    f"{path.relative_to(root)}:{line}: {source} ({LAYERS[own][0]}) imports "
                    f"{target} ({LAYERS[layer][0]})"
                )
    return problems


def is_module_attribute(target: str, root: Path = REPO) -> bool:
    """`from agent.x import name` also lists `agent.x.name`, which counts only if it is a module."""
    path = root / target.replace(".", "/")
    return not (path.with_suffix(".py").exists() or path.is_dir())


def test_no_import_runs_up_a_layer() -> None:
    problems = upward_imports(SOURCES)
    assert not problems, "\n".join(problems)


def test_each_external_client_has_one_importer() -> None:
    problems = []
    for path in SOURCES:
        source = module_name(path)
        for line, target in imports(path):
            root = target.split(".")[0]
            home = ONE_IMPORTER.get(root)
            homes = (home,) if isinstance(home, str) else home
            if homes is not None and source not in homes:
                problems.append(f"{path.relative_to(REPO)}:{line}: {source} imports {root}")
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    # The rule itself must bite: a value module that imports the store, even for a type only.
    (tmp_path / "agent" / "store").mkdir(parents=True)
    (tmp_path / "agent" / "store" / "keys.py").write_text("class KeyMaker: ...\n")
    model = tmp_path / "agent" / "model.py"
    model.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from agent.store.keys import KeyMaker\n"
        "from agent.clock import rfc3339\n"
    )
    (problem,) = upward_imports([model], tmp_path)
    assert "agent.model (values) imports agent.store.keys (store)" in problem


@pytest.mark.parametrize("module", ["agent.store.etcd", "agent.alerts.mqtt"])
def test_adapters_sit_below_the_store(module: str) -> None:
    adapters = layer_of(module)
    store = layer_of("agent.store.buffer")
    assert adapters is not None
    assert store is not None
    assert adapters > store
