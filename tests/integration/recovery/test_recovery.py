"""Automatic recovery in a whole agent against real Podman, etcd and mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess
from tests.support.services import PodmanService
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "/piccolo/monitoring/"
BACKOFF_S = 1.0


def recovery_config(overrides: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    policy = {"max_restarts": 2, "window": "60s", "backoff": f"{BACKOFF_S}s"}
    return overrides(
        recovery={
            "enabled": True,
            **policy,
            # vision-system is ASIL B: restarted only with this opt-in.
            "models": [{"model": "vision-system", "enabled": True, "allow_asil": True, **policy}],
        }
    )


async def events(store: EtcdStore, kind: str) -> list[dict[str, Any]]:
    found = await store.get_prefix(f"{PREFIX}model/vision-system/events/".encode())
    return [e for e in (json.loads(v) for _, v in found) if e["type"] == kind]


async def state(podman: PodmanService, name: str) -> str:
    done = await asyncio.to_thread(
        podman.podman, "inspect", "--format", "{{.State.Status}}", name, check=False
    )
    return done.stdout.strip()


async def test_a_crash_is_restarted_within_its_backoff_and_a_crash_loop_gives_up(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    store: EtcdStore,
    alerts: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    agent = AgentProcess(tmp_path / "agent", recovery_config(overrides)).start()
    name = f"vision-{time.monotonic_ns()}"
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        # It crashes 3 s after each start, with exit code 3.
        await asyncio.to_thread(
            podman.run_container,
            name,
            "--label=piccolo.io/model=vision-system",
            command=["sh", "-c", "sleep 3; exit 3"],
        )

        async def exited() -> bool:
            return await state(podman, name) == "exited"

        await eventually(exited, 10, "the first crash")
        died = time.monotonic()

        async def running() -> bool:
            return await state(podman, name) == "running"

        await eventually(running, BACKOFF_S + 3, "the restart")
        took = time.monotonic() - died
        assert took <= BACKOFF_S + 1.0, f"running again {took:.2f} s after the crash"
        started = await eventually(lambda: events(store, "recovery_started"), 10, "the event")
        assert started[0]["details"]["attempt"] == 1
        await eventually(lambda: events(store, "recovery_succeeded"), 10, "the success event")

        def given_up() -> dict[str, Any] | None:
            found = [a for a in alerts if a["kind"] == "recovery" and a["severity"] == "critical"]
            return found[0] if found else None

        # Restarts after 1 s and 2 s; the third crash gives up.
        critical = await eventually(given_up, 40, "the critical recovery alert")
        assert critical["resource"] == {"type": "model", "id": "vision-system"}
        assert "gives up" in critical["message"]
        ids = {a["id"] for a in alerts if a["kind"] == "recovery"}
        assert len(ids) == 1, "one alert episode for the whole crash loop"
        assert len(await events(store, "recovery_started")) == 2
        await asyncio.sleep(4)
        assert await state(podman, name) == "exited", "given up: left stopped"
    finally:
        agent.kill()
        await asyncio.to_thread(podman.podman, "rm", "-f", name, check=False)


async def test_podman_stop_is_not_undone_and_a_containers_own_policy_is_left_to_podman(
    *,
    podman: PodmanService,
    overrides: Callable[..., dict[str, Any]],
    store: EtcdStore,
    tmp_path: Path,
) -> None:
    agent = AgentProcess(tmp_path / "agent", recovery_config(overrides)).start()
    name = f"vision-{time.monotonic_ns()}"
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.to_thread(
            podman.run_container,
            name,
            "--label=piccolo.io/model=vision-system",
            command=["sleep", "600"],
        )
        await asyncio.sleep(1.0)
        await asyncio.to_thread(podman.podman, "stop", "-t", "0", name)
        await asyncio.sleep(BACKOFF_S + 3)
        assert await state(podman, name) == "exited"
        assert await events(store, "recovery_started") == []
        await asyncio.to_thread(podman.podman, "rm", "-f", name)
        # Podman restarts this one itself; the agent does not compete.
        await asyncio.to_thread(
            podman.run_container,
            name,
            "--label=piccolo.io/model=vision-system",
            "--restart=on-failure:2",
            command=["sh", "-c", "sleep 2; exit 3"],
        )
        await asyncio.sleep(8)
        assert await events(store, "recovery_started") == []
        done = await asyncio.to_thread(
            podman.podman, "inspect", "--format", "{{.RestartCount}}", name, check=False
        )
        assert int(done.stdout.strip() or 0) >= 1, "Podman restarted it, as its policy says"
    finally:
        agent.kill()
        await asyncio.to_thread(podman.podman, "rm", "-f", name, check=False)


async def test_a_process_model_is_restarted_through_its_command(
    *, overrides: Callable[..., dict[str, Any]], store: EtcdStore, tmp_path: Path
) -> None:
    pidfile = tmp_path / "adas.pid"
    starter = tmp_path / "start.sh"
    starter.write_text(f"#!/bin/sh\nsleep 600 >/dev/null 2>&1 &\necho $! > {pidfile}\n")
    starter.chmod(0o755)
    config = overrides(
        resource_monitoring__process__collection_interval="250ms",
        resource_monitoring__process__bindings=[{"model": "adas-planner", "pidfile": str(pidfile)}],
        recovery={
            "enabled": True,
            "models": [
                {
                    "model": "adas-planner",
                    "enabled": True,
                    "allow_asil": True,
                    "backoff": "500ms",
                    "command": f"{starter} {{model}}",
                }
            ],
        },
    )
    await asyncio.to_thread(subprocess.run, [str(starter)], check=True, timeout=10)
    first = int(pidfile.read_text())
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        await asyncio.to_thread(agent.wait_for_log, "ready in", 30)
        await asyncio.sleep(1.0)
        os.kill(first, signal.SIGSEGV)  # a crash of the process itself

        async def restarted() -> list[dict[str, Any]]:
            found = await store.get_prefix(f"{PREFIX}model/adas-planner/events/".encode())
            return [
                e for e in (json.loads(v) for _, v in found) if e["type"] == "recovery_succeeded"
            ]

        await eventually(restarted, 15, "recovery_succeeded of the process model")
        second = int(pidfile.read_text())
        assert second != first
        os.kill(second, 0)  # it runs
    finally:
        agent.kill()
        for pid in {int(pidfile.read_text())} if pidfile.exists() else set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
