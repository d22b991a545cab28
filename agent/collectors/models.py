"""What every model collector shares: a model view becomes the model's per-metric samples."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.model import ResourceType, Sample, Value

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agent.model import ModelView


def samples_of(views: Iterable[ModelView]) -> list[Sample]:
    """The samples behind `model/{id}/metrics/{name}`; unknown values are left out, not zeroed."""
    now = time.time_ns()
    out: list[Sample] = []
    for view in views:
        running = view.phase == "Running" and view.started_ns is not None
        uptime = (now - view.started_ns) / 1e9 if running and view.started_ns else 0.0
        values: list[tuple[str, Value | None, str]] = [
            ("phase", view.phase, ""),
            ("restarts", view.restarts, ""),
            ("error_count", view.error_count, ""),
            ("uptime", uptime, "s"),
            ("cpu_usage", view.cpu_percent, "%"),
            ("cpu_throttled", view.cpu_throttled, "periods"),
            ("cpu_throttled_time", view.cpu_throttled_s, "s"),
            ("oom_kills", view.oom_kills, ""),
            ("memory_usage", view.memory_mb, "MB"),
            ("memory_usage_percent", view.memory_percent, "%"),
            ("network_rx", view.network_rx_mbps, "MB/s"),
            ("network_tx", view.network_tx_mbps, "MB/s"),
            ("gpu_usage", view.gpu_percent, "%"),
            ("gpu_memory_usage", view.gpu_memory_mb, "MB"),
        ]
        for name, value, unit in values:
            if value is None:
                continue
            rounded = round(value, 6) if isinstance(value, float) else value
            out.append(Sample(ResourceType.MODEL, view.name, name, rounded, unit, now))
    return out
