from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import EXIT_CONFIG, EXIT_OK, main
from tests.support.seed import REPO

DEFAULT_CONFIG = REPO / "config" / "agent.yaml"


def test_check_config_accepts_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(DEFAULT_CONFIG)]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out.strip() == (
        f"{DEFAULT_CONFIG}: OK (node VisionHPC: 2 models, 2 packages, 1 scenario)"
    )
    # Only the settings the default turns on that nothing acts on yet (anomaly detection among
    # them; no longer the API).
    lines = out.err.splitlines()
    assert all("is set but not acted on yet" in line for line in lines), lines
    assert any(f"{DEFAULT_CONFIG}: anomaly_detection is set" in line for line in lines)
    assert not any(f"{DEFAULT_CONFIG}: api is set" in line for line in lines)


def test_check_config_reports_each_problem_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node:\n  name: a/b\nbuffer:\n  sink: full\n", encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {config}:2:9: node.name: invalid resource id 'a/b'")
    assert err[1].startswith(f"error: {config}:4:3: buffer.sink: unknown key; allowed keys:")
    assert err[2] == "2 problems found; nothing was started"


def test_check_config_reports_manifest_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "manifests" / "m.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "apiVersion: piccolo.io/v1\nkind: Model\nmetadata: {name: m}\nspec: {node: [x]}\n",
        encoding="utf-8",
    )
    config = tmp_path / "agent.yaml"
    config.write_text("manifests:\n  paths: [manifests]\n", encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"error: {manifest}:4:14: spec.node: Input should be a valid string" in err


def test_check_config_warns_about_dangling_references(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "s.yaml").write_text(
        "apiVersion: piccolo.io/v1\nkind: Scenario\nmetadata: {name: s}\n"
        "spec: {action: launch, target: {packages: [p1]}}\n",
        encoding="utf-8",
    )
    config = tmp_path / "agent.yaml"
    config.write_text("node: {name: n1}\nmanifests: {paths: [manifests]}\n", encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "warning: " in err
    assert "Scenario/s: refers to Package 'p1', which no manifest defines" in err


def test_run_with_invalid_config_exits_78_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("timing:\n  reference_cycle: 10 parsecs\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
            "--runtime-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 78, result.stderr
    assert f"{config}:2:20: timing.reference_cycle: invalid duration" in result.stderr
    assert not (tmp_path / "state").exists()


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
