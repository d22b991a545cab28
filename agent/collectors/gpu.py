"""NVIDIA GPUs through NVML (`nvidia-ml-py`, extra `gpu`): the only module that imports it.

Per device: utilization and memory as node metrics (`gpu0_usage`, `gpu0_memory_used`, ...). Per
model: the GPU memory of the processes running in the model's container, and their SM
utilization (`nvmlDeviceGetProcessUtilization`, the samples since the previous collection,
averaged per process and summed per model: % of one GPU, so it can pass 100 with several), found
through each GPU process's cgroup (NVML gives pids as seen in the agent's pid namespace). A driver
that keeps no process samples gives memory only. `per_model` keeps the latest of both for the
models' status documents (gpuUsage, gpuMemoryUsage).

Where NVML cannot be loaded (no package, no driver, no device), the collector says so once and
returns nothing from then on: a node without a GPU is not an error.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

_log = logging.getLogger(__name__)
MB = 2**20


def load_nvml() -> ModuleType:
    """pynvml, initialised; raises ImportError or the library's error when there is no GPU."""
    nvml = importlib.import_module("pynvml")
    nvml.nvmlInit()
    return nvml


def model_shares(
    samples: Iterable[tuple[int, float]], model_of: Callable[[int], str | None]
) -> dict[str, float]:
    """Model -> summed mean utilization of its processes, from (pid, utilization) samples."""
    per_pid: dict[int, list[float]] = {}
    for pid, value in samples:
        per_pid.setdefault(pid, []).append(value)
    shares: dict[str, float] = {}
    for pid, values in per_pid.items():
        model = model_of(pid)
        if model is not None:
            shares[model] = shares.get(model, 0.0) + sum(values) / len(values)
    return shares


def model_of_pid(pid: int, containers: Mapping[str, str], proc: Path = Path("/proc")) -> str | None:
    """The model whose container (id -> model) holds `pid`, from the pid's cgroup paths."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for container_id, model in containers.items():
        if container_id and container_id in text:
            return model
    return None


class GpuCollector:
    def __init__(
        self,
        node: str,
        containers: Callable[[], Mapping[str, str]],
        loader: Callable[[], ModuleType] = load_nvml,
    ) -> None:
        self.available: bool | None = None
        """None until the first collection decides."""
        self._node = node
        self._containers = containers
        self._loader = loader
        self._nvml: ModuleType | None = None
        self._seen: dict[int, int] = {}
        """Device index -> timestamp (µs) of the newest process sample read."""
        self.per_model: dict[str, tuple[float | None, float]] = {}
        """Model -> (utilization %, memory MB) of its GPU processes at the latest collection."""

    def _open(self) -> bool:
        if self.available is None:
            try:
                self._nvml = self._loader()
            except ImportError:
                _log.info(
                    "no GPU metrics: NVIDIA support is not installed (the agent's gpu extra, "
                    "nvidia-ml-py)"
                )
                self.available = False
            except Exception as exc:  # noqa: BLE001 - NVMLError, OSError: all mean "no GPU"
                _log.info("no GPU metrics: no usable NVIDIA GPU or driver here (%s)", exc)
                self.available = False
            else:
                self.available = True
        return bool(self.available)

    def _read(self) -> list[tuple[ResourceType, str, str, float, str]]:
        nvml = self._nvml
        assert nvml is not None  # noqa: S101 - only after _open succeeded
        values: list[tuple[ResourceType, str, str, float, str]] = []
        per_model: dict[str, float] = {}
        usage: dict[str, float] = {}
        containers = self._containers()

        def model_of(pid: int) -> str | None:
            return model_of_pid(pid, containers)

        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            node = (ResourceType.NODE, self._node)
            values += [
                (*node, f"gpu{index}_usage", float(utilization.gpu), "%"),
                (*node, f"gpu{index}_memory_used", memory.used / MB, "MB"),
                (*node, f"gpu{index}_memory_total", memory.total / MB, "MB"),
            ]
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                model = model_of(process.pid)
                used = process.usedGpuMemory
                if model is not None and isinstance(used, int):
                    per_model[model] = per_model.get(model, 0.0) + used / MB
            for model, share in model_shares(self._samples(nvml, index, handle), model_of).items():
                usage[model] = usage.get(model, 0.0) + share
        values += [
            (ResourceType.MODEL, model, "gpu_memory_usage", mb, "MB")
            for model, mb in per_model.items()
        ]
        values += [
            (ResourceType.MODEL, model, "gpu_usage", share, "%") for model, share in usage.items()
        ]
        self.per_model = {
            model: (usage.get(model), per_model.get(model, 0.0))
            for model in per_model.keys() | usage.keys()
        }
        return values

    def _samples(self, nvml: ModuleType, index: int, handle: object) -> list[tuple[int, float]]:
        """(pid, SM utilization %) of the process samples since the last read of device `index`;
        none where the driver keeps none (NVML_ERROR_NOT_FOUND) or cannot (not supported)."""
        try:
            found = nvml.nvmlDeviceGetProcessUtilization(handle, self._seen.get(index, 0))
        except nvml.NVMLError:
            return []
        if found:
            self._seen[index] = max(sample.timeStamp for sample in found)
        return [(sample.pid, float(sample.smUtil)) for sample in found]

    async def collect(self) -> Sequence[Sample]:
        if not self._open():
            return []
        values = await asyncio.to_thread(self._read)
        now = time.time_ns()
        return [Sample(t, rid, name, round(v, 3), unit, now) for t, rid, name, v, unit in values]
