from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.manifests import (
    Model,
    Package,
    Scenario,
    build_inventory,
    load_manifests,
    manifest_signature,
    missing_folders,
)
from tests.support.seed import REPO, seed_blocks

EXAMPLES = REPO / "config" / "manifests"

MODEL = """\
apiVersion: piccolo.io/v1
kind: Model
metadata:
  name: {name}
  labels:
    asilLevel: "D"
spec:
  node: {node}
  scheduling:
    period: 10ms
    deadline: 8ms
    executionTime: 2ms
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(*paths: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_manifests(paths)
    return [str(p) for p in info.value.problems]


def test_seed_examples_validate_with_status_ignored(tmp_path: Path) -> None:
    blocks = seed_blocks(7)[-2:]
    for index, block in enumerate(blocks):
        write(tmp_path, f"example-{index}.yaml", block)
    found = load_manifests([tmp_path])
    kinds = {(item.manifest.kind, item.manifest.name) for item in found}
    assert kinds == {("Scenario", "adas-activation"), ("Package", "vision-processing")}
    scenario = next(i.manifest for i in found if isinstance(i.manifest, Scenario))
    assert scenario.spec.condition["vehicleSpeed"] == ">30"
    assert scenario.spec.action == "launch"
    assert not hasattr(scenario, "status")


def test_example_manifests_validate_without_warnings() -> None:
    inventory = build_inventory("VisionHPC", load_manifests([EXAMPLES]))
    assert inventory.warnings == ()
    assert set(inventory.models) == {"vision-system", "adas-planner"}
    assert set(inventory.packages) == {"vision-processing", "adas-software"}
    assert set(inventory.scenarios) == {"adas-activation"}
    vision = inventory.models["vision-system"]
    assert vision.asil_level == "B"
    assert vision.manifest is not None
    assert vision.manifest.spec.scheduling is not None
    assert vision.manifest.spec.scheduling.deadline == pytest.approx(0.008)


def test_other_node_sees_only_its_models() -> None:
    inventory = build_inventory("ChassisECU", load_manifests([EXAMPLES]))
    assert set(inventory.models) == {"sensor-fusion"}
    assert set(inventory.packages) == {"adas-software"}
    assert set(inventory.scenarios) == {"adas-activation"}
    assert build_inventory("Elsewhere", load_manifests([EXAMPLES])).models == {}


def test_package_entry_places_a_model_without_a_model_manifest(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        "apiVersion: piccolo.io/v1\nkind: Package\nmetadata: {name: pkg}\n"
        "spec:\n  models:\n    - {name: ghost, image: 'x/ghost:1', node: n1}\n",
    )
    inventory = build_inventory("n1", load_manifests([tmp_path]))
    assert inventory.models["ghost"].image == "x/ghost:1"
    assert inventory.models["ghost"].manifest is None
    assert inventory.dangling == {("Model", "ghost")}
    (warning,) = inventory.warnings
    assert str(warning).startswith(f"{tmp_path / 'p.yaml'}:1: Package/pkg: refers to Model 'ghost'")


def test_dangling_package_reference_names_both_ends(tmp_path: Path) -> None:
    write(
        tmp_path,
        "s.yaml",
        "apiVersion: piccolo.io/v1\nkind: Scenario\nmetadata: {name: s1}\n"
        "spec:\n  action: launch\n  target: {packages: [nowhere]}\n",
    )
    inventory = build_inventory("n1", load_manifests([tmp_path]))
    (warning,) = inventory.warnings
    assert "Scenario/s1: refers to Package 'nowhere', which no manifest defines" in str(warning)
    assert inventory.dangling == {("Package", "nowhere")}


def test_several_documents_per_file_and_their_lines(tmp_path: Path) -> None:
    text = MODEL.format(name="m1", node="n1") + "---\n" + MODEL.format(name="m2", node="n1")
    found = load_manifests([write(tmp_path, "m.yaml", text)])
    assert [(i.manifest.name, i.line) for i in found] == [("m1", 1), ("m2", 14)]
    assert all(isinstance(i.manifest, Model) for i in found)


def test_invalid_manifest_names_file_line_and_field(tmp_path: Path) -> None:
    text = MODEL.format(name="m1", node="n1").replace("deadline: 8ms", "deadline: 12ms")
    path = write(tmp_path, "m.yaml", text)
    (message,) = errors(path)
    assert message.startswith(f"{path}:10:5: spec.scheduling: deadline (12ms) exceeds period")


def test_resource_id_with_slash(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", MODEL.format(name="vision/system", node="n1"))
    (message,) = errors(path)
    assert message.startswith(f"{path}:4:9: metadata.name: invalid resource id 'vision/system'")


def test_unknown_kind_and_unknown_field(tmp_path: Path) -> None:
    bad_kind = write(
        tmp_path, "a.yaml", "apiVersion: piccolo.io/v1\nkind: Pod\nmetadata: {name: x}\n"
    )
    typo = write(tmp_path, "b.yaml", MODEL.format(name="m1", node="n1").replace("node:", "nod:"))
    first, second = errors(bad_kind, typo)
    assert first == f"{bad_kind}:2:7: kind: kind must be one of Scenario, Package, Model; got 'Pod'"
    assert second.startswith(f"{typo}:8:3: spec.nod: unknown key; allowed keys: containers,")


def test_wrong_api_version_and_asil(tmp_path: Path) -> None:
    text = MODEL.format(name="m1", node="n1")
    text = text.replace("piccolo.io/v1", "piccolo.io/v2").replace('"D"', '"E"')
    path = write(tmp_path, "m.yaml", text)
    first, second = errors(path)
    assert first.startswith(f"{path}:1:13: apiVersion: Input should be 'piccolo.io/v1'")
    assert f"{path}:6:5: metadata.labels" in second
    assert "asilLevel must be one of QM, A, B, C, D; got 'E'" in second


def test_duplicate_resource_names_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", MODEL.format(name="m1", node="n1"))
    write(tmp_path, "b.yaml", MODEL.format(name="m1", node="n2"))
    (message,) = errors(tmp_path)
    assert f"Model 'm1' is already defined at {first}:1" in message


def test_a_missing_file_is_an_error_a_missing_folder_is_not(tmp_path: Path) -> None:
    assert errors(tmp_path / "none.yaml") == [f"{tmp_path / 'none.yaml'}: manifest file not found"]
    assert load_manifests([tmp_path / "not-yet"]) == []
    assert missing_folders([tmp_path / "not-yet", tmp_path, tmp_path / "x.yaml"]) == [
        tmp_path / "not-yet"
    ]


def test_the_signature_moves_with_every_change_of_the_set(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    before = manifest_signature([folder])
    folder.mkdir()
    created = manifest_signature([folder])
    assert created != before
    path = write(folder, "m.yaml", MODEL.format(name="m1", node="n1"))
    added = manifest_signature([folder])
    assert added != created
    assert manifest_signature([folder]) == added  # nothing changed, nothing moves
    path.write_text(MODEL.format(name="m1", node="n2") + "\n")
    assert manifest_signature([folder]) != added
    (folder / "notes.txt").write_text("not a manifest")
    edited = manifest_signature([folder])
    path.unlink()
    assert manifest_signature([folder]) != edited


def test_status_on_input_is_ignored_even_when_nonsense(tmp_path: Path) -> None:
    text = MODEL.format(name="m1", node="n1") + "status:\n  phase: 42\n  whatever: [1, 2]\n"
    (item,) = load_manifests([write(tmp_path, "m.yaml", text)])
    assert isinstance(item.manifest, Model)


def test_package_kind_fields() -> None:
    found = load_manifests([EXAMPLES / "adas-software.yaml"])
    package = next(i.manifest for i in found if isinstance(i.manifest, Package))
    assert package.spec.pattern.type == "distributed"
    assert package.spec.typeProperties.criticality == "high"
    assert package.metadata.labels["types"] == ("time-critical",)
