"""The metric catalogue and what the collectors emit cannot drift apart."""

from __future__ import annotations

from dataclasses import fields

from agent.collectors.models import samples_of
from agent.collectors.node import ALL_METRICS
from agent.config import METRIC_CATALOGUE
from agent.evaluate import reports
from agent.ingest import protocol
from agent.metrics import (
    APP_METRICS,
    CATALOGUE,
    MODEL_VIEW_METRICS,
    NODE_METRIC_GROUPS,
    SAFETY_METRICS,
    SCENARIO_METRICS,
    load_status,
)
from agent.model import ModelView


def full_view() -> ModelView:
    """A model view with every field that a collector can measure filled in."""
    values: dict[str, object] = {}
    for field in fields(ModelView):
        if field.name in {"name", "node", "phase", "reason", "source"}:
            continue
        if field.type in {"float | None", "float"}:
            values[field.name] = 1.5
        elif field.type in {"int | None", "int"}:
            values[field.name] = 2
        elif field.type in {"str | None", "str"}:
            values[field.name] = "x"
    values |= {"created_ns": 1_000_000_000, "started_ns": 2_000_000_000}
    return ModelView("m", "n", "Running", "running", "container", **values)  # type: ignore[arg-type]


def test_a_model_view_gives_every_declared_metric_and_nothing_else() -> None:
    names = {s.metric for s in samples_of([full_view()])}
    assert names == {name for _, name, _ in MODEL_VIEW_METRICS}
    assert names <= CATALOGUE["model"]


def test_the_reported_and_scenario_tables_are_the_declared_ones() -> None:
    assert set(reports.APP_METRICS) == set(APP_METRICS) == set(protocol.APP_METRICS)
    safety = {name for name, _ in reports._SAFETY.values()} | {"activations"}
    assert safety == set(SAFETY_METRICS)
    sampled = {name for name, _ in reports._SAMPLED.values()} | {"dependency_status"}
    assert sampled == set(SCENARIO_METRICS)


def test_node_groups_are_what_the_node_collector_knows() -> None:
    assert set(ALL_METRICS) == set(NODE_METRIC_GROUPS)


def test_the_config_validates_against_the_catalogue() -> None:
    assert METRIC_CATALOGUE is CATALOGUE
    assert "oom_kills" in CATALOGUE["model"]
    assert "load_status" in CATALOGUE["model"]  # the seed's model block lists it


def test_load_status_by_phase() -> None:
    assert [load_status(p) for p in ("Running", "Failed", "Pending", "Succeeded")] == [
        "Loaded",
        "Error",
        "Unloaded",
        "Unloaded",
    ]
