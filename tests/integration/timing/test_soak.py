"""Deadline supervision against ground truth, with both cores saturated.

Four periodic tasks (5, 10, 20 and 50 ms; tests.support.workload.FOUR_TASKS), each in a process of
its own under SCHED_FIFO where permitted, report start and end of every activation to the real
agent for 12 s while a SCHED_OTHER busy loop runs on every core. Each task gets four injected
misses and one hang-up, more than 15 activations apart. The task processes log what really
happened; the agent's count of misses per task (its model's status document in etcd) must equal
the truth, and no alive_timeout may come for a task that never stopped reporting.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess
from tests.support.services import EtcdServer, MosquittoServer
from tests.support.workload import (
    FOUR_TASKS,
    MS,
    BusyLoad,
    FiringAlert,
    TaskLog,
    fidelity,
    four_task_spec,
    monotonic_of,
    rfc3339_ns,
    start_workload,
    unexpected_alive,
    write_manifests,
)

pytestmark = pytest.mark.integration

NODE = "VisionHPC"
TASK = "soak"
DURATION_S = 12.0
PREFIX = "/piccolo/monitoring/"
ALERTS = f"piccolo/monitoring/alerts/{NODE}/model/+"
QLEN_FILE = Path("/proc/sys/net/unix/max_dgram_qlen")
PACKAGED_QLEN = 512
"""packaging/60-piccolo-agent.conf"""


@dataclass
class Alerts:
    """Every alert that arrived (the first copy of each id and status), with CLOCK_MONOTONIC
    arrival and `first_seen` times."""

    seen: set[tuple[str, str]] = field(default_factory=set)
    items: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, payload: dict[str, Any]) -> None:
        arrived = time.monotonic_ns()
        key = (payload["id"], payload["status"])
        if key not in self.seen:
            self.seen.add(key)
            raised = monotonic_of(rfc3339_ns(payload["first_seen"]))
            self.items.append((arrived, raised, payload))

    def firing(self, kind: str, model: str) -> list[tuple[int, int, dict[str, Any]]]:
        return [
            item
            for item in self.items
            if item[2]["kind"] == kind
            and item[2]["status"] == "firing"
            and item[2]["resource"]["id"] == model
            and item[2]["metric"] == TASK
        ]


@pytest.fixture
def queue_limit() -> Iterator[int]:
    """The socket queue the package's sysctl.d file sets (512) where this process may set it; the
    machine's own value comes back afterwards. Elsewhere the lost ends are accounted for."""
    before = int(QLEN_FILE.read_text(encoding="ascii"))
    changed = False
    if before < PACKAGED_QLEN:
        try:
            QLEN_FILE.write_text(str(PACKAGED_QLEN), encoding="ascii")
            changed = True
        except OSError:
            pass
    try:
        yield int(QLEN_FILE.read_text(encoding="ascii"))
    finally:
        if changed:
            QLEN_FILE.write_text(str(before), encoding="ascii")


@pytest.fixture
def agent(
    queue_limit: int, tmp_path: Path, etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path
) -> Iterator[AgentProcess]:
    manifests = write_manifests(tmp_path / "manifests", NODE)
    del queue_limit  # set before the agent makes its socket
    proc = AgentProcess(
        tmp_path / "agent",
        {
            "data_storage.configuration.endpoints": [etcd.endpoint],
            "mqtt.broker": mosquitto.endpoint,
            "ingest.socket": str(socket_dir / "ingest.sock"),
            "manifests.paths": [str(manifests)],
            "resource_monitoring.container.socket": str(socket_dir / "no-podman.sock"),
            "resource_monitoring.container.collection_interval": "500ms",
        },
    ).start()
    proc.wait_for_log("ready in", timeout=20)
    yield proc
    proc.kill()


async def listen(mosquitto: MosquittoServer, alerts: Alerts, ready: asyncio.Event) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="soak-sub") as client:
        await client.subscribe(ALERTS, qos=1)
        ready.set()
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                alerts.add(json.loads(message.payload))


async def settled_counts(store: EtcdStore, logs: dict[str, TaskLog]) -> dict[str, int]:
    """Each task's deadlineMisses once its model's document shows every activation the task
    reported and the model inactive (no report for two reference cycles: all processed)."""
    expected = {
        log.header["model"]: sum(1 for r in log.rows if r.get("start_ok") and r.get("end_ok"))
        for log in logs.values()
    }
    counts: dict[str, int] = {}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(counts) < len(expected):
        for model, activations in expected.items():
            raw = await store.get(f"{PREFIX}model/{model}".encode())
            doc = json.loads(raw) if raw else {}
            safety = doc.get("status", {}).get("metrics", {}).get("safetyMetrics", {})
            task = safety.get("tasks", {}).get(TASK, {})
            last[model] = {"status": safety.get("safetyMonitorStatus"), **task}
            if safety.get("safetyMonitorStatus") == "Inactive" and (
                task.get("activations") == activations
            ):
                counts[model] = int(task["deadlineMisses"])
        await asyncio.sleep(0.2)
    assert len(counts) == len(expected), f"documents did not settle: {last}, want {expected}"
    return counts


async def corrections(store: EtcdStore, model: str) -> int:
    """The hang-ups the agent took back for the task (its `deadline_miss_corrected` events)."""
    events = await store.get_prefix(f"{PREFIX}model/{model}/events/".encode())
    found = [json.loads(value) for _, value in events]
    return sum(
        1
        for event in found
        if event.get("type") == "deadline_miss_corrected"
        and event.get("details", {}).get("task") == TASK
    )


async def test_deadline_misses_match_ground_truth_with_both_cores_saturated(
    agent: AgentProcess, mosquitto: MosquittoServer, store: EtcdStore, tmp_path: Path
) -> None:
    alerts, ready = Alerts(), asyncio.Event()
    listener = asyncio.create_task(listen(mosquitto, alerts, ready))
    await asyncio.wait_for(ready.wait(), 10)
    socket_path = Path(agent.config["ingest"]["socket"])
    spec = four_task_spec(socket_path, task=TASK, duration_s=DURATION_S)
    with BusyLoad():
        try:
            run = start_workload(spec, tmp_path / "workload")
        except RuntimeError:
            # Seen once in a full-suite run: a task process died before it was ready (SIGABRT,
            # not understood yet). The workload has not started; start it once more.
            run = start_workload(spec, tmp_path / "workload-again")
        try:
            logs = await asyncio.to_thread(run.wait, DURATION_S + 30)
        finally:
            run.kill()
    counts = await settled_counts(store, logs)
    await asyncio.sleep(0.5)  # alerts still on their way to the subscriber
    listener.cancel()

    report: dict[str, dict[str, Any]] = {}
    for log in logs.values():
        model = log.header["model"]
        rt = next(rt for rt in FOUR_TASKS if rt.model == model)
        firing = [
            FiringAlert(float(p["value"]), raised, arrived)
            for arrived, raised, p in alerts.firing("deadline_miss", model)
        ]
        result = fidelity(
            log.rows,
            int(log.header["deadline_ns"]),
            counts[model],
            firing,
            corrections=await corrections(store, model),
        )
        alive_alerts = {raised: p for _, raised, p in alerts.firing("alive_timeout", model)}
        alive = unexpected_alive(log.rows, round(rt.period_ms * MS), list(alive_alerts))
        t0 = int(log.header["t0_ns"])
        report[model] = {
            **{k: v for k, v in result.items() if k != "latency_ms"},
            "alive_timeouts_unexpected": len(alive),
            "alive_unexpected_at_s": [
                [round((at - t0) / 1e9, 3), alive_alerts[at]["value"]] for at in alive
            ],
            "fifo": log.header["fifo"]["applied"],
            "send_failures": log.summary["send_failures"],
        }
    problems = []
    for model, row in report.items():
        # By the protocol a start whose end never came (the socket refused it) is a miss: the
        # agent must count exactly what happened plus those, and nothing else.
        if row["counted_misses"] != row["expected_count"]:
            problems.append(
                f"{model}: the agent counted {row['counted_misses']} misses, "
                f"{row['true_misses']} happened and {row['lost_ends']} ends were lost in a full "
                f"socket queue: {row['false_misses']} false, {row['missed_misses']} missed"
            )
        if row["alive_timeouts_unexpected"]:
            problems.append(
                f"{model}: {row['alive_timeouts_unexpected']} alive_timeout(s) while the task "
                "reported as expected"
            )
    assert not problems, "\n".join(problems) + "\n" + json.dumps(report, indent=1)
