"""Buffer and etcd costs: append cost, batched drain vs one put per record, one node's footprint.

Prints one JSON line. Starts its own etcd on loopback (a temp dir), so run it from the repo root:
`.venv/bin/python bench/store.py`. The baseline for the drain (one put per record, awaited one by
one) runs in the same process against the same etcd, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collectors import Collector  # noqa: E402
from agent.collectors.agent import AgentCollector  # noqa: E402
from agent.collectors.node import NodeCollector  # noqa: E402
from agent.config import Config, EtcdConnection, load_config  # noqa: E402
from agent.evaluate.rollup import Rollups  # noqa: E402
from agent.health import Progress  # noqa: E402
from agent.model import Record, ResourceType  # noqa: E402
from agent.recorder import RecorderStats  # noqa: E402
from agent.store.buffer import AsyncBuffer, Buffer, BufferStats  # noqa: E402
from agent.store.etcd import EtcdStore  # noqa: E402
from agent.store.keys import KeyMaker  # noqa: E402
from agent.store.pusher import Pusher, PushStats  # noqa: E402
from tests.support.services import EtcdServer  # noqa: E402

HOUR_S = 3600


def event_records(keys: KeyMaker, count: int) -> list[Record]:
    return [
        keys.event(
            ResourceType.MODEL,
            "vision-system",
            event_type="deadline_miss",
            severity="info",
            message=f"activation {i} finished after its deadline",
            details={"activation": i, "response_ms": 8.4},
        )
        for i in range(count)
    ]


def bench_append(work: Path, count: int, batch: int) -> float:
    keys = KeyMaker("VisionHPC")
    records = event_records(keys, count)
    buffer = Buffer(work / f"append-{batch}.sqlite3", 2**30)
    buffer.open()
    started = time.perf_counter()
    for start in range(0, count, batch):
        buffer.put(records[start : start + batch])
    elapsed = time.perf_counter() - started
    buffer.close()
    return elapsed / count * 1e6


async def bench_drain(work: Path, etcd: EtcdServer, count: int) -> float:
    config = load_config(REPO / "config" / "agent.yaml")
    connection = EtcdConnection(endpoints=(etcd.endpoint,))
    store = EtcdStore(connection)
    buffer = AsyncBuffer(Buffer(work / "drain.sqlite3", 2**30))
    await buffer.open()
    await buffer.put(event_records(KeyMaker("VisionHPC"), count))
    retention = config.data_storage.retention
    pusher = Pusher(
        buffer,
        store,
        prefix="/bench/drain",
        retention_s={
            "metrics": retention.metrics,
            "events": retention.events,
            "state_transitions": retention.state_transitions,
        },
        max_txn_ops=connection.max_txn_ops,
        max_request_bytes=connection.max_request_bytes,
        progress=Progress(),
    )
    started = time.perf_counter()
    await pusher.flush()
    elapsed = time.perf_counter() - started
    if buffer.stats.depth or pusher.stats.pushed != count:
        raise RuntimeError(f"the drain left {buffer.stats.depth} records behind")
    await buffer.close()
    await store.close()
    return count / elapsed


async def bench_single_puts(etcd: EtcdServer, count: int) -> float:
    store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,)))
    records = event_records(KeyMaker("VisionHPC"), count)
    started = time.perf_counter()
    for record in records:
        await store.put(f"/bench/single/{record.key}".encode(), record.value)
    elapsed = time.perf_counter() - started
    await store.close()
    return count / elapsed


async def footprint(config: Config) -> dict[str, float]:
    """One simulated hour of the default config's records: what etcd receives from one node.

    The node and agent collectors really run; only the clock between cycles is simulated.
    """
    node = config.node.name
    keys = KeyMaker(node)
    interval = config.resource_monitoring.node.collection_interval
    rollups = Rollups(config.data_storage.history_window)
    collectors: list[Collector] = [
        NodeCollector.from_config(config),
        AgentCollector(node, BufferStats, PushStats, RecorderStats),
    ]
    cycles = int(HOUR_S / interval)
    start_ns = time.time_ns()
    written = 0
    written_bytes = 0
    latest: set[str] = set()
    history_per_hour = 0
    for cycle in range(cycles):
        now = start_ns + int(cycle * interval * 1e9)
        for collector in collectors:
            for sample in await collector.collect():
                record = keys.metric(
                    sample.resource_type,
                    sample.resource_id,
                    name=sample.metric,
                    value=sample.value,
                    unit=sample.unit,
                    ts_ns=now,
                )
                latest.add(record.key)
                written += 1
                written_bytes += record.size
                stamped = type(sample)(
                    sample.resource_type,
                    sample.resource_id,
                    sample.metric,
                    sample.value,
                    sample.unit,
                    now,
                )
                if (closed := rollups.add(stamped)) is not None:
                    rollup = keys.rollup(
                        closed.series[0],
                        closed.series[1],
                        name=closed.series[2],
                        window_start_ns=closed.window_start_ns,
                        window_s=rollups.window_s,
                        stats=closed.stats,
                    )
                    written += 1
                    written_bytes += rollup.size
                    history_per_hour += 1
    retention_hours = config.data_storage.retention.metrics / HOUR_S
    return {
        "keys_per_hour": written,
        "bytes_per_hour": written_bytes,
        "live_keys": len(latest) + round(history_per_hour * retention_hours) + 1,
        "latest_keys": len(latest),
        "history_keys_per_hour": history_per_hour,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--single", type=int, default=2_000)
    args = parser.parse_args()
    config = load_config(REPO / "config" / "agent.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        append_batched = bench_append(work, args.records, 50)
        append_single = bench_append(work, min(args.records, 5_000), 1)
        with EtcdServer(work / "etcd") as etcd:
            drain = await bench_drain(work, etcd, args.records)
            single = await bench_single_puts(etcd, args.single)
    result = {
        "append_us_per_record": round(append_batched, 2),
        "append_us_per_record_unbatched": round(append_single, 2),
        "drain_records_per_s": round(drain),
        "single_put_records_per_s": round(single),
        "drain_over_single": round(drain / single, 1),
        **(await footprint(config)),
        "records": args.records,
        "targets": {"drain_records_per_s": 10_000, "drain_over_single": 10},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
