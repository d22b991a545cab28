"""The timing service on a real ingest socket: verdicts are taken on drained input, by timers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.evaluate.states import StateTracker
from agent.manifests import build_inventory, load_manifests
from agent.model import Record
from agent.store.keys import KeyMaker
from agent.timing.service import TimingService
from tests.support.seed import REPO

pytestmark = pytest.mark.integration

MS = 1_000_000
MODEL, TASK = "vision-system", "detect"  # period 10 ms, deadline 8 ms, budget 2 ms, ASIL B
KEY = (MODEL, TASK)


class Harness:
    def __init__(self, service: TimingService, records: list[Record], path: Path) -> None:
        self.service = service
        self.records = records
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.path = str(path)

    def send(self, **fields: object) -> None:
        message = {"v": 1, "model": MODEL, "task": TASK, **fields}
        self.sender.sendto(json.dumps(message).encode(), self.path)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records if "/events/" in r.key]


@pytest.fixture
async def harness(socket_dir: Path) -> AsyncIterator[Harness]:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory(config.node.name, load_manifests(config.manifests.paths))
    records: list[Record] = []
    service = TimingService(
        lambda: (config, inventory),
        keys=KeyMaker(config.node.name),
        tracker=StateTracker(),
        submit=records.extend,
        mqtt=None,
        socket_path=socket_dir / "ingest.sock",
    )
    await service.ingest.start()
    runner = asyncio.create_task(service.run())
    await asyncio.sleep(0)
    h = Harness(service, records, socket_dir / "ingest.sock")
    try:
        yield h
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        service.ingest.close()
        h.sender.close()


async def test_an_end_queued_on_the_socket_when_the_check_fires_is_read_first(
    harness: Harness,
) -> None:
    # The agent was busy: the task's start and end (1 ms after its release, well within the 8 ms
    # deadline) wait on the socket when the hang-up check of that activation runs. Judging before
    # reading them (what the agent did) counted a miss that did not happen.
    # No await in between: the event loop is as busy as the agent's was.
    release = time.monotonic_ns()
    harness.send(type="start", seq=1, ts_ns=release, release_ns=release)
    harness.service.ingest.drain()  # the start is read in time
    supervisor = harness.service.supervisors.get(KEY)
    assert supervisor is not None
    harness.send(type="end", seq=1, ts_ns=release + MS)
    time.sleep(0.015)  # noqa: ASYNC251 - the agent is busy past the deadline and the grace
    harness.service._check(KEY)  # the timer fires with the end still unread
    assert supervisor.deadline_misses == 0
    assert supervisor.activations == 1
    assert not [e for e in harness.events() if e["type"] == "deadline_miss"]


async def test_an_end_sent_after_the_grace_takes_the_hang_up_back_visibly(
    harness: Harness,
) -> None:
    now = time.monotonic_ns()
    harness.send(type="start", seq=7, ts_ns=now - 30 * MS, release_ns=now - 30 * MS)
    await asyncio.sleep(0.02)  # read, and judged hung by the timer (its deadline is long past)
    supervisor = harness.service.supervisors.get(KEY)
    assert supervisor is not None
    assert supervisor.deadline_misses == 1
    # The sender was preempted between its end (1 ms after the release) and its sendto.
    harness.send(type="end", seq=7, ts_ns=now - 29 * MS)
    await asyncio.sleep(0.02)
    assert supervisor.deadline_misses == 0
    assert supervisor.corrections == 1
    events = harness.events()
    assert [(e["type"], e["details"].get("status")) for e in events] == [
        ("deadline_miss", "firing"),
        ("deadline_miss", "resolved"),
        ("deadline_miss_corrected", None),
    ]
    assert "corrected" in str(events[1]["message"])


async def test_a_hang_up_is_found_by_its_timer_at_the_deadline_plus_the_grace(
    harness: Harness,
) -> None:
    release = time.monotonic_ns()
    harness.send(type="start", seq=1, ts_ns=release, release_ns=release)
    for _ in range(200):
        await asyncio.sleep(0.001)
        supervisor = harness.service.supervisors.get(KEY)
        if supervisor is not None and supervisor.deadline_misses:
            break
    found = time.monotonic_ns()
    assert supervisor is not None
    assert supervisor.deadline_misses == 1
    # 8 ms deadline + 2 ms grace; the event loop's timers fire up to 1 ms late, plus a busy host.
    assert 10 * MS <= found - release <= 40 * MS


async def test_a_task_that_keeps_its_deadlines_wakes_no_timer(harness: Harness) -> None:
    start = time.monotonic_ns()
    for seq in range(50):
        release = start + seq * 10 * MS
        await asyncio.sleep(max(0.0, (release - time.monotonic_ns()) / 1e9))
        harness.send(type="start", seq=seq, ts_ns=release, release_ns=release)
        harness.send(type="end", seq=seq, ts_ns=release + MS // 2)
    await asyncio.sleep(0.005)
    supervisor = harness.service.supervisors.get(KEY)
    assert supervisor is not None
    assert supervisor.activations == 50
    assert supervisor.deadline_misses == 0
    # 50 activations in 0.5 s; a 5 ms tick would have woken 100 times.
    assert harness.service.wakeups <= 2
