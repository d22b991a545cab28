from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.collectors.gpu import GpuCollector, load_nvml, model_of_pid, model_shares


def nvml_present() -> bool:
    try:
        load_nvml()
    except Exception:  # noqa: BLE001 - any failure means this machine has no usable NVML
        return False
    return True


async def test_without_nvml_the_collector_says_so_once_and_collects_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if nvml_present():
        pytest.skip("this machine has an NVIDIA GPU with NVML; the absent path is not testable")
    collector = GpuCollector("n1", dict)
    with caplog.at_level(logging.INFO, logger="agent.collectors.gpu"):
        assert await collector.collect() == []
        assert await collector.collect() == []
    assert collector.available is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("no GPU metrics: ")
    assert "No module named" not in messages[0]  # said in the user's words


def test_gpu_processes_are_attributed_to_models_by_their_cgroup(tmp_path: Path) -> None:
    container = "4f1c0d9e" * 8
    (tmp_path / "101").mkdir()
    (tmp_path / "101" / "cgroup").write_text(
        f"12:memory:/libpod_parent/libpod-{container}\n0::/libpod_parent/libpod-{container}\n"
    )
    (tmp_path / "102").mkdir()
    (tmp_path / "102" / "cgroup").write_text("0::/user.slice\n")
    models = {container: "vision-system"}
    assert model_of_pid(101, models, tmp_path) == "vision-system"
    assert model_of_pid(102, models, tmp_path) is None
    assert model_of_pid(103, models, tmp_path) is None
    assert model_of_pid(os.getpid(), {}, Path("/proc")) is None


def test_process_samples_are_averaged_per_process_and_summed_per_model() -> None:
    owners = {101: "vision-system", 102: "vision-system", 103: "planner"}
    samples = [(101, 40.0), (101, 60.0), (102, 10.0), (103, 5.0), (104, 99.0)]
    assert model_shares(samples, owners.get) == {"vision-system": 60.0, "planner": 5.0}
    assert model_shares([], owners.get) == {}
