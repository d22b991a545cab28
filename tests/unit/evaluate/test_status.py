"""Model documents: conditions, addresses and GPU use."""

from __future__ import annotations

from agent.evaluate.documents import SafetyMetricsDoc, Supervision
from agent.evaluate.status import model_document
from agent.model import ModelView

S = 1_000_000_000


def test_conditions_say_what_was_observed() -> None:
    pending = ModelView("m", "n", "Pending", "no container for this model", "none")
    created = ModelView("m", "n", "Pending", "created", "container")
    running = ModelView("m", "n", "Running", "running", "container", started_ns=S, ready=True)

    def statuses(view: ModelView, safety: SafetyMetricsDoc | None = None) -> dict[str, str]:
        document = model_document(view, None, 2 * S, safety=safety)
        assert {c.last_probe_time for c in document.conditions} == {
            "1970-01-01T00:00:02.000000000Z"
        }
        return {str(c.type): str(c.status) for c in document.conditions}

    assert statuses(pending) == {"Scheduled": "False", "Initialized": "False", "Ready": "False"}
    assert statuses(created) == {"Scheduled": "True", "Initialized": "False", "Ready": "False"}
    assert statuses(running) == {"Scheduled": "True", "Initialized": "True", "Ready": "True"}
    failed = SafetyMetricsDoc("B", "Active", Supervision(local_status="FAILED"))
    assert statuses(running, failed)["TimingSupervised"] == "False"
    ok = SafetyMetricsDoc("B", "Active", Supervision(local_status="OK"))
    assert statuses(running, ok)["TimingSupervised"] == "True"


def test_addresses_come_from_the_container_and_the_node() -> None:
    bridged = ModelView("m", "n", "Running", "running", "container", pod_ip="10.88.0.7")
    document = model_document(bridged, None, S, host_ip="192.168.1.20")
    assert (document.host_ip, document.pod_ip) == ("192.168.1.20", "10.88.0.7")
    host = ModelView("m", "n", "Running", "running", "process", host_network=True)
    document = model_document(host, None, S, host_ip="192.168.1.20")
    assert document.pod_ip == "192.168.1.20"
    isolated = ModelView("m", "n", "Running", "running", "container")
    assert model_document(isolated, None, S, host_ip="192.168.1.20").pod_ip is None


def test_gpu_use_measured_for_the_model_reaches_its_document() -> None:
    view = ModelView("m", "n", "Running", "running", "container")
    metrics = model_document(view, None, S, gpu=(37.5, 512.0)).metrics
    assert (metrics.gpu_usage, metrics.gpu_memory_usage) == (37.5, 512.0)
    metrics = model_document(view, None, S, gpu=(None, 256.0)).metrics
    assert (metrics.gpu_usage, metrics.gpu_memory_usage) == (None, 256.0)
    metrics = model_document(view, None, S).metrics
    assert (metrics.gpu_usage, metrics.gpu_memory_usage) == (None, None)
