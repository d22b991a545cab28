"""The read side's costs: a metrics query under load beside a bare etcd range, a /metrics scrape
at 300 models, and the RSS the HTTP server adds.

Prints one JSON line. Starts its own etcd on loopback (a temp dir); run from the repo root:
`.venv/bin/python bench/api.py`. The query path is the agent's own (`QueryApi` behind
`HttpServer`, the real `EtcdStore`) in this process; the floor is the same reads through the same
`EtcdStore` without HTTP, in the same run.

- query: `GET .../model/vision-system/metrics?metric_names=cpu_usage,memory_usage,latency&from=-1h`
  with one hour of 60 s history windows per metric (3 latest keys, 3 ranges of 60 windows),
  sent at `--rate` requests/s over `--seconds` on 4 keep-alive connections, by a client in
  another process.
- scrape: `GET /metrics` of a latest table with 300 models (the metrics a container collector
  gives each) and 2 supervised tasks per model.
- server_rss_mb: a child process imports the whole agent, then starts the listener and serves
  2,000 scrapes and queries; the RSS growth from before the listener to after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.clock import rfc3339  # noqa: E402
from agent.config import EtcdConnection  # noqa: E402
from agent.manifests import load_manifests  # noqa: E402
from agent.metrics import MODEL_VIEW_METRICS  # noqa: E402
from agent.model import ResourceType, Sample  # noqa: E402
from agent.runtime.httpd import HttpServer  # noqa: E402
from agent.serve.api import Local, QueryApi  # noqa: E402
from agent.serve.prometheus import TaskFigures, expose  # noqa: E402
from agent.store.etcd import EtcdStore, Put  # noqa: E402
from agent.store.keys import KeyMaker  # noqa: E402
from tests.support.services import EtcdServer  # noqa: E402

PREFIX = "/piccolo/monitoring/"
METRICS = ("cpu_usage", "memory_usage", "latency")
WINDOW_S = 60
TARGET = (
    "/api/v1/monitoring/resources/model/vision-system/metrics"
    "?metric_names=cpu_usage,memory_usage,latency&from=-1h"
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def seed(store: EtcdStore) -> None:
    """One hour of 60 s windows and the latest value of each metric of vision-system."""
    keys = KeyMaker("VisionHPC")
    now = time.time_ns()
    puts: list[Put] = []
    for metric in METRICS:
        record = keys.metric(
            ResourceType.MODEL, "vision-system", name=metric, value=12.5, unit="%", ts_ns=now
        )
        puts.append(Put((PREFIX + record.key).encode(), record.value, None))
        for window in range(60):
            start = now - (59 - window) * WINDOW_S * 10**9
            key = f"{PREFIX}model/vision-system/history/{metric}/{rfc3339(start)}"
            value = json.dumps({"schema": 1, "min": 1, "max": 9, "avg": 5, "count": 60, "last": 4})
            puts.append(Put(key.encode(), value.encode(), None))
    for start in range(0, len(puts), 100):
        await store.put_many(puts[start : start + 100])


async def floor(store: EtcdStore, count: int) -> list[float]:
    """The same keys as one query, each range straight through the EtcdStore one after the
    other: the latest values, then each metric's hour of history (ms per set)."""
    took = []
    now = time.time_ns()
    for _ in range(count):
        started = time.perf_counter()
        latest = f"{PREFIX}model/vision-system/metrics/".encode()
        revision, _ = await store.range(latest, latest[:-1] + b"0")
        for metric in METRICS:
            base = f"{PREFIX}model/vision-system/history/{metric}/"
            await store.range(
                (base + rfc3339(now - 3600 * 10**9)).encode(),
                (base + rfc3339(now + 1)).encode(),
                revision=revision,
            )
        took.append((time.perf_counter() - started) * 1e3)
    return took


def latest_table(models: int) -> dict[tuple[str, str, str], Sample]:
    table: dict[tuple[str, str, str], Sample] = {}
    now = time.time_ns()
    for index in range(models):
        name = f"model-{index:03d}"
        for _, metric, unit in MODEL_VIEW_METRICS:
            value: float | str = "Running" if metric in {"phase", "load_status"} else 1.5 * index
            if metric == "last_error":
                continue
            table[("model", name, metric)] = Sample(
                ResourceType.MODEL, name, metric, value, unit, now
            )
    return table


class Client:
    """One keep-alive HTTP/1.1 connection; `get` returns (status, body, ms)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        if self._reader is None:
            raise RuntimeError("not connected")
        self._writer.write(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self._reader.readexactly(length)
        return status, body, (time.perf_counter() - started) * 1e3

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def load(port: int, rate: float, seconds: float) -> tuple[list[float], int]:
    clients = [Client(port) for _ in range(4)]
    took: list[float] = []
    errors = 0
    interval = 1 / rate
    total = int(rate * seconds)
    start = time.perf_counter()

    async def one(index: int) -> None:
        nonlocal errors
        client = clients[index % len(clients)]
        status, _, ms = await client.get(TARGET)
        took.append(ms)
        errors += status != 200

    locks = [asyncio.Lock() for _ in clients]

    async def paced(index: int) -> None:
        async with locks[index % len(clients)]:
            await one(index)

    tasks = []
    for index in range(total):
        delay = start + index * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(paced(index)))
    await asyncio.gather(*tasks)
    for client in clients:
        client.close()
    return took, errors


def child_rss() -> float:
    """The RSS (MB) that a listener adds to a process that imported the whole agent."""
    code = f"""
import asyncio, sys, psutil
sys.path.insert(0, {str(REPO)!r})
import agent.pipeline
from agent.runtime.httpd import HttpServer, Response
from agent.serve.prometheus import expose
sys.path.insert(0, {str(REPO / "bench")!r})
from api import latest_table
table = latest_table(300)
async def handler(request):
    body = expose("n", table.values(), present={{("model", k[1]): "B" for k in table}}).render()
    return Response(200, body, "text/plain")
async def main():
    me = psutil.Process()
    before = me.memory_info().rss
    server = HttpServer(handler)
    await server.listen_tcp("127.0.0.1", 0, None)
    port = server.sockets[0].getsockname()[1]
    for _ in range(200):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(10):
            writer.write(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            line = [h for h in head.split(b"\\r\\n") if h.lower().startswith(b"content-length")][0]
            length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()
    after = me.memory_info().rss
    await server.close()
    print((after - before) / 2**20)
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return float(done.stdout.strip().splitlines()[-1])


async def run(rate: float, seconds: float) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        EtcdServer(Path(tmp) / "etcd") as etcd,
    ):
        store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,)))
        await seed(store)
        manifests = load_manifests([REPO / "config" / "manifests"])
        table = latest_table(300)
        present: dict[tuple[str, str], str] = {("model", k[1]): "B" for k in table}
        tasks = [
            TaskFigures(name, task, 1000, 3, 1, 7_000_000, 5_000_000.0, 40_000.0)
            for (_, name) in present
            for task in ("detect", "track")
        ]

        def metrics(openmetrics: bool) -> bytes:  # noqa: FBT001 - Local's shape
            return expose("VisionHPC", table.values(), present=present, tasks=tasks).render(
                openmetrics=openmetrics
            )

        async def pending(prefix: str, limit: int) -> list[tuple[str, bytes]]:
            del prefix, limit
            return []

        local = Local(
            node="VisionHPC",
            latest=lambda: table,
            state=lambda _kind, _rid: None,
            pending=pending,
            alerts=list,
            health=lambda: (True, []),
            metrics=metrics,
        )
        api = QueryApi(store, prefix=PREFIX, manifests=lambda: manifests, local=local)
        server = HttpServer(api.handle)
        await server.listen_tcp("127.0.0.1", 0, None)
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        warm = Client(port)
        for _ in range(20):
            await warm.get(TARGET)
        status, body, _ = await warm.get(TARGET)
        if status != 200 or len(json.loads(body)["metrics"][0]["history"]) != 60:
            raise RuntimeError(f"the query does not read an hour of history: {body[:300]!r}")
        base = await floor(store, 400)
        # The load comes from another process: a client in this one would compete with the
        # server for this event loop and the GIL.
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(port),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await client.communicate()
        measured = json.loads(out)
        took, errors = measured["took"], measured["errors"]
        base += await floor(store, 400)
        scrapes = []
        size = 0
        for _ in range(30):
            status, scraped, ms = await warm.get("/metrics")
            if status != 200:
                raise RuntimeError(f"scrape failed: {status}")
            scrapes.append(ms)
            size = len(scraped)
        series = sum(
            1 for line in scraped.decode().splitlines() if line and not line.startswith("#")
        )
        warm.close()
        await server.close()
        await store.close()
    scrape_ms = statistics.median(scrapes)
    return {
        "rate_per_s": rate,
        "requests": len(took),
        "errors": errors,
        "query_ms_p50": round(percentile(took, 0.5), 3),
        "query_ms_p99": round(percentile(took, 0.99), 3),
        "etcd_range_ms_p50": round(percentile(base, 0.5), 3),
        "etcd_range_ms_p99": round(percentile(base, 0.99), 3),
        "query_p99_over_floor": round(percentile(took, 0.99) / percentile(base, 0.99), 2),
        "target_ms": round(2 * percentile(base, 0.99) + 2, 3),
        "models": 300,
        "series": series,
        "scrape_ms": round(scrape_ms, 3),
        "scrape_bytes": size,
        "scrape_us_per_series": round(scrape_ms * 1e3 / series, 3),
        "server_rss_mb": round(child_rss(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", type=int, help="(internal) be the load on this port")
    args = parser.parse_args()
    if args.client:
        took, errors = asyncio.run(load(args.client, args.rate, args.seconds))
        print(json.dumps({"took": took, "errors": errors}))
        return
    print(json.dumps(asyncio.run(run(args.rate, args.seconds))))


if __name__ == "__main__":
    main()
