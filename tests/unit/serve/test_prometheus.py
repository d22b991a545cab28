from __future__ import annotations

from agent.model import ResourceType, Sample
from agent.serve.prometheus import expose, metric_name


def test_names_take_base_units_and_counters_their_suffix() -> None:
    assert metric_name("model", "cpu_usage", "%") == ("piccolo_model_cpu_usage_ratio", 0.01, False)
    assert metric_name("node", "memory_usage_percent", "%")[0] == "piccolo_node_memory_usage_ratio"
    assert metric_name("model", "memory_usage", "MB") == (
        "piccolo_model_memory_usage_bytes",
        2.0**20,
        False,
    )
    assert metric_name("model", "worst_case_execution_time", "ms")[:2] == (
        "piccolo_model_wcet_seconds",
        1e-3,
    )
    assert metric_name("model", "deadline_miss_count", "")[0::2] == (
        "piccolo_model_deadline_misses",
        True,
    )
    assert (
        metric_name("node", "network_rx", "MB/s")[0] == "piccolo_node_network_rx_bytes_per_second"
    )


def sample(kind: ResourceType, rid: str, metric: str, value: float | str, unit: str = "") -> Sample:
    return Sample(kind, rid, metric, value, unit, 0)


def test_the_exposition_is_typed_labelled_escaped_and_only_of_present_resources() -> None:
    samples = [
        sample(ResourceType.MODEL, "m1", "cpu_usage", 50.0, "%"),
        sample(ResourceType.MODEL, "m1", "restarts", 2),
        sample(ResourceType.MODEL, "m1", "phase", "Running"),
        sample(ResourceType.MODEL, "m1", "last_error", 'boom "quoted"'),
        sample(ResourceType.MODEL, "gone", "cpu_usage", 1.0, "%"),
        sample(ResourceType.NODE, "n", "agent_ingest_dropped_too_large", 3, "reports"),
        sample(ResourceType.NODE, "n", "agent_ingest_dropped", 3, "reports"),
        sample(ResourceType.NODE, "n", "agent_buffer_bytes", 10, "B"),
    ]
    present = {("model", "m1"): 'B"x', ("node", "n"): ""}
    text = expose("n", samples, present=present).render().decode()
    labels = 'node="n",model="m1",asil="B\\"x"'
    name = "piccolo_model_cpu_usage_ratio"
    assert f"# TYPE {name} gauge\n{name}{{{labels}}} 0.5\n" in text
    assert "# TYPE piccolo_model_restarts_total counter\n" in text
    assert 'piccolo_model_phase{node="n",model="m1",asil="B\\"x",phase="Running"} 1' in text
    assert "last_error" not in text  # free text is no label value
    assert "gone" not in text
    assert 'piccolo_agent_ingest_dropped_total{node="n",reason="too_large"} 3' in text
    assert text.count("piccolo_agent_ingest_dropped_total{") == 1  # the sum is left out
    assert 'piccolo_agent_buffer_bytes{node="n"} 10' in text
    open_metrics = expose("n", samples, present=present).render(openmetrics=True).decode()
    assert "# TYPE piccolo_model_restarts counter\n" in open_metrics
    assert open_metrics.endswith("# EOF\n")
