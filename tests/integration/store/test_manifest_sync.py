"""Manifests from an etcd prefix: applied, refreshed, rejected when invalid, cached for restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.etcd import EtcdStore
from tests.support.agentproc import AgentProcess
from tests.support.services import EtcdServer

pytestmark = pytest.mark.integration

MODEL = """\
apiVersion: piccolo.io/v1
kind: Model
metadata:
  name: {name}
spec:
  node: VisionHPC
"""


@pytest.fixture
def agent(tmp_path: Path, etcd: EtcdServer) -> Iterator[AgentProcess]:
    proc = AgentProcess(
        tmp_path / "agent",
        {
            "data_storage.configuration.endpoints": [etcd.endpoint],
            "manifests.etcd_prefix": "/piccolo/manifests",
            "manifests.etcd_refresh": "300ms",
        },
    )
    yield proc
    proc.kill()


async def test_manifests_from_etcd_are_applied_refreshed_and_cached(
    store: EtcdStore, agent: AgentProcess, etcd: EtcdServer
) -> None:
    await store.put(b"/piccolo/manifests/one", MODEL.format(name="etcd-model-1").encode())
    agent.start()
    agent.wait_for_log("monitoring model etcd-model-1", timeout=15)
    agent.wait_for_log("3 models, 2 packages, 1 scenario")

    await store.put(b"/piccolo/manifests/two", MODEL.format(name="etcd-model-2").encode())
    agent.wait_for_log("monitoring model etcd-model-2", timeout=10)

    await store.put(b"/piccolo/manifests/bad", b"apiVersion: piccolo.io/v1\nkind: Model\n")
    agent.wait_for_log("manifests in etcd rejected, keeping the running ones", timeout=10)
    agent.wait_for_log("etcd:/piccolo/manifests/bad:1:1: metadata: required field is missing")
    assert agent.running

    # A restart while etcd is away starts from the last set applied.
    assert agent.stop() == 0
    etcd.stop()
    agent.log_path.write_text("", encoding="utf-8")
    agent.start()
    agent.wait_for_log("ready in", timeout=15)
    log = agent.log()
    assert "monitoring model etcd-model-1" in log
    assert "monitoring model etcd-model-2" in log
