"""Fixtures of the integration tests that run a whole agent against real services: what reaches
an MQTT subscriber, and the config overrides for Podman, etcd and mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.agentproc import live_overrides
from tests.support.services import EtcdServer, MosquittoServer, PodmanService


@pytest.fixture
async def alerts(mosquitto: MosquittoServer) -> AsyncIterator[list[dict[str, Any]]]:
    """Every alert payload that reaches a subscriber of `piccolo/monitoring/alerts/#`, in order."""
    received: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def subscribe() -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe("piccolo/monitoring/alerts/#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes):
                    received.append(json.loads(payload))

    task = asyncio.create_task(subscribe())
    await asyncio.wait_for(ready.wait(), 10)
    yield received
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def overrides(
    podman: PodmanService, etcd: EtcdServer, mosquitto: MosquittoServer, socket_dir: Path
) -> Callable[..., dict[str, Any]]:
    """`overrides(**extra)`: an agent's config against these real services, containers sampled
    every 250 ms, `extra` on top (dotted keys written with `__`)."""

    def make(**extra: Any) -> dict[str, Any]:
        return live_overrides(
            etcd.endpoint,
            socket_dir,
            mosquitto.endpoint,
            resource_monitoring__container__socket=str(podman.socket),
            resource_monitoring__container__collection_interval="250ms",
            **extra,
        )

    return make
