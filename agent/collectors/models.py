"""What every model collector shares: a model view becomes the model's per-metric samples."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.metrics import MODEL_VIEW_METRICS, load_status
from agent.model import ResourceType, Sample, Value

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agent.model import ModelView


_Triples = list[tuple[str, "Value", str]]
Memo = dict[str, tuple["ModelView", _Triples]]
"""Model -> the last view seen and its (metric, value, unit) list; see `samples_of`."""


def _triples(view: ModelView) -> _Triples:
    out: _Triples = []
    for attribute, metric, unit in MODEL_VIEW_METRICS:
        value: Value | None
        if attribute:
            value = getattr(view, attribute)
        elif metric == "load_status":
            value = load_status(view.phase)
        elif metric == "load_time":
            value = load_time_ms(view)
        else:
            value = 0.0  # uptime: computed at every call
        if value is None or value == "":
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


def load_time_ms(view: ModelView) -> float | None:
    """Creation of the container to its start: how long the model took to load."""
    if view.created_ns is None or view.started_ns is None or view.started_ns < view.created_ns:
        return None
    return round((view.started_ns - view.created_ns) / 1e6, 3)
