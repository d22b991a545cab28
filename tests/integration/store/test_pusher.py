"""The pusher against a real etcd: order, leases, refusals, and what stays in the buffer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import EtcdConnection
from agent.health import Progress
from agent.model import Record, ResourceType
from agent.store.buffer import AsyncBuffer, Buffer
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from agent.store.leases import ttl_s
from agent.store.pusher import Pusher
from tests.support.services import EtcdServer

pytestmark = pytest.mark.integration

PREFIX = "/push"
RETENTION = {"metrics": 100.0, "events": 200.0, "state_transitions": 300.0}


@pytest.fixture
async def parts(
    tmp_path: Path, etcd: EtcdServer
) -> AsyncIterator[tuple[AsyncBuffer, EtcdStore, KeyMaker]]:
    store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,)))
    buffer = AsyncBuffer(Buffer(tmp_path / "b.sqlite3", 10**8))
    await buffer.open()
    yield buffer, store, KeyMaker("n1")
    await buffer.close()
    await store.close()


def pusher(buffer: AsyncBuffer, store: EtcdStore, **limits: int) -> Pusher:
    return Pusher(
        buffer,
        store,
        prefix=PREFIX,
        retention_s=RETENTION,  # type: ignore[arg-type]
        max_txn_ops=limits.get("max_txn_ops", 128),
        max_request_bytes=limits.get("max_request_bytes", 1_500_000),
        progress=Progress(),
    )


def metric(keys: KeyMaker, value: int, name: str = "cpu") -> Record:
    return keys.metric(ResourceType.NODE, "n1", name=name, value=value, unit="%", ts_ns=value)


def event(keys: KeyMaker, i: int) -> Record:
    return keys.event(ResourceType.NODE, "n1", event_type="tick", severity="info", message=str(i))


async def test_everything_arrives_with_one_shared_lease_per_class(
    parts: tuple[AsyncBuffer, EtcdStore, KeyMaker],
) -> None:
    buffer, store, keys = parts
    await buffer.put([event(keys, i) for i in range(300)] + [metric(keys, 1)])
    push = pusher(buffer, store)
    await push.flush()
    assert buffer.stats.depth == 0
    assert push.stats.transactions == 3
    events = await store.get_prefix(f"{PREFIX}/node/n1/events/".encode())
    assert [json.loads(v)["message"] for _, v in events] == [str(i) for i in range(300)]
    leases = {await store.key_lease(k) for k, _ in events}
    assert len(leases) == 1
    info = await store.lease_info(leases.pop())  # type: ignore[arg-type]
    assert info is not None
    assert info[0] == ttl_s(200.0)
    assert push.leases_granted == 2


async def test_a_newer_value_written_while_a_batch_is_in_flight_wins(
    parts: tuple[AsyncBuffer, EtcdStore, KeyMaker],
) -> None:
    buffer, store, keys = parts
    await buffer.put([metric(keys, 1)] + [event(keys, i) for i in range(200)])
    push = pusher(buffer, store, max_txn_ops=100)
    assert await push.push_once() == 100  # carries cpu=1; the next batch is prefetched meanwhile
    await buffer.put([metric(keys, 2)])
    await push.flush()
    latest = await store.get(f"{PREFIX}/node/n1/metrics/cpu".encode())
    assert latest is not None
    assert json.loads(latest)["value"] == 2
    assert buffer.stats.depth == 0


async def test_a_lost_lease_is_granted_again(
    parts: tuple[AsyncBuffer, EtcdStore, KeyMaker],
) -> None:
    buffer, store, keys = parts
    push = pusher(buffer, store)
    await buffer.put([event(keys, 0)])
    await push.flush()
    ((key, _),) = await store.get_prefix(f"{PREFIX}/node/n1/events/".encode())
    first = await store.key_lease(key)
    assert first
    await store.revoke(first)
    await buffer.put([event(keys, 1)])
    await push.flush()
    assert buffer.stats.depth == 0
    ((key, _),) = await store.get_prefix(f"{PREFIX}/node/n1/events/".encode())
    assert await store.key_lease(key) not in (None, 0, first)


async def test_a_record_too_large_for_etcd_is_dropped_and_the_rest_arrive(
    parts: tuple[AsyncBuffer, EtcdStore, KeyMaker], etcd: EtcdServer
) -> None:
    buffer, _, keys = parts
    store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,), max_request_bytes=25_000))
    big = Record(
        "node/n1/events/big",
        b"x" * 30_000,
        "events",
        event(keys, 0).severity,
        upsert=False,
        created_ns=1,
    )
    small = [event(keys, i) for i in range(40)]
    await buffer.put([*small[:20], big, *small[20:]])
    # The request limit admits about 20 KB: the adapter refuses the batch before sending it.
    push = pusher(buffer, store, max_request_bytes=25_000)
    await push.flush()
    assert buffer.stats.depth == 0
    assert push.stats.rejected == 1
    assert await store.count_prefix(f"{PREFIX}/node/n1/events/".encode()) == 40
    await store.close()


async def test_nothing_is_acknowledged_while_etcd_is_away(
    parts: tuple[AsyncBuffer, EtcdStore, KeyMaker], etcd: EtcdServer
) -> None:
    buffer, store, keys = parts
    await buffer.put([event(keys, i) for i in range(50)])
    etcd.stop()
    push = pusher(buffer, store)
    await push.flush()
    assert buffer.stats.depth == 50
    etcd.start()
    await push.flush()
    assert buffer.stats.depth == 0
    assert await store.count_prefix(f"{PREFIX}/node/n1/events/".encode()) == 50
