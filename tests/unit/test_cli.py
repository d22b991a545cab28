from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import EXIT_CONFIG, EXIT_OK, build_parser, main
from tests.support.seed import REPO

DEFAULT_CONFIG = REPO / "config" / "agent.yaml"


def test_check_config_accepts_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(DEFAULT_CONFIG)]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out.strip() == (
        f"{DEFAULT_CONFIG}: OK (node VisionHPC: 2 models, 2 packages, 1 scenario)"
    )
    # Only the settings the default turns on that nothing acts on yet (the seed's data_access
    # among them; no longer the API nor anomaly detection).
    lines = out.err.splitlines()
    assert all("is set but not acted on yet" in line for line in lines), lines
    assert any(f"{DEFAULT_CONFIG}: data_access is set" in line for line in lines)
    assert not any(f"{DEFAULT_CONFIG}: api is set" in line for line in lines)
    assert not any(f"{DEFAULT_CONFIG}: anomaly_detection is set" in line for line in lines)


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


def test_check_config_warns_of_what_is_valid_but_likely_not_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    manifests = REPO / "config" / "manifests"
    config.write_text(
        f"node: {{name: Gateway}}\nmanifests: {{paths: ['{manifests}', '{tmp_path / 'later'}']}}\n"
    )
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    err = capsys.readouterr().err
    assert f"manifest folder {tmp_path / 'later'} does not exist (yet)" in err
    assert (
        "node.name 'Gateway' matches no manifest: they place resources on ChassisECU, VisionHPC"
        in err
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mqtt: {broker: 'broker.local:70000'}", "the port 1-65535"),
        ("mqtt: {broker: 'http://broker.local'}", "the scheme is mqtt or mqtts"),
        ("api: {listen: 'localhost:0'}", "port must be 1-65535"),
        ("api: {listen: 'relative.sock'}", "expected host:port or a Unix socket path"),
    ],
)
def test_check_config_validates_addresses_and_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"manifests: {{paths: ['{REPO / 'config' / 'manifests'}']}}\n{text}\n")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{config}:2:" in err
    assert words in err


@pytest.mark.parametrize(
    ("duration", "valid"), [("10 ms", True), ("10ms", True), ("10 mss", False)]
)
def test_config_and_manifests_parse_durations_by_one_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *, duration: str, valid: bool
) -> None:
    def model(period: str) -> Path:
        path = tmp_path / f"m-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(
            "apiVersion: piccolo.io/v1\nkind: Model\nmetadata: {name: m1}\n"
            f"spec: {{node: VisionHPC, scheduling: {{period: '{period}'}}}}\n"
        )
        return path

    in_manifest = tmp_path / "a.yaml"
    in_manifest.write_text(
        f"node: {{name: VisionHPC}}\nmanifests: {{paths: ['{model(duration)}']}}\n"
    )
    in_config = tmp_path / "b.yaml"
    in_config.write_text(
        f"node: {{name: VisionHPC}}\nmanifests: {{paths: ['{model('10ms')}']}}\n"
        f"timing: {{hangup_grace: '{duration}'}}\n"
    )
    expected = EXIT_OK if valid else EXIT_CONFIG
    assert main(["check-config", "--config", str(in_config)]) == expected
    assert main(["check-config", "--config", str(in_manifest)]) == expected
    capsys.readouterr()


def test_check_config_counts_models_named_only_by_packages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: piccolo.io/v1\nkind: Package\nmetadata: {name: p1}\n"
        "spec: {models: [{name: ghost, node: VisionHPC}]}\n"
    )
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"node: {{name: VisionHPC}}\nmanifests: {{paths: ['{tmp_path / 'p.yaml'}']}}\n"
    )
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr()
    assert "1 model, 1 package, 0 scenarios; 1 of the models named by packages only" in out.out
    assert "refers to Model 'ghost', which no manifest defines" in out.err


def _parsers(
    parser: argparse.ArgumentParser, name: str = "piccolo-agent"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found += _parsers(child, f"{name} {sub}")
    return found


def test_every_option_of_every_command_is_described_and_exit_codes_are_listed() -> None:
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        if name != "piccolo-agent":
            assert "exit codes:" in (parser.epilog or ""), f"{name} lists no exit codes"
