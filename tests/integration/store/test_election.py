"""Liveness, candidacy and compaction of one Election against a real etcd."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from agent.config import Compaction
from agent.evaluate.fleet import Fleet
from agent.health import Progress
from agent.model import Record
from agent.store.election import LEADER_KEY, Election
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from tests.conftest import require_binary
from tests.support.services import EtcdServer

pytestmark = pytest.mark.integration

PREFIX = "/elect"


def election(store: EtcdStore, node: str, submitted: list[Record], interval: float) -> Election:
    # The election itself writes nothing: the fleet chores it runs submit records.
    fleet = Fleet(
        store, KeyMaker(node), prefix=PREFIX, manifests=lambda: (), submit=submitted.extend
    )
    return Election(
        store,
        KeyMaker(node),
        prefix=PREFIX,
        ttl_s=5,
        compaction=Compaction.model_validate({"enabled": True, "interval": f"{interval}s"}),
        progress=Progress(),
        chores=(fleet.step,),
    )


async def test_one_candidate_wins_and_resigning_frees_the_seat(store: EtcdStore) -> None:
    submitted: list[Record] = []
    first = election(store, "n1", submitted, 3600)
    second = election(store, "n2", submitted, 3600)
    await first.step()
    await second.step()
    assert (first.leader, second.leader) == (True, False)
    assert await store.get(f"{PREFIX}/{LEADER_KEY}".encode()) == b"n1"
    assert await store.get(f"{PREFIX}/nodes/n2/agent".encode()) is not None
    await first.resign()
    assert await store.get(f"{PREFIX}/nodes/n1/agent".encode()) is None
    await second.step()
    assert second.leader
    assert submitted == []


async def test_the_elected_agent_compacts_to_the_revision_of_one_interval_ago(
    store: EtcdStore, etcd: EtcdServer
) -> None:
    leader = election(store, "n1", [], 0.5)
    await store.put(b"/elect/data", b"old")
    await leader.step()  # remembers the current revision, compacts nothing yet
    old_revision = await store.revision()
    await store.put(b"/elect/data", b"new")
    await asyncio.sleep(0.6)
    await leader.step()  # compacts to the remembered revision
    etcdctl = require_binary("etcdctl")

    def read_at(revision: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [etcdctl, f"--endpoints={etcd.endpoint}", "get", f"--rev={revision}", "/elect/data"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )

    assert "required revision has been compacted" in read_at(old_revision - 2).stderr
    kept = read_at(old_revision)
    assert kept.returncode == 0, kept.stderr
    assert "old" in kept.stdout
