"""Faults injected into the real agent (its own etcd and broker): no stage ends it by accident,
and a stop always stops, within its budget."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.stopping import stop_budget_s
from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.services import EtcdServer, MosquittoServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "/piccolo/monitoring/"
NODE = "node/VisionHPC/metrics/"
STOP_BUDGET_S = stop_budget_s() + 1.0 + 3.0  # the deadline, and the interpreter's exit

FAIL_ONCE = """
import asyncio
import agent.alerts.mqtt, agent.app, agent.recorder, agent.store.election
import agent.store.manifest_sync, agent.store.pusher, agent.timing.service

def fail_once(cls, name):
    original = getattr(cls, name)
    failed = []

    async def patched(self, *args, **kwargs):
        if not failed:
            failed.append(True)
            await asyncio.sleep(0.2)
            raise RuntimeError(f"injected failure in {cls.__name__}.{name}")
        return await original(self, *args, **kwargs)

    setattr(cls, name, patched)

for cls, name in [
    (agent.recorder.Recorder, "run"),
    (agent.store.pusher.Pusher, "run"),
    (agent.store.election.Election, "run"),
    (agent.alerts.mqtt.MqttPublisher, "run"),
    (agent.timing.service.TimingService, "run"),
    (agent.store.manifest_sync.ManifestSync, "run"),
    (agent.app.Agent, "_control"),
]:
    fail_once(cls, name)
"""
RESTARTED = ("recorder", "pusher", "election", "mqtt", "timing", "manifests", "control")


def overrides(etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path) -> dict[str, Any]:
    return live_overrides(
        etcd.endpoint,
        socket_dir,
        mosquitto.endpoint,
        resource_monitoring__node__collection_interval="500ms",
        manifests__etcd_prefix="/piccolo/manifests/",
    )


async def metric(store: EtcdStore, name: str) -> Any:
    raw = await store.get(f"{PREFIX}{NODE}{name}".encode())
    return None if raw is None else json.loads(raw)["value"]


async def retained_status(mosquitto: MosquittoServer) -> str:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe("piccolo/monitoring/agents/VisionHPC/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                return str(json.loads(payload)["status"])
    return ""


async def test_each_stage_that_fails_is_started_again_and_the_agent_goes_on(
    tmp_path: Path,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    socket_dir: Path,
    store: EtcdStore,
) -> None:
    agent = AgentProcess(
        tmp_path / "agent", overrides(etcd, mosquitto, socket_dir), prelude=FAIL_ONCE
    ).start()
    try:
        for stage in RESTARTED:
            await asyncio.to_thread(agent.wait_for_log, f"stage {stage} failed; starting", 20)

        async def counted() -> bool:
            values = [await metric(store, f"agent_stage_failures_{s}") for s in RESTARTED]
            return values == [1] * len(RESTARTED)

        # The recorder and the pusher work again: the failure counts reached etcd.
        await eventually(counted, 20, "every stage's failure counted in etcd")
        # The election works again: the liveness key is there.
        assert await store.get(f"{PREFIX}nodes/VisionHPC/agent".encode()) is not None
        # The publisher works again: its retained status says online.
        assert await retained_status(mosquitto) == "online"
        assert agent.running
        assert await asyncio.to_thread(agent.stop, STOP_BUDGET_S) == 0
    finally:
        agent.kill()
    assert "Traceback" in agent.log()  # each failure is logged with its traceback


def test_a_failed_watchdog_feed_stops_the_agent_cleanly_with_exit_1(
    tmp_path: Path, etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path
) -> None:
    prelude = """
import asyncio
import agent.app

async def broken_feed(*args, **kwargs):
    await asyncio.sleep(0.5)
    raise RuntimeError("injected: the watchdog feed broke")

agent.app.feed_watchdog = broken_feed
"""
    agent = AgentProcess(
        tmp_path / "agent", overrides(etcd, mosquitto, socket_dir), prelude=prelude
    ).start()
    try:
        assert agent.wait(timeout=10 + STOP_BUDGET_S) == 1
    finally:
        agent.kill()
    log = agent.log()
    assert "stage watchdog failed; stopping the agent (exit 1)" in log
    assert log.rstrip().endswith("stopped")


HUNG_DISCONNECT = """
import asyncio
import aiomqtt

async def never(self, *args):
    # A disconnect that never returns and ignores its cancellation.
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

aiomqtt.Client.__aexit__ = never
"""


def test_a_broker_disconnect_that_never_returns_cannot_hold_the_stop(
    tmp_path: Path, etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path
) -> None:
    agent = AgentProcess(
        tmp_path / "agent", overrides(etcd, mosquitto, socket_dir), prelude=HUNG_DISCONNECT
    ).start()
    try:
        agent.wait_for_log("connected to MQTT broker", timeout=20)
        agent.wait_for_log("ready in", timeout=20)
        sent = agent.signal(signal.SIGTERM)
        code = agent.wait(timeout=STOP_BUDGET_S + 5)
        took = time.monotonic() - sent
    finally:
        agent.kill()
    assert code in (0, 1)
    assert took < STOP_BUDGET_S, f"the stop took {took:.1f}s"
    assert "abandoned" in agent.log()


def test_sigterm_during_a_start_up_that_hangs_stops_the_agent(
    tmp_path: Path, etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path
) -> None:
    prelude = """
import asyncio
import agent.collecting

async def hang(self):
    await asyncio.Event().wait()

agent.collecting.Collection.first_cycles = hang
"""
    agent = AgentProcess(
        tmp_path / "agent", overrides(etcd, mosquitto, socket_dir), prelude=prelude
    ).start()
    try:
        agent.wait_for_log("connected to MQTT broker", timeout=20)
        sent = agent.signal(signal.SIGTERM)
        code = agent.wait(timeout=STOP_BUDGET_S + 5)
        took = time.monotonic() - sent
    finally:
        agent.kill()
    assert code == 0
    assert took < STOP_BUDGET_S
    assert "ready in" not in agent.log()
    assert "stop requested while starting" in agent.log()
