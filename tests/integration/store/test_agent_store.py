"""The whole agent against a real etcd: keys, leases, outages, crashes, failover, election."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import EtcdConnection
from agent.store.etcd import EtcdStore
from agent.store.leases import ttl_s
from tests.support.agentproc import AgentProcess
from tests.support.services import EtcdCluster, EtcdServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "/piccolo/monitoring/"
WINDOW_NS = 1_000_000_000
DAY = 86400


@pytest.fixture
async def reader() -> AsyncIterator[Callable[..., EtcdStore]]:
    stores: list[EtcdStore] = []

    def make(*endpoints: str) -> EtcdStore:
        connection = EtcdConnection.model_validate({"endpoints": endpoints, "dial_timeout": "2s"})
        stores.append(EtcdStore(connection))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
def agents(tmp_path: Path) -> Any:
    started: list[AgentProcess] = []

    def start(name: str = "a", **overrides: Any) -> AgentProcess:
        settings = {"data_storage.history_window": "1s", **overrides}
        proc = AgentProcess(tmp_path / name, settings).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def endpoints(*servers: EtcdServer) -> dict[str, Any]:
    return {"data_storage.configuration.endpoints": [s.endpoint for s in servers]}


async def value(store: EtcdStore, key: str) -> dict[str, Any] | None:
    raw = await store.get((PREFIX + key).encode())
    return None if raw is None else json.loads(raw)


async def history_windows(store: EtcdStore, metric: str) -> list[int]:
    """Window starts (ns) of the node's history rollups of `metric`, in order."""
    entries = await store.get_prefix(f"{PREFIX}node/VisionHPC/history/{metric}/".encode())
    starts = []
    for key, raw in entries:
        document = json.loads(raw)
        assert document["schema"] == 1
        assert set(document) >= {"min", "max", "avg", "count", "last"}
        stamp = key.decode().rsplit("/", 1)[1]
        starts.append(_parse_rfc3339(stamp))
    return starts


def _parse_rfc3339(stamp: str) -> int:
    seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return int(seconds) * 1_000_000_000 + int(stamp[20:29])


def gaps(starts: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.pairwise(starts) if b - a != WINDOW_NS]


def buffered(agent: AgentProcess) -> int:
    with sqlite3.connect(agent.state_dir / "buffer.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


async def test_keys_values_and_shared_retention_leases(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    store = reader(etcd.endpoint)
    agents(**endpoints(etcd))
    memory = await eventually(
        lambda: value(store, "node/VisionHPC/metrics/memory_usage"), 15, "node metrics in etcd"
    )
    assert set(memory) == {"schema", "value", "unit", "ts", "node"}
    assert (memory["unit"], memory["node"]) == ("MB", "VisionHPC")
    assert memory["ts"].endswith("Z")
    assert len(memory["ts"]) == len("2026-11-26T06:56:49.123456789Z")

    liveness = await value(store, "nodes/VisionHPC/agent")
    assert liveness is not None
    assert liveness["version"] == "0.1.0"
    lease = await store.key_lease(f"{PREFIX}nodes/VisionHPC/agent".encode())
    assert lease
    info = await store.lease_info(lease)
    assert info is not None
    assert info[0] == 10

    # Live (agent.evaluate.impact): its packages' models are not running here (no Podman), and
    # one is on another node, so the scenario's dependencies are not OK.
    dependency = await value(store, "scenario/adas-activation/metrics/dependency_status")
    assert dependency is not None
    assert dependency["value"] == "Warning"

    # Keys of one class written in one window share one lease whose TTL covers the retention.
    metric_keys = await store.get_prefix(f"{PREFIX}node/VisionHPC/metrics/".encode())
    leases = {await store.key_lease(key) for key, _ in metric_keys}
    assert len(leases) <= 2, "one lease per window; a window boundary may fall in between"
    (granted, _) = await store.lease_info(next(iter(leases)))  # type: ignore[misc,arg-type]
    assert granted == ttl_s(30 * DAY)

    # The other node of the examples has no agent: its model is Unknown, with one event that
    # says it never had one (not "lost": nothing was ever seen of it).
    state = await eventually(
        lambda: value(store, "model/sensor-fusion/state"), 10, "node_absent marking"
    )
    assert state["state"] == "Unknown"
    assert await store.key_lease(f"{PREFIX}model/sensor-fusion/state".encode()) in (None, 0)
    events = await store.get_prefix(f"{PREFIX}model/sensor-fusion/events/".encode())
    assert len(events) == 1
    event = json.loads(events[0][1])
    assert (event["type"], event["severity"]) == ("node_absent", "info")
    event_lease = await store.key_lease(events[0][0])
    assert event_lease
    event_info = await store.lease_info(event_lease)
    assert event_info is not None
    assert event_info[0] == ttl_s(90 * DAY)


async def test_node_labels_are_published_and_a_reload_republishes_them(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    store = reader(etcd.endpoint)
    agent = agents(**endpoints(etcd), **{"node.labels": {"gpu": "available", "zone": "front"}})

    async def labels() -> dict[str, str] | None:
        liveness = await value(store, "nodes/VisionHPC/agent")
        return None if liveness is None else liveness.get("labels")

    found = await eventually(labels, 15, "the liveness key")
    assert found == {"gpu": "available", "zone": "front"}
    agent.config["node"]["labels"] = {"gpu": "none"}
    agent.write_config()
    agent.signal(signal.SIGHUP)

    async def relabelled() -> bool:
        return await labels() == {"gpu": "none"}

    await eventually(relabelled, 15, "the new labels in the liveness key")


async def test_an_etcd_outage_of_60_s_loses_nothing(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    store = reader(etcd.endpoint)
    agent = agents(**endpoints(etcd))
    await eventually(lambda: history_windows(store, "load1"), 15, "first rollups")
    etcd.stop()
    outage_started = time.time_ns()
    await asyncio.sleep(60)
    assert agent.running
    assert buffered(agent) > 300, "records produced during the outage wait in the buffer"
    etcd.start()
    outage_ended = time.time_ns()
    await eventually(
        lambda: _covers(store, outage_ended + 2 * WINDOW_NS), 30, "the backlog to arrive"
    )
    assert agent.stop() == 0
    starts = await history_windows(store, "load1")
    assert gaps(starts) == []
    assert starts[0] < outage_started - WINDOW_NS
    assert starts[-1] > outage_ended
    assert buffered(agent) == 0, "the buffer is empty once everything arrived"
    # Replays overwrite: the one-off event exists once, however often batches were retried.
    events = await store.get_prefix(f"{PREFIX}model/sensor-fusion/events/".encode())
    assert len(events) == 1
    assert "etcd unreachable, buffering locally" in agent.log()


async def _covers(store: EtcdStore, until_ns: int) -> bool:
    starts = await history_windows(store, "load1")
    return bool(starts) and starts[-1] >= until_ns


async def test_sigkill_while_pushing_loses_nothing(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    store = reader(etcd.endpoint)
    etcd.stop()
    agent = agents(**endpoints(etcd))
    agent.wait_for_log("ready in")
    started = time.time_ns()
    await asyncio.sleep(6)
    etcd.start()
    agent.wait_for_log("etcd reachable", timeout=15)
    agent.kill()
    killed = time.time_ns()
    agent.start()
    await eventually(lambda: _covers(store, killed + 2 * WINDOW_NS), 30, "pushes after restart")
    starts = [s for s in await history_windows(store, "load1") if s < killed - WINDOW_NS]
    assert starts[0] <= started + WINDOW_NS
    assert gaps(starts) == [], "every window closed before the kill arrived"
    assert agent.stop() == 0


async def test_pushes_continue_when_a_cluster_member_dies(
    tmp_path: Path, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    with EtcdCluster(tmp_path / "cluster", size=3) as cluster:
        first, second, third = cluster.members
        store = reader(second.endpoint, third.endpoint)
        agents(**endpoints(first, second, third))
        await eventually(lambda: history_windows(store, "load1"), 20, "first pushes")
        first.kill()
        killed = time.time_ns()
        await eventually(
            lambda: _covers(store, killed + 3 * WINDOW_NS), 30, "pushes through the others"
        )


async def test_a_corrupt_buffer_is_quarantined_and_reported(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], tmp_path: Path, agents: Any
) -> None:
    state = tmp_path / "a" / "state"
    state.mkdir(parents=True)
    (state / "buffer.sqlite3").write_bytes(b"\x00garbage" * 1000)
    store = reader(etcd.endpoint)
    agent = agents(**endpoints(etcd))

    async def events_of(kind: str) -> list[dict[str, Any]]:
        events = await store.get_prefix(f"{PREFIX}node/VisionHPC/events/".encode())
        return [e for e in map(json.loads, (v for _, v in events)) if e["type"] == kind]

    (event,) = await eventually(lambda: events_of("buffer_corrupt"), 15, "buffer_corrupt")
    assert "moved aside" in event["message"]
    # Nothing in it could be read back: counted as lost, and the file gives its space back.
    (salvage,) = await eventually(lambda: events_of("buffer_salvaged"), 15, "buffer_salvaged")
    assert "0 records and alerts recovered" in salvage["message"]
    assert agent.running
    assert not list(state.glob("buffer.sqlite3.corrupt-*"))
    quarantined = await value(store, "node/VisionHPC/metrics/agent_buffer_quarantined")
    assert quarantined is not None
    assert quarantined["value"] == 1


async def test_the_elected_agent_dies_and_the_other_takes_over(
    etcd: EtcdServer, reader: Callable[..., EtcdStore], agents: Any
) -> None:
    store = reader(etcd.endpoint)
    vision = agents("vision", **endpoints(etcd))
    chassis = agents("chassis", **endpoints(etcd), **{"node.name": "ChassisECU"})

    async def both_alive() -> bool:
        return len(await store.get_prefix(f"{PREFIX}nodes/".encode())) == 2

    await eventually(both_alive, 15, "both liveness keys")
    leader = await eventually(
        lambda: store.get(f"{PREFIX}election/leader".encode()), 10, "an elected agent"
    )
    # Start from a clean slate: whatever the start-up race marked does not count.
    for model in ("vision-system", "adas-planner", "sensor-fusion"):
        await store.delete(f"{PREFIX}model/{model}/state".encode())
    dead, survivor, lost_models = (
        (vision, b"ChassisECU", ("vision-system", "adas-planner"))
        if leader == b"VisionHPC"
        else (chassis, b"VisionHPC", ("sensor-fusion",))
    )
    dead.signal(signal.SIGKILL)
    killed = time.monotonic()
    await eventually(lambda: _is(store, f"{PREFIX}election/leader", survivor), 20, "the takeover")
    for model in lost_models:
        key = f"model/{model}/state"
        state = await eventually(functools.partial(value, store, key), 10, model)
        assert state["state"] == "Unknown"
        assert state["reason"].startswith("node_lost")
    # Within the lease TTL (10 s), plus one liveness round of the survivor and the push.
    assert time.monotonic() - killed < 10 + 10 / 3 + 3


async def _is(store: EtcdStore, key: str, expected: bytes) -> bool:
    return await store.get(key.encode()) == expected
