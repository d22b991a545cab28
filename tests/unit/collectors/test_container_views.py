"""Collections, refreshes and pidfd exits of the container collector, interleaved on purpose.

The runtime is a fake whose calls can be held: a held call takes its answer when it is made (what
podman saw then) and returns it only when the test lets it go, so the test decides what lands
while the collector awaits. The container's process is a real child (its exit wakes the
collector's pidfd); its cgroup is a fake tree of files, and the lookup of its cgroup paths can be
held too (the collector makes it in a worker thread).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from agent.collectors import container as container_module
from agent.collectors.container import MODEL_LABEL, ContainerCollector
from agent.manifests import PlacedModel
from agent.model import EventView
from agent.runtime.cgroups import CgroupPaths
from agent.runtime.podman import ContainerEvent, ContainerInfo, ImageInfo, RuntimeUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from agent.model import ModelView

T = TypeVar("T")

MODEL = "m"
MB = 2**20
WAIT_S = 5.0


class Hold:
    """One call of the fake runtime, held until the test releases it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        self.entered.set()
        await self._released.wait()


class FakePodman:
    """What the collector asks of Podman, answering from `containers` (by name)."""

    def __init__(self, *containers: ContainerInfo) -> None:
        self.containers = {c.name: c for c in containers}
        self.stream_up = True
        """Whether `events()` opens (else it fails, and the collector lists at each collection)."""
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.opened = asyncio.Event()
        self._holds: defaultdict[str, deque[Hold]] = defaultdict(deque)
        self._events: asyncio.Queue[ContainerEvent] = asyncio.Queue()

    def hold(self, call: str) -> Hold:
        """Hold the next `call` (list, inspect, images, volumes) until released."""
        hold = Hold()
        self._holds[call].append(hold)
        return hold

    def emit(self, event: ContainerEvent) -> None:
        self._events.put_nowait(event)

    async def _answer(self, call: str, answer: T) -> T:
        self.calls[call] += 1
        if self._holds[call]:
            await self._holds[call].popleft().wait()
        return answer

    async def list_containers(self) -> list[ContainerInfo]:
        return await self._answer("list", list(self.containers.values()))

    async def inspect(self, name_or_id: str, *, with_size: bool = False) -> ContainerInfo | None:
        del with_size
        found = next((c for c in self.containers.values() if name_or_id in {c.name, c.id}), None)
        return await self._answer("inspect", found)

    async def images(self) -> list[ImageInfo]:
        return await self._answer("images", [])

    async def volume_sizes(self) -> dict[str, int]:
        return await self._answer("volumes", {})

    async def start(self, name_or_id: str, timeout_s: float = 30.0) -> bool:
        del name_or_id, timeout_s
        raise RuntimeUnavailable("these tests order observations; nothing is started")

    async def events(
        self, since_ns: int | None = None, *, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[ContainerEvent]:
        del since_ns
        self.calls["events"] += 1
        if not self.stream_up:
            raise RuntimeUnavailable("the fake's event stream is down")
        if on_open is not None:
            on_open()
        self.opened.set()
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        pass


class Cgroups:
    """A fake v1 cgroup tree (16 MiB limit, 8 MiB used) and a `cgroup_paths` that can be held."""

    def __init__(self, root: Path) -> None:
        files = {
            "cpuacct/cpuacct.usage": "1000000\n",
            "memory/memory.usage_in_bytes": f"{8 * MB}\n",
            "memory/memory.limit_in_bytes": f"{16 * MB}\n",
            "memory/memory.stat": "total_inactive_file 0\n",
            "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            "pids/pids.current": "1\n",
        }
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        self.paths = CgroupPaths(
            cpu=None,
            cpuacct=root / "cpuacct",
            memory=root / "memory",
            pids=root / "pids",
            unified=None,
        )
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self._held: deque[threading.Event] = deque()

    def hold(self) -> threading.Event:
        """Hold the next lookup until the returned event is set."""
        gate = threading.Event()
        with self._lock:
            self._held.append(gate)
        return gate

    def __call__(self, pid: int, **_: Any) -> CgroupPaths | None:
        del pid
        with self._lock:
            gate = self._held.popleft() if self._held else None
        if gate is not None:
            self.entered.set()
            gate.wait(WAIT_S)
        return self.paths


def running_container(pid: int) -> ContainerInfo:
    return ContainerInfo(
        id="c0ffee",
        name=MODEL,
        image="localhost/busybox:test",
        image_id="sha256:1",
        labels={MODEL_LABEL: MODEL},
        state="running",
        pid=pid,
        exit_code=0,
        oom_killed=False,
        created_ns=1,
        started_ns=2,
        finished_ns=None,
        restart_count=0,
        restart_policy="",
        restart_max_retries=0,
        memory_limit=16 * MB,
        cpu_quota=None,
        cpu_period=None,
        pod=None,
        cgroup_parent=None,
        cgroup_path=None,
        size_root_fs=None,
    )


def exited(info: ContainerInfo, code: int) -> ContainerInfo:
    return replace(info, state="exited", pid=0, exit_code=code, finished_ns=3)


def event(status: str, exit_code: int | None = None) -> ContainerEvent:
    return ContainerEvent("c0ffee", MODEL, status, exit_code, time.time_ns(), {MODEL_LABEL: MODEL})


async def until(test: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.001)


def measured(view: ModelView) -> bool:
    return view.memory_limit_mb == 16.0 and view.memory_mb == 8.0


class World:
    """A collector over the fake runtime, its model's process, and the views it handed out."""

    def __init__(self, tmp_path: Path, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.info = running_container(process.pid)
        self.podman = FakePodman(self.info)
        self.cgroups = Cgroups(tmp_path / "cgroup")
        self.exits = tmp_path / "exits"
        self.exits.mkdir()
        placed = {MODEL: PlacedModel(MODEL, None, None, ())}
        self.collector = ContainerCollector(
            self.podman,
            "testnode",
            lambda: placed,
            2**30,
            exits_dir=self.exits,
        )
        self.published: list[ModelView] = []
        self._watch: asyncio.Task[None] | None = None

    async def watch(self, *, stream: bool = True) -> None:
        """Watch as the agent does: events (if `stream`) and pidfd exits reach `published`."""
        self.podman.stream_up = stream
        self._watch = asyncio.create_task(self.collector.watch(self.published.append))
        if stream:
            await asyncio.wait_for(self.podman.opened.wait(), WAIT_S)
        else:
            await until(lambda: self.podman.calls["events"] > 0, "the event stream tried")

    @property
    def view(self) -> ModelView:
        return self.collector.views[MODEL]

    def kill(self, code: int) -> None:
        """The model's process exits with `code`, as conmon and podman then tell it."""
        (self.exits / self.info.id).write_text(f"{code}\n")
        self.podman.containers[MODEL] = exited(self.info, code)
        self.process.kill()
        self.process.wait()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.collector.close()


@pytest.fixture
def process() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


@pytest.fixture
async def world(
    tmp_path: Path, process: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    world = World(tmp_path, process)
    monkeypatch.setattr(container_module, "cgroup_paths", world.cgroups)
    yield world
    await world.close()


def running_after_failed(views: list[ModelView]) -> bool:
    phases = [v.phase for v in views]
    return "Failed" in phases and "Running" in phases[phases.index("Failed") :]


async def test_a_refresh_around_a_collection_keeps_its_measurements(world: World) -> None:
    """The OOM test's flake: a start event's refresh, begun before the first collection, ended
    after it, and wrote its unmeasured view over the measured one."""
    gate = world.cgroups.hold()  # the refresh's lookup of the cgroup paths, in a worker thread
    refresh = asyncio.create_task(world.collector.refresh(MODEL, None))
    await asyncio.to_thread(world.cgroups.entered.wait, WAIT_S)
    assert world.cgroups.entered.is_set()

    await world.collector.collect()
    assert measured(world.view), world.view

    gate.set()
    returned = await refresh
    assert returned is not None
    assert returned.phase == "Running"
    assert measured(returned), returned
    assert measured(world.view), world.view


async def test_a_refresh_during_the_sizes_keeps_the_measurements(world: World) -> None:
    """The other window: a refresh while the collection reads image and volume sizes."""
    sizes = world.podman.hold("images")
    collect = asyncio.create_task(world.collector.collect())
    await asyncio.wait_for(sizes.entered.wait(), WAIT_S)
    assert measured(world.view), world.view

    returned = await world.collector.refresh(MODEL, None)
    assert returned is not None
    assert measured(returned), returned
    sizes.release()
    await collect
    assert measured(world.view), world.view


async def test_a_list_from_before_a_died_event_does_not_bring_the_model_back(
    world: World,
) -> None:
    """Without the event stream's watch, each collection lists; the refresh is the one a died
    event would start."""
    await world.collector.collect()
    assert world.view.phase == "Running"

    listing = world.podman.hold("list")
    collect = asyncio.create_task(world.collector.collect())
    await asyncio.wait_for(listing.entered.wait(), WAIT_S)  # the list says: running

    # The container dies where the pidfd does not look (the fake's process lives on).
    world.podman.containers[MODEL] = exited(world.info, 1)
    died = EventView("died", time.time_ns(), "container died with exit code 1", "warning")
    returned = await world.collector.refresh(MODEL, died)
    assert returned is not None
    assert returned.phase == "Failed"

    listing.release()
    await collect
    assert (world.view.phase, world.view.reason) == ("Failed", "exited with code 1")
    assert world.view.error_count == 1


async def test_a_list_from_before_a_pidfd_exit_does_not_bring_the_model_back(
    world: World,
) -> None:
    await world.watch(stream=False)  # each collection lists
    await world.collector.collect()  # arms the pidfd
    assert world.view.phase == "Running"

    listing = world.podman.hold("list")
    collect = asyncio.create_task(world.collector.collect())
    await asyncio.wait_for(listing.entered.wait(), WAIT_S)  # the list says: running

    world.kill(1)
    await until(lambda: any(v.phase == "Failed" for v in world.published), "the pidfd's view")

    listing.release()
    await collect
    assert (world.view.phase, world.view.reason) == ("Failed", "exited with code 1")
    assert world.view.error_count == 1  # the died event reported once, by the pidfd
    assert not running_after_failed([*world.published, world.view])


async def test_an_inspect_from_before_a_pidfd_exit_does_not_bring_the_model_back(
    world: World,
) -> None:
    await world.watch()
    await world.collector.collect()  # arms the pidfd
    published = len(world.published)

    inspecting = world.podman.hold("inspect")
    world.podman.emit(event("restart"))  # any event: the collector inspects the container
    await asyncio.wait_for(inspecting.entered.wait(), WAIT_S)  # the inspect says: running

    world.kill(137)
    await until(lambda: any(v.phase == "Failed" for v in world.published), "the pidfd's view")

    after_exit = len(world.published)
    inspecting.release()  # the refresh ends: its view reaches the watcher
    await until(lambda: len(world.published) > after_exit, "the refresh's view")
    assert (world.view.phase, world.view.reason) == ("Failed", "exited with code 137")
    assert not running_after_failed([*world.published[published:], world.view])


async def test_a_pidfd_exit_during_a_refresh_is_what_the_refresh_returns(world: World) -> None:
    await world.collector.collect()  # arms the pidfd
    gate = world.cgroups.hold()
    refresh = asyncio.create_task(world.collector.refresh(MODEL, EventView("x", 1, "x", "info")))
    await asyncio.to_thread(world.cgroups.entered.wait, WAIT_S)
    assert world.cgroups.entered.is_set()

    world.kill(1)
    await until(lambda: world.view.phase == "Failed", "the pidfd's view")
    gate.set()
    returned = await refresh
    assert returned is not None
    assert returned.phase == "Failed", returned
    assert world.view.phase == "Failed", world.view
