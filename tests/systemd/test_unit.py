"""Checks of systemd/piccolo-agent.service.

- The unit has the settings the agent relies on (notify protocol, watchdog, directories, user).
- `systemd-analyze verify` accepts it without a single message about it (verify exits 0 even for
  unknown keys and unparsable values, so its output is checked too).
- `systemd-analyze security --offline=true` rates its exposure at MAX_EXPOSURE or lower.
- The agent's staged stop fits in TimeoutStopSec= with its margin, so systemd never SIGKILLs a
  stop that is going to plan.

systemd-analyze missing (or too old for --offline) skips the tool checks locally and fails them
under CI=true: CI must never pass without having run them.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_PATH = REPO_ROOT / "systemd" / "piccolo-agent.service"
UNIT_NAME = UNIT_PATH.name
INSTALLED_BINARY = "/usr/bin/piccolo-agent"
MAX_EXPOSURE = 2.0
# `systemd-analyze security --offline=` appeared in systemd 250.
MIN_SYSTEMD_FOR_OFFLINE_SECURITY = 250
TOOL_TIMEOUT_S = 120


# --- a tiny parser for systemd unit files ------------------------------------------------------


@dataclass
class UnitFile:
    """Every assignment of a unit file, in order; systemd allows a key more than once.

    An empty assignment (`CapabilityBoundingSet=`) is kept as an empty string: for list settings it
    resets the list, for others it restores the default, so callers decide what it means.
    """

    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return [value for name, value in self.sections.get(section, []) if name == key]

    def last(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None

    def words(self, section: str, key: str) -> list[str]:
        """Whitespace-separated items of a list setting, honouring empty-assignment resets."""
        items: list[str] = []
        for value in self.values(section, key):
            if not value:
                items.clear()
            else:
                items.extend(value.split())
        return items


def parse_unit(text: str) -> UnitFile:
    """Parse [Section] headers, Key=Value lines, # and ; comments and `\\` continuations."""
    unit = UnitFile()
    section: str | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        # Comment lines are ignored, also inside a continuation (systemd.syntax(7)).
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"line {number}: not a Key=Value assignment: {raw!r}")
        if section is None:
            raise ValueError(f"line {number}: assignment before the first [Section]: {raw!r}")
        unit.sections[section].append((key.strip(), value.strip()))
    if pending:
        raise ValueError("file ends inside a line continuation")
    return unit


_TIME_UNITS_S: dict[str, float] = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")


def parse_timespan_s(text: str) -> float:
    """Parse a systemd time span (`20s`, `20`, `1min 30s`, `500ms`) into seconds.

    A bare number is seconds, as systemd reads it for TimeoutStopSec=. `infinity` is rejected on
    purpose: a stop without a time limit defeats the check that uses this.
    """
    position = 0
    total = 0.0
    if not text.strip():
        raise ValueError("empty time span")
    while position < len(text):
        match = _TIME_PART.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot parse time span {text!r} at offset {position}")
        number, unit = match.groups()
        if unit not in _TIME_UNITS_S:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * _TIME_UNITS_S[unit]
        position = match.end()
    return total


# --- running systemd-analyze -------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(reason: str) -> None:
    """Skip locally; fail under CI, where a skipped check would look like a passed one."""
    if _in_ci():
        pytest.fail(f"CI=true but {reason}; install systemd (Debian: apt-get install systemd)")
    pytest.skip(reason)


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        _unavailable("systemd-analyze is not on PATH")
        raise AssertionError("unreachable")  # pytest.skip and pytest.fail raise
    return tool


def _systemd_version(tool: str) -> int:
    result = _run([tool, "--version"])
    match = re.match(r"systemd (\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        pytest.fail(f"cannot read the systemd version from `{tool} --version`:\n{_output(result)}")
    return int(match.group(1))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env=env,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {' '.join(result.args)}\nexit status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    )


def _systemd_quote(path: str) -> str:
    if re.search(r'[\s"\\]', path):
        escaped = path.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return path


def _copy_with_existing_binary(directory: Path) -> Path:
    """Copy the unit with ExecStart's binary replaced by one that exists on this machine.

    verify checks that ExecStart's binary is executable, and /usr/bin/piccolo-agent exists only
    where the package is installed. The running interpreter always exists; the arguments stay.
    """
    text = UNIT_PATH.read_text(encoding="utf-8")
    pattern = re.compile(rf"^ExecStart={re.escape(INSTALLED_BINARY)}(?=\s|$)", re.MULTILINE)
    replacement = f"ExecStart={_systemd_quote(sys.executable)}"
    rewritten, count = pattern.subn(lambda _match: replacement, text)
    assert count == 1, f"expected exactly one ExecStart={INSTALLED_BINARY} line, found {count}"
    copy = directory / UNIT_NAME
    copy.write_text(rewritten, encoding="utf-8")
    return copy


# --- tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> UnitFile:
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))


REQUIRED_VALUES: list[tuple[str, str, str]] = [
    ("Unit", "After", "network-online.target"),
    ("Unit", "Wants", "network-online.target"),
    ("Service", "Type", "notify"),
    ("Service", "NotifyAccess", "main"),
    ("Service", "WatchdogSec", "10s"),
    ("Service", "Restart", "on-failure"),
    ("Service", "TimeoutStopSec", "20s"),
    (
        "Service",
        "ExecStart",
        f"{INSTALLED_BINARY} run --config /etc/piccolo/agent.yaml",
    ),
    ("Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
    ("Service", "StateDirectory", "piccolo-agent"),
    ("Service", "RuntimeDirectory", "piccolo-agent"),
    ("Service", "ConfigurationDirectory", "piccolo"),
    ("Service", "User", "piccolo-agent"),
    ("Service", "Group", "piccolo-agent"),
    ("Service", "SyslogIdentifier", "piccolo-agent"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "CapabilityBoundingSet", ""),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "UMask", "0077"),
    ("Install", "WantedBy", "multi-user.target"),
]


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    REQUIRED_VALUES,
    ids=[f"{key}={expected}" for _, key, expected in REQUIRED_VALUES],
)
def test_unit_has_required_setting(unit: UnitFile, section: str, key: str, expected: str) -> None:
    values = unit.values(section, key)
    assert values, f"[{section}] {key}= is missing from {UNIT_PATH}"
    if key in {"After", "Wants", "WantedBy"}:
        assert expected in unit.words(section, key), f"[{section}] {key}= is {values}"
    else:
        assert values[-1] == expected, f"[{section}] {key}= is {values[-1]!r}, want {expected!r}"


def test_config_error_exit_does_not_restart(unit: UnitFile) -> None:
    # Exit code 78 (EX_CONFIG) is an invalid config: restarting cannot fix it.
    assert "78" in unit.words("Service", "RestartPreventExitStatus")
    restart_sec = unit.last("Service", "RestartSec")
    assert restart_sec is not None, "RestartSec= is missing: the default 100ms spins too fast"
    assert parse_timespan_s(restart_sec) >= 1.0
    assert unit.last("Unit", "StartLimitIntervalSec") is not None
    assert unit.last("Unit", "StartLimitBurst") is not None


def test_proc_stays_visible(unit: UnitFile) -> None:
    # The agent reads other users' /proc/<pid> entries and /proc/{stat,meminfo,loadavg}.
    assert unit.last("Service", "ProtectProc") in {None, "default"}
    assert unit.last("Service", "ProcSubset") in {None, "all"}


def test_systemd_analyze_verify_accepts_unit(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    copy = _copy_with_existing_binary(tmp_path)
    result = _run([tool, "--no-pager", "verify", "--man=no", str(copy)])
    assert result.returncode == 0, f"systemd-analyze verify failed:\n{_output(result)}"
    # verify only warns, exit status 0, on unknown keys and values it cannot parse; any message
    # that names our unit is a problem with it.
    messages = [line for line in (result.stdout + result.stderr).splitlines() if UNIT_NAME in line]
    assert not messages, f"systemd-analyze verify complained about the unit:\n{_output(result)}"


def test_security_exposure_is_low() -> None:
    tool = _systemd_analyze()
    version = _systemd_version(tool)
    if version < MIN_SYSTEMD_FOR_OFFLINE_SECURITY:
        _unavailable(f"systemd {version} has no `security --offline`, 250 or newer is needed")
    result = _run([tool, "--no-pager", "security", "--offline=true", str(UNIT_PATH)])
    assert result.returncode == 0, f"systemd-analyze security failed:\n{_output(result)}"
    match = re.search(
        rf"Overall exposure level for {re.escape(UNIT_NAME)}:\s*(\d+(?:\.\d+)?)", result.stdout
    )
    assert match is not None, f"no overall exposure level in the output:\n{_output(result)}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, (
        f"exposure {exposure} is above {MAX_EXPOSURE}; the settings marked ✗ are:\n"
        + "\n".join(line for line in result.stdout.splitlines() if "✗" in line)
    )


def test_stop_stages_fit_in_timeout_stop_sec(unit: UnitFile) -> None:
    from agent import app  # noqa: PLC0415 - only this test needs the agent package

    raw = unit.last("Service", "TimeoutStopSec")
    assert raw is not None, "TimeoutStopSec= is missing"
    timeout_stop_sec = parse_timespan_s(raw)
    assert app.STOP_STAGES, "agent.app.STOP_STAGES is empty"
    for stage in app.STOP_STAGES:
        assert stage.timeout_s > 0, f"stop stage {stage.name!r} has no time limit"
    stages_s = sum(stage.timeout_s for stage in app.STOP_STAGES)
    needed = stages_s + app.STOP_MARGIN_S
    breakdown = ", ".join(f"{stage.name}={stage.timeout_s}s" for stage in app.STOP_STAGES)
    assert needed < timeout_stop_sec, (
        f"stop stages ({breakdown}) sum to {stages_s}s, plus a margin of {app.STOP_MARGIN_S}s that"
        f" is {needed}s, which does not fit in TimeoutStopSec={raw} ({timeout_stop_sec}s)"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20s", 20.0),
        ("20", 20.0),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        ("500ms", 0.5),
        ("2min", 120.0),
        ("1.5s", 1.5),
    ],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "infinity", "20 parsecs", "s", "-5s"])
def test_parse_timespan_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"time span|time unit"):
        parse_timespan_s(text)


def test_parse_unit_keeps_repeated_and_empty_keys() -> None:
    parsed = parse_unit(
        "# comment\n[Service]\nSystemCallFilter=@system-service\n"
        "SystemCallFilter=~@privileged \\\n# inside a continuation\n  @resources\n; other comment\n"
        "CapabilityBoundingSet=\nAfter=a.target\nAfter=\nAfter=b.target c.target\n"
    )
    assert parsed.values("Service", "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
    ]
    assert parsed.values("Service", "CapabilityBoundingSet") == [""]
    assert parsed.words("Service", "After") == ["b.target", "c.target"]
    assert parsed.last("Install", "WantedBy") is None


def test_parse_unit_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="Key=Value"):
        parse_unit("[Service]\nthis is not an assignment\n")
    with pytest.raises(ValueError, match="before the first"):
        parse_unit("Type=notify\n")
