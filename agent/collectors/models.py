"""What every model collector shares: a model view becomes the model's per-metric samples."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.model import ResourceType, Sample, Value

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agent.model import ModelView


_FIELDS: tuple[tuple[str, str, str], ...] = (
    # (ModelView attribute, metric name, unit); "" for uptime, computed from the start time.
    ("phase", "phase", ""),
    ("restarts", "restarts", ""),
    ("error_count", "error_count", ""),
    ("", "uptime", "s"),
    ("cpu_percent", "cpu_usage", "%"),
    ("cpu_throttled", "cpu_throttled", "periods"),
    ("cpu_throttled_s", "cpu_throttled_time", "s"),
    ("oom_kills", "oom_kills", ""),
    ("memory_mb", "memory_usage", "MB"),
    ("memory_percent", "memory_usage_percent", "%"),
    ("network_rx_mbps", "network_rx", "MB/s"),
    ("network_tx_mbps", "network_tx", "MB/s"),
    ("gpu_percent", "gpu_usage", "%"),
    ("gpu_memory_mb", "gpu_memory_usage", "MB"),
)


_Triples = list[tuple[str, "Value", str]]
Memo = dict[str, tuple["ModelView", _Triples]]
"""Model -> the last view seen and its (metric, value, unit) list; see `samples_of`."""


def _triples(view: ModelView) -> _Triples:
    out: _Triples = []
    for attribute, metric, unit in _FIELDS:
        value: Value | None = getattr(view, attribute) if attribute else 0.0
        if value is None:
            continue
        if value.__class__ is float:
            value = round(value, 6)
        out.append((metric, value, unit))
    return out


def samples_of(views: Iterable[ModelView], memo: Memo | None = None) -> list[Sample]:
    """The samples behind `model/{id}/metrics/{name}`; unknown values are left out, not zeroed.

    With `memo` (kept by the caller between collections), a view that is the very object of the
    last call (a collector reuses the view of a model where nothing moved) reuses its values, and
    only uptime is computed again.
    """
    now = time.time_ns()
    out: list[Sample] = []
    append = out.append
    model = ResourceType.MODEL
    names: set[str] = set()
    for view in views:
        name = view.name
        names.add(name)
        known = memo.get(name) if memo is not None else None
        if known is not None and known[0] is view:
            triples = known[1]
        else:
            triples = _triples(view)
            if memo is not None:
                memo[name] = (view, triples)
        started = view.started_ns
        uptime = round((now - started) / 1e9, 6) if view.phase == "Running" and started else 0.0
        for metric, value, unit in triples:
            append(Sample(model, name, metric, uptime if metric == "uptime" else value, unit, now))
    if memo is not None:
        for gone in memo.keys() - names:
            del memo[gone]
    return out
