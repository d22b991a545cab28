"""No setting without an effect: every field of the config schema is read by runtime code, or is
listed as not acted on yet (and then named at start), or is a fixed seed field."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from agent.config import COMPATIBILITY, NOT_ACTED_ON, Config, load_config, unacted_settings
from tests.support.seed import REPO

SOURCES = "\n".join(
    path.read_text(encoding="utf-8")
    for path in sorted((REPO / "agent").rglob("*.py"))
    if path.name != "config.py"
)


def _sections(annotation: object) -> Iterator[type[BaseModel]]:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            yield candidate
        for inner in typing.get_args(candidate):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield inner


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """The dotted path of every leaf field (items of lists of sections count as their fields)."""
    for name, info in model.model_fields.items():
        sections = list(_sections(info.annotation))
        if sections:
            for section in sections:
                yield from leaves(section, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def covered(path: str, listed: dict[str, str]) -> bool:
    return any(path == entry or path.startswith(entry + ".") for entry in listed)


def unread(model: type[BaseModel], sources: str) -> list[str]:
    """Leaf fields that are not listed and whose name no runtime code reads as an attribute."""
    missing = []
    for path in leaves(model):
        if covered(path, NOT_ACTED_ON) or covered(path, COMPATIBILITY):
            continue
        name = path.rsplit(".", 1)[-1]
        if not re.search(rf"\.{re.escape(name)}\b", sources):
            missing.append(path)
    return missing


def test_every_setting_is_read_or_listed() -> None:
    missing = unread(Config, SOURCES)
    assert not missing, f"settings no code reads (act on them or list them): {missing}"


def test_the_lists_name_real_settings_only() -> None:
    paths = set(leaves(Config))
    for entry in [*NOT_ACTED_ON, *COMPATIBILITY]:
        assert any(p == entry or p.startswith(entry + ".") for p in paths), entry


def test_a_setting_nothing_reads_is_caught() -> None:
    class Extra(BaseModel):
        flux_capacitor_gigawatts: float = 1.21

    class WithExtra(Config):
        extra: Extra = Extra()

    assert unread(WithExtra, SOURCES) == ["extra.flux_capacitor_gigawatts"]


def test_the_default_config_names_what_it_turns_on_without_effect(tmp_path: Path) -> None:
    config = load_config(REPO / "config" / "agent.yaml")
    named = dict(unacted_settings(config))
    assert "data_access" in named
    assert "api" not in named  # the read side acts on it
    assert "anomaly_detection" not in named
    assert "recovery" not in named  # off by default
    on = tmp_path / "agent.yaml"
    text = (REPO / "config" / "agent.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^recovery:\n  enabled: false", "recovery:\n  enabled: true", text)
    on.write_text(text.replace("manifests/", str(REPO / "config" / "manifests") + "/"), "utf-8")
    assert "recovery" not in dict(unacted_settings(load_config(on)))  # it is acted on
