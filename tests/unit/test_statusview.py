from __future__ import annotations

from pathlib import Path

from agent.model import ResourceType
from agent.statusview import from_buffer, render, wanted_keys
from agent.store.buffer import Buffer
from agent.store.keys import KeyMaker


def test_the_buffer_gives_the_newest_pending_documents(tmp_path: Path) -> None:
    keys = KeyMaker("n1")
    buffer = Buffer(tmp_path / "b.sqlite3", 10**6)
    buffer.open()
    buffer.put([keys.status(ResourceType.MODEL, "m1", {"phase": "Pending"})])
    buffer.put([keys.status(ResourceType.MODEL, "m1", {"phase": "Running"})])
    buffer.close()
    wanted = wanted_keys("n1", models=["m1"], packages=["p1"], scenarios=[])
    documents = from_buffer(tmp_path / "b.sqlite3", wanted)
    assert set(documents) == {"model/m1"}
    assert documents["model/m1"]["status"] == {"phase": "Running"}
    assert from_buffer(tmp_path / "absent.sqlite3", wanted) == {}


def test_render_shows_unknowns_as_dashes() -> None:
    text = render(
        "n1",
        models=["m1", "m2"],
        packages=["p1"],
        scenarios=["s1"],
        documents={
            "model/m1": {
                "status": {
                    "phase": "Running",
                    "containerStatuses": [{"ready": True}],
                    "metrics": {"cpuUsage": 12.345, "restarts": 2},
                }
            },
            "scenario/s1/metrics/dependency_status": {"value": "Error"},
        },
        source="etcd x",
    )
    lines = text.splitlines()
    assert lines[0] == "node n1: agent unknown version not answering; documents from etcd x"
    assert lines[3].split() == ["m1", "Running", "yes", "2", "12.3", "-", "-", "-", "-"]
    assert lines[4].split() == ["m2", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[-1].split() == ["s1", "Error"]


def test_live_values_replace_the_documents_older_ones() -> None:
    text = render(
        "n1",
        models=["m1"],
        packages=[],
        scenarios=[],
        documents={"model/m1": {"status": {"phase": "Pending", "metrics": {"cpuUsage": 1.0}}}},
        source="etcd x",
        live={"m1": {"phase": "Running", "cpu_usage": 42.0, "memory_usage": 12.5}},
        running="healthy",
    )
    lines = text.splitlines()
    assert lines[0].startswith("node n1: agent unknown version answering (healthy)")
    assert lines[0].endswith("; live values from the agent")
    assert lines[3].split()[:6] == ["m1", "Running", "-", "-", "42.0", "12.5"]
