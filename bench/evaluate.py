"""What evaluation costs and how fast its judgements arrive.

1. In this process, cycle by cycle: 300 models (`--models`) with three thresholds each
   (memory_usage, cpu_usage, inference_time) in a three-level graph (3 scenarios -> 30 packages ->
   300 models): the cost per sample of `Evaluation.submit` (thresholds; the recorder replaced by a
   no-op), beside the recorder's own `submit` of the same samples, interleaved, medians.
2. In this process: `stuck_state` timers (`TransitionJudge`) of 0.2 s armed for 50 resources on a
   running loop; how late each fired after its threshold (max).
3. The real agent (its own etcd, mosquitto, Podman with the busybox image): `--deaths` (20)
   containers of models in that graph killed one at a time; the time from `podman kill`
   returning to the `dependency_impact` alert at an MQTT subscriber (p50/p99/max), beside a bare
   QoS 1 publish to the same broker and back (p99).

Prints one JSON line. Root (Podman). From the repo root: `.venv/bin/python bench/evaluate.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from agent.alerts.alerts import AlertManager
from agent.config import Config
from agent.evaluate.alerting import Evaluation
from agent.evaluate.rollup import Rollups
from agent.evaluate.states import StateChange, StateTracker
from agent.evaluate.transitions import TransitionJudge
from agent.health import Progress
from agent.manifests import build_inventory, load_manifests
from agent.model import ResourceType, Sample
from agent.recorder import Recorder
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.keys import KeyMaker
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.services import EtcdServer, MosquittoServer, PodmanService, find_binary

NODE = "VisionHPC"
THRESHOLDS = [
    {"name": "memory_usage", "threshold_warning": "80%", "threshold_critical": "95%"},
    {"name": "cpu_usage", "threshold_warning": "80%", "threshold_critical": "95%"},
    {"name": "inference_time", "threshold_warning": "50ms", "threshold_critical": "100ms"},
]


def write_graph(directory: Path, models: int) -> Path:
    """3 scenarios -> 30 packages -> `models` models, all on NODE (JSON manifests)."""
    directory.mkdir(parents=True, exist_ok=True)
    packages = 30
    for p in range(packages):
        members = [f"m{i:03}" for i in range(p, models, packages)]
        for name in members:
            model = {
                "apiVersion": "piccolo.io/v1",
                "kind": "Model",
                "metadata": {"name": name, "labels": {"asilLevel": "B"}},
                "spec": {"image": f"test/{name}:1", "node": NODE},
            }
            (directory / f"{name}.yaml").write_text(json.dumps(model), encoding="utf-8")
        package = {
            "apiVersion": "piccolo.io/v1",
            "kind": "Package",
            "metadata": {"name": f"p{p:02}"},
            "spec": {"models": [{"name": n, "node": NODE} for n in members]},
        }
        (directory / f"p{p:02}.yaml").write_text(json.dumps(package), encoding="utf-8")
    for s in range(3):
        scenario = {
            "apiVersion": "piccolo.io/v1",
            "kind": "Scenario",
            "metadata": {"name": f"s{s}"},
            "spec": {
                "action": "launch",
                "target": {"packages": [f"p{p:02}" for p in range(s, packages, 3)]},
            },
        }
        (directory / f"s{s}.yaml").write_text(json.dumps(scenario), encoding="utf-8")
    return directory


def in_process(work: Path, models: int, cycles: int) -> dict[str, Any]:
    manifests = write_graph(work / "manifests", models)
    config = Config.model_validate(
        {"node": {"name": NODE}, "performance_monitoring": {"metrics": THRESHOLDS}}
    )
    inventory = build_inventory(NODE, load_manifests([manifests]))
    alerts = AlertManager(NODE, renotify_s=300, rate_limit_per_s=50)
    evaluation = Evaluation(lambda: (config, inventory), alerts, lambda _a: None, lambda _s: None)
    buffer = AsyncBuffer(Buffer(work / "b.sqlite3", 2**30))
    recorder = Recorder(buffer, KeyMaker(NODE), Rollups(60), Progress(), queue_size=10**6)
    names = sorted(inventory.models)
    evaluated: list[float] = []
    recorded: list[float] = []
    for cycle in range(cycles):
        now = time.time_ns()
        samples = [
            Sample(ResourceType.MODEL, n, metric, value, unit, now)
            for i, n in enumerate(names)
            for metric, value, unit in (
                ("memory_usage_percent", 40.0 + (i + cycle) % 50, "%"),
                ("cpu_usage", 10.0 + (i * 7 + cycle) % 90, "%"),
                ("inference_time", 20.0 + (i + cycle * 3) % 100, "ms"),
                ("network_rx", 0.5, "MB/s"),
            )
        ]
        order = (
            [evaluation.submit, recorder.submit]
            if cycle % 2
            else [recorder.submit, evaluation.submit]
        )
        for fn in order:
            started = time.perf_counter()
            fn(samples)
            took = (time.perf_counter() - started) / len(samples) * 1e6
            (evaluated if fn == evaluation.submit else recorded).append(took)
    return {
        "models": models,
        "samples_per_cycle": len(names) * 4,
        "eval_us_per_sample": round(statistics.median(evaluated), 3),
        "recorder_us_per_sample": round(statistics.median(recorded), 3),
        "eval_ms_per_cycle": round(statistics.median(evaluated) * len(names) * 4 / 1000, 3),
        "threshold_verdicts": evaluation.verdicts,
    }


async def stuck_lateness(resources: int = 50, limit_s: float = 0.2) -> float:
    config = Config.model_validate(
        {
            "resource_state_monitoring": {
                "alerting": {"stuck_states": {"thresholds": {"loading": f"{limit_s}s"}}}
            },
            "state_transition_tracking": {
                "resources": [
                    {"type": "model", "states": ["unloaded", "loading", "loaded", "error"]}
                ]
            },
        }
    )
    inventory = build_inventory(NODE, [])
    tracker = StateTracker(
        {ResourceType.MODEL: frozenset({"unloaded", "loading", "loaded", "error"})}
    )
    alerts = AlertManager(NODE, renotify_s=300, rate_limit_per_s=1000)
    judge = TransitionJudge(lambda: (config, inventory), tracker, alerts, lambda _a: None)
    for i in range(resources):
        judge.changed(
            StateChange(
                ResourceType.MODEL,
                f"m{i}",
                None,
                "Pending",
                time.time_ns(),
                None,
                "",
                expected=True,
            )
        )
        await asyncio.sleep(0.003)
    await asyncio.sleep(limit_s + 0.3)
    return max(judge.lateness_ms) if judge.lateness_ms else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def mqtt_floor(broker: MosquittoServer, count: int = 50) -> float:
    times: list[float] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("bench/floor", qos=1)
        for i in range(count):
            started = time.monotonic()
            await client.publish("bench/floor", str(i), qos=1)
            async for _message in client.messages:
                break
            times.append((time.monotonic() - started) * 1000)
    return percentile(times, 0.99)


async def impact_latency(work: Path, deaths: int) -> dict[str, Any]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pce-")))
        podman = stack.enter_context(PodmanService(tmp / "p", busybox=find_binary("busybox")))
        etcd = stack.enter_context(EtcdServer(work / "etcd"))
        broker = stack.enter_context(MosquittoServer(work / "mosquitto"))
        manifests = write_graph(work / "agent-manifests", deaths * 3)
        overrides = live_overrides(
            etcd.endpoint,
            tmp,
            broker.endpoint,
            manifests__paths=[str(manifests)],
            node__name=NODE,
            resource_monitoring__container__socket=str(podman.socket),
            resource_monitoring__container__collection_interval="1s",
        )
        agent = AgentProcess(work / "agent", overrides).start()
        stack.callback(agent.kill)
        agent.wait_for_log("ready in", timeout=30)
        victims = [f"m{i:03}" for i in range(deaths)]
        for name in victims:
            podman.run_container(
                f"c-{name}", f"--label=piccolo.io/model={name}", command=["sleep", "900"]
            )
        received: dict[str, float] = {}
        arrived: dict[str, asyncio.Event] = {}
        ready = asyncio.Event()

        async def subscribe() -> None:
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await client.subscribe("piccolo/monitoring/alerts/#", qos=1)
                ready.set()
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes):
                        continue
                    alert = json.loads(payload)
                    if alert["kind"] == "dependency_impact" and alert["status"] == "firing":
                        name = alert["resource"]["id"]
                        received.setdefault(name, time.monotonic())
                        arrived.setdefault(name, asyncio.Event()).set()

        listener = asyncio.create_task(subscribe())
        await ready.wait()
        await asyncio.sleep(5)  # every container seen running
        pids = {
            name: int(podman.podman("inspect", "-f", "{{.State.Pid}}", f"c-{name}").stdout)
            for name in victims
        }
        latencies: list[float] = []
        for name in victims:
            # SIGKILL to the container's process itself: the death is at this instant (`podman
            # kill` would add its own start-up and return after the agent had already seen it).
            killed = time.monotonic()
            os.kill(pids[name], signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await arrived.setdefault(name, asyncio.Event()).wait()
            if name in received:
                latencies.append((received[name] - killed) * 1000)
        floor = await mqtt_floor(broker)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    return {
        "deaths": deaths,
        "impact_alerts": len(latencies),
        "impact_alert_ms_p50": round(percentile(latencies, 0.5), 2) if latencies else None,
        "impact_alert_ms_p99": round(percentile(latencies, 0.99), 2) if latencies else None,
        "impact_alert_ms_max": round(max(latencies), 2) if latencies else None,
        "mqtt_floor_ms_p99": round(floor, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--deaths", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        result = in_process(work, args.models, args.cycles)
        result["stuck_late_ms_max"] = round(asyncio.run(stuck_lateness()), 2)
        result |= asyncio.run(impact_latency(work, args.deaths))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
