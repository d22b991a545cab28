from __future__ import annotations

from typing import Any

import pytest

from agent.collectors.container import phase_of
from agent.runtime.podman import ContainerInfo


def info(**fields: Any) -> ContainerInfo:
    base: dict[str, Any] = {
        "id": "c1",
        "name": "m1",
        "image": "localhost/x:1",
        "image_id": "sha",
        "labels": {},
        "state": "running",
        "pid": 10,
        "exit_code": 0,
        "oom_killed": False,
        "created_ns": 1,
        "started_ns": 2,
        "finished_ns": None,
        "restart_count": 0,
        "restart_policy": "",
        "restart_max_retries": 0,
        "cgroup_path": None,
        "memory_limit": None,
        "cpu_quota": None,
        "cpu_period": None,
        "pod": None,
        "cgroup_parent": None,
        "size_root_fs": None,
    }
    base.update(fields)
    known = set(ContainerInfo.__dataclass_fields__)
    return ContainerInfo(**{k: v for k, v in base.items() if k in known})


@pytest.mark.parametrize(
    ("fields", "phase", "reason"),
    [
        ({"state": "running"}, "Running", "running"),
        ({"state": "created"}, "Pending", "created"),
        ({"state": "paused"}, "Pending", "paused"),
        ({"state": "exited", "exit_code": 0}, "Succeeded", "completed"),
        (
            {"state": "exited", "exit_code": 0, "restart_policy": "always"},
            "Failed",
            "exited with code 0",
        ),
        ({"state": "exited", "exit_code": 137}, "Failed", "exited with code 137"),
        ({"state": "exited", "exit_code": 137, "oom_killed": True}, "Failed", "OOMKilled"),
        ({"state": "stopped", "exit_code": 143}, "Failed", "exited with code 143"),
        ({"state": "removing"}, "Unknown", "container state removing"),
    ],
)
def test_phase_of_a_container(fields: dict[str, Any], phase: str, reason: str) -> None:
    assert phase_of(info(**fields)) == (phase, reason)


def test_no_container_is_pending() -> None:
    assert phase_of(None) == ("Pending", "no container for this model")
