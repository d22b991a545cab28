"""Models that run as Podman containers (seed 2.3, 7.3).

A model's container is the one labelled `piccolo.io/model=<model>`, else the one named like the
model. The containers are listed (one libpod call) when the event stream or a pidfd reported a
change to a model's container, at least every `LIST_EVERY_S`, and at every collection while the
event stream is down. Each collection reads every running container's cgroup and network
namespace directly, through files kept open (`agent.runtime.openfiles`): Podman 4.3's stats API
reports throttling as 0, swaps network in and out, and gives host RAM as the limit of an
unlimited container. Rates (CPU %, network MB/s) come from the difference to the previous
collection.

A container that dies must be seen within milliseconds, not at the next sample. Podman 4.3's
event stream is too slow for that (with the file events logger the service polls every 250 ms),
so each running container's init process is also watched through a pidfd on the event loop: when
it exits, its memory cgroup still exists for some tens of milliseconds, so the OOM kill counter is
read at once, and conmon writes the exit code to `exits_dir/<id>` within a few milliseconds. The
model's new view goes out from there; the `died` event that follows only confirms it. The event
stream still reports starts, restarts and everything the pidfd cannot see.

Three paths observe a model concurrently: a collection (list, then read the cgroups in a worker
thread), a refresh after an event (inspect) and a pidfd exit. Each observation is stamped from one
counter when it is made, before any await, and kept per model apart: runtime facts (what the list,
an inspect or an exit said of the container) and measurements (a cgroup and network reading). An
observation older than the one kept is dropped, and a view is only ever built, in one synchronous
step, from the newest of each, so an answer that was under way while something newer landed
cannot bring back a stale phase or an unmeasured view.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from agent.backoff import Backoff
from agent.collectors.models import samples_of
from agent.model import EventView, ModelView
from agent.runtime.cgroups import CgroupPaths, cgroup_paths, read_cgroup
from agent.runtime.openfiles import OpenFiles
from agent.runtime.podman import ContainerInfo, RuntimeUnavailable
from agent.runtime.procfs import HOST_NETNS, net_dev, net_totals, netns_inode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from agent.manifests import PlacedModel
    from agent.model import Sample
    from agent.runtime.podman import ContainerEvent, ImageInfo

_log = logging.getLogger(__name__)

MODEL_LABEL = "piccolo.io/model"
MB = 2**20
RECENT_EVENTS = 10
SIZES_EVERY_S = 60.0
"""Image and volume sizes change rarely, and `system df` walks the volumes: read them seldom."""
EXITS_DIR = Path("/run/libpod/exits")
"""Where conmon writes a container's exit code (podman's `tmp_dir`/exits, root's default)."""
EXIT_CODE_WAIT_S = 0.1
EVENT_STATUSES = {
    "died",
    "start",
    "restart",
    "oom",
    "pause",
    "unpause",
    "remove",
    "stop",
    "kill",
}
LIST_EVERY_S = 10.0
"""While the event stream is up, containers are listed after an event, and at least this often;
without it, at every collection."""


@dataclass(frozen=True, slots=True)
class _Reading:
    """What the kernel says about one running container."""

    at: float
    pid: int
    paths: CgroupPaths
    host_network: bool
    cpu_ns: int | None
    memory_bytes: int | None
    memory_limit: int | None
    oom_kills: int | None
    pids: int | None
    throttled: int | None
    throttled_ns: int | None
    rx_bytes: int | None
    tx_bytes: int | None


class ContainerRuntime(Protocol):
    """What the collector asks of Podman: `agent.runtime.podman.PodmanClient` is the real one."""

    async def list_containers(self) -> list[ContainerInfo]: ...

    async def inspect(
        self, name_or_id: str, *, with_size: bool = False
    ) -> ContainerInfo | None: ...

    async def images(self) -> list[ImageInfo]: ...

    async def volume_sizes(self) -> dict[str, int]: ...

    async def start(self, name_or_id: str, timeout_s: float = 30.0) -> bool: ...

    def events(
        self, since_ns: int | None = None, *, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[ContainerEvent]: ...

    async def close(self) -> None: ...


class _Facts(NamedTuple):
    """What the runtime last said of a model's container, stamped when it was asked.

    Named tuples, this and `_Measurement`: one of each is made per model and collection, and a
    tuple is built in less than half the time of a frozen dataclass.
    """

    seq: int
    info: ContainerInfo | None
    """None: no container for the model (or podman unreachable)."""
    reachable: bool = True
    override: tuple[str, str] | None = None
    """(phase, reason) in place of the container's: an exit seen before its exit code."""


class _Measurement(NamedTuple):
    """A collection's reading of a model's running container, stamped before it was read."""

    seq: int
    container_id: str
    pid: int
    reading: _Reading | None
    """None: the container's cgroup could not be read."""
    before: _Reading | None
    """The previous reading of the same container: rates are the difference to it."""


def _samenetns_inode(pid: int) -> bool:
    """Whether `pid` shares the agent's network namespace (host network: no per-model traffic)."""
    namespace = netns_inode(pid)
    return namespace is not None and namespace == HOST_NETNS


def read_container(
    pid: int,
    paths: CgroupPaths | None = None,
    files: OpenFiles | None = None,
    *,
    host_network: bool | None = None,
) -> _Reading | None:
    """The cgroup and network counters of the container whose init process is `pid`.

    What an earlier reading of the same process learnt saves work: `paths` (its cgroups),
    `files` (its accounting files, kept open) and `host_network` (whether it shares the host's
    network namespace, when there is no traffic of its own to read).
    """
    paths = paths or cgroup_paths(pid)
    if paths is None:
        return None
    stats = read_cgroup(paths, files, psi=False)
    rx = tx = None
    if host_network is None:
        host_network = _samenetns_inode(pid)
    if not host_network:
        counters = net_dev(pid, files=files)
        if counters is not None:
            total = net_totals(counters)
            rx, tx = total.rx_bytes, total.tx_bytes
    return _Reading(
        at=time.monotonic(),
        pid=pid,
        paths=paths,
        host_network=host_network,
        cpu_ns=stats.cpu_usage_ns,
        memory_bytes=stats.memory_working_set_bytes
        if stats.memory_working_set_bytes is not None
        else stats.memory_bytes,
        memory_limit=stats.memory_limit_bytes,
        oom_kills=stats.oom_kills,
        pids=stats.pids,
        throttled=stats.nr_throttled,
        throttled_ns=stats.throttled_ns,
        rx_bytes=rx,
        tx_bytes=tx,
    )


_PHASES = {
    "running": "Running",
    "paused": "Pending",
    "created": "Pending",
    "configured": "Pending",
    "initialized": "Pending",
}


def phase_of(info: ContainerInfo | None) -> tuple[str, str]:
    """(phase, reason) of a model from its container, as in the seed's Model template."""
    if info is None:
        return "Pending", "no container for this model"
    if info.state in _PHASES:
        return _PHASES[info.state], info.state
    if info.state not in {"exited", "stopped"}:
        return "Unknown", f"container state {info.state}"
    if info.oom_killed:
        return "Failed", "OOMKilled"
    if info.exit_code == 0 and info.restart_policy not in {"always", "unless-stopped"}:
        return "Succeeded", "completed"
    return "Failed", f"exited with code {info.exit_code}"


def _rate(now: int | None, before: int | None, seconds: float, scale: float) -> float | None:
    if now is None or before is None or seconds <= 0:
        return None
    return max(0, now - before) / seconds / scale


class ContainerCollector:
    def __init__(
        self,
        client: ContainerRuntime,
        node: str,
        models: Callable[[], Mapping[str, PlacedModel]],
        node_memory_bytes: int,
        exits_dir: Path = EXITS_DIR,
    ) -> None:
        self.views: dict[str, ModelView] = {}
        self._client = client
        self._node = node
        self._models = models
        self._node_memory = node_memory_bytes
        self._previous: dict[str, _Reading] = {}
        """Last reading per container id."""
        self._errors: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._events: dict[str, deque[EventView]] = {}
        self._oom_seen: dict[str, int] = {}
        self._unavailable = False
        self.sizes: tuple[dict[str, int], dict[str, int]] = ({}, {})
        """Image name or id -> bytes, and volume -> bytes, refreshed every `SIZES_EVERY_S`."""
        self._sizes_at = -SIZES_EVERY_S
        self._exits_dir = exits_dir
        self._pidfds: dict[str, int] = {}
        """Container id -> pidfd of its init process, watched on the event loop."""
        self._exited: dict[str, int | None] = {}
        """Container id -> start time of the run whose exit the pidfd already reported."""
        self._oom_exits: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_view: Callable[[ModelView], None] | None = None
        self._listed: list[ContainerInfo] | None = None
        self._listed_at = 0.0
        self._stream_up = False
        self._dirty = True
        """An event came since the last list: list again."""
        self._files: dict[str, tuple[int, OpenFiles]] = {}
        """Container id -> (pid of its init process, its accounting files kept open)."""
        self._clock = itertools.count(1)
        """Stamps observations in the order they were made (taken before their awaits)."""
        self._listed_seq = 0
        self._facts: dict[str, _Facts] = {}
        """Model -> the newest runtime facts of its container (list, inspect, pidfd exit)."""
        self._measured: dict[str, _Measurement] = {}
        """Model -> the newest reading of its container's cgroup and network."""
        self._deliberate: dict[str, int] = {}
        """Container id -> when podman was told to stop or kill it (an owner's decision)."""
        self._exit_seen: dict[str, int] = {}
        """Container id -> pid whose exit its pidfd reported: that pid is not watched again."""

    def _match(self, containers: Sequence[ContainerInfo]) -> dict[str, ContainerInfo]:
        wanted = self._models()
        by_label = {c.labels.get(MODEL_LABEL): c for c in containers if c.labels.get(MODEL_LABEL)}
        by_name = {c.name: c for c in containers}
        found = {}
        for name in wanted:
            container = by_label.get(name) or by_name.get(name)
            if container is not None:
                found[name] = container
        return found

    def model_of(self, container: ContainerInfo | None, name: str = "") -> str | None:
        """The model a container (or container name) belongs to, if any."""
        wanted = self._models()
        if container is not None:
            label = container.labels.get(MODEL_LABEL)
            if label in wanted:
                return label
            name = container.name
        return name if name in wanted else None

    def _note(self, model: str, event: EventView) -> None:
        self._events.setdefault(model, deque(maxlen=RECENT_EVENTS)).append(event)
        if event.severity != "info":
            self._errors[model] = self._errors.get(model, 0) + 1
            self._last_error[model] = event.message

    def _observe(self, model: str, facts: _Facts) -> None:
        """Keep `facts` unless newer ones are kept already (an older observation is dropped)."""
        known = self._facts.get(model)
        if known is None or known.seq <= facts.seq:
            self._facts[model] = facts

    def _observe_list(
        self, models: Sequence[str], matched: Mapping[str, ContainerInfo], listed: int
    ) -> None:
        """`_observe` of what the list stamped `listed` says of each of `models`.

        A list kept from an earlier collection was observed then: facts as new as it are what it
        says (stamps are unique), newer ones stay, so only models without either are observed.
        """
        kept = self._facts
        for name in models:
            known = kept.get(name)
            if known is None or known.seq < listed:
                kept[name] = _Facts(listed, matched.get(name))

    def _measure(self, model: str, info: ContainerInfo, reading: _Reading | None, seq: int) -> None:
        """Keep a reading of `model`'s container `info` unless a newer one is kept already."""
        known = self._measured.get(model)
        if known is not None and known.seq > seq:
            return
        before = self._previous.get(info.id)
        if reading is not None:
            self._previous[info.id] = reading
            if reading.oom_kills and reading.oom_kills > self._oom_seen.get(info.id, 0):
                self._oom_seen[info.id] = reading.oom_kills
                self._note(
                    model,
                    EventView(
                        "oom_kill",
                        time.time_ns(),
                        "a process of the model was OOM-killed",
                        "warning",
                    ),
                )
        self._measured[model] = _Measurement(seq, info.id, info.pid, reading, before)

    def _current(self, model: str, info: ContainerInfo) -> bool:
        """Whether the newest facts of `model` still say that `info`'s process runs."""
        facts = self._facts.get(model)
        return (
            facts is not None
            and facts.info is not None
            and facts.info.id == info.id
            and facts.info.pid == info.pid
            and facts.info.state == "running"
        )

    def _build_view(self, name: str) -> ModelView:
        """The view of `name` from its newest facts and newest measurement: no await in here."""
        facts = self._facts.get(name)
        if facts is not None and not facts.reachable:
            return ModelView(name, self._node, "Unknown", "podman unreachable", "none")
        info = facts.info if facts is not None else None
        phase, reason = phase_of(info)
        oom_exit = info is not None and info.id in self._oom_exits and phase == "Failed"
        if oom_exit:
            reason = "OOMKilled"
        if facts is not None and facts.override is not None:
            phase, reason = facts.override
        common: dict[str, Any] = {
            "name": name,
            "node": self._node,
            "phase": phase,
            "reason": reason,
            "source": "container" if info is not None else "none",
            "error_count": self._errors.get(name, 0),
            "last_error": self._last_error.get(name),
            "events": tuple(self._events.get(name, ())),
        }
        if info is None:
            return ModelView(**common)
        # One constructor call: dataclasses.replace costs as much as a build, each time.
        common.update(
            container=info.name,
            container_id=info.id,
            image=info.image,
            image_id=info.image_id,
            created_ns=info.created_ns,
            started_ns=info.started_ns,
            finished_ns=info.finished_ns,
            restarts=info.restart_count,
            exit_code=info.exit_code if phase != "Running" else None,
            oom_killed=info.oom_killed or oom_exit,
            ready=phase == "Running",
            restart_policy=info.restart_policy,
            pod_ip=info.ip_address if phase == "Running" else None,
            host_network=info.host_network,
            cpu_limit_cores=info.cpu_quota / info.cpu_period
            if info.cpu_quota and info.cpu_period
            else None,
        )
        measured = self._measured.get(name)
        # Measurements belong to a running process: not to a stopped container, nor to the
        # previous run of a restarted one.
        if (
            phase != "Running"
            or measured is None
            or measured.reading is None
            or measured.container_id != info.id
            or measured.pid != info.pid
        ):
            return ModelView(**common)
        reading, before = measured.reading, measured.before
        limit = reading.memory_limit or info.memory_limit
        memory = reading.memory_bytes
        elapsed = reading.at - before.at if before is not None else 0.0
        return ModelView(
            **common,
            cpu_percent=_rate(reading.cpu_ns, before.cpu_ns if before else None, elapsed, 1e7),
            memory_mb=None if memory is None else memory / MB,
            memory_limit_mb=None if limit is None else limit / MB,
            memory_percent=None if memory is None else memory / (limit or self._node_memory) * 100,
            network_rx_mbps=_rate(
                reading.rx_bytes, before.rx_bytes if before else None, elapsed, MB
            ),
            network_tx_mbps=_rate(
                reading.tx_bytes, before.tx_bytes if before else None, elapsed, MB
            ),
            pids=reading.pids,
            cpu_throttled=reading.throttled,
            cpu_throttled_s=None if reading.throttled_ns is None else reading.throttled_ns / 1e9,
            oom_kills=reading.oom_kills,
        )

    def _publish(self, model: str) -> ModelView:
        view = self._build_view(model)
        self.views[model] = view
        return view

    async def _containers(self, seq: int) -> tuple[list[ContainerInfo], int]:
        """The containers, and the stamp of their list (`seq` if listed now): listed again after
        an event, without a stream, or every LIST_EVERY_S."""
        now = time.monotonic()
        listed = self._listed
        if (
            listed is None
            or self._dirty
            or not self._stream_up
            or now - self._listed_at >= LIST_EVERY_S
        ):
            self._dirty = False  # before the call: an event during it marks the list again
            try:
                listed = await self._client.list_containers()
            except RuntimeUnavailable:
                self._listed = None
                raise
            self._listed, self._listed_at, self._listed_seq = listed, now, seq
        return listed, self._listed_seq

    @property
    def events_live(self) -> bool:
        """Whether the event stream is up (the containers are then listed on events only)."""
        return self._stream_up

    def _files_of(self, info: ContainerInfo) -> OpenFiles:
        known = self._files.get(info.id)
        if known is not None and known[0] == info.pid:
            return known[1]
        if known is not None:
            known[1].close()
        files = OpenFiles(limit=32)
        self._files[info.id] = (info.pid, files)
        return files

    async def collect(self) -> Sequence[Sample]:
        seq = next(self._clock)
        try:
            containers, listed = await self._containers(seq)
        except RuntimeUnavailable as exc:
            if not self._unavailable:
                _log.warning("podman unreachable; models are Unknown until it answers: %s", exc)
            self._unavailable = True
            for name in self._models():
                self._observe(name, _Facts(seq, None, reachable=False))
            self.views = {name: self._build_view(name) for name in self._models()}
            return samples_of(self.views.values())
        if self._unavailable:
            _log.info("podman reachable again")
            self._unavailable = False
        matched = self._match(containers)
        models = list(self._models())
        self._observe_list(models, matched, listed)
        # What runs by the newest facts: a refresh or an exit newer than the list counts.
        running = {
            name: info
            for name in models
            if (info := self._facts[name].info) is not None and info.state == "running" and info.pid
        }

        # What an earlier reading of the same process learnt, gathered here on the loop: the
        # worker thread only reads.
        jobs: dict[str, tuple[int, CgroupPaths | None, OpenFiles, bool | None]] = {}
        for name, info in running.items():
            before = self._previous.get(info.id)
            known = before if before is not None and before.pid == info.pid else None
            jobs[name] = (
                info.pid,
                known.paths if known else None,
                self._files_of(info),
                known.host_network if known else None,
            )
        measured_at = next(self._clock)
        readings = await asyncio.to_thread(
            lambda: {
                name: read_container(pid, paths, files, host_network=host)
                for name, (pid, paths, files, host) in jobs.items()
            }
        )
        # From here to the sizes, one synchronous step: what landed during the reading (an exit,
        # a refresh) is newer than the list and stays.
        for name, info in running.items():
            self._measure(name, info, readings.get(name), measured_at)
        wanted = self._models()
        self._facts = {k: v for k, v in self._facts.items() if k in wanted}
        self._measured = {k: v for k, v in self._measured.items() if k in wanted}
        self.views = {name: self._build_view(name) for name in wanted}
        for name, info in running.items():
            reading = readings.get(name)
            # Armed already: `_arm` would return at once.
            if reading is not None and info.id not in self._pidfds and self._current(name, info):
                self._arm(name, info, reading.paths)
        self._forget_gone()
        await self._refresh_sizes()
        return samples_of(self.views.values())

    def _forget_gone(self) -> None:
        """Drop what is kept of containers that no model's newest facts name any longer."""
        live: set[str] = set()
        running_ids: set[str] = set()
        for facts in self._facts.values():
            if (info := facts.info) is not None:
                live.add(info.id)
                if info.state == "running":
                    running_ids.add(info.id)
        self._previous = {k: v for k, v in self._previous.items() if k in live}
        self._exited = {k: v for k, v in self._exited.items() if k in live}
        self._exit_seen = {k: v for k, v in self._exit_seen.items() if k in live}
        self._oom_exits &= live
        for container_id in set(self._pidfds) - live:
            self._disarm(container_id)
        for container_id in set(self._files) - running_ids:
            self._files.pop(container_id)[1].close()

    def _arm(self, model: str, info: ContainerInfo, paths: CgroupPaths) -> None:
        """Watch the container's init process: its exit wakes the event loop at once."""
        if info.id in self._pidfds or not info.pid or self._exit_seen.get(info.id) == info.pid:
            return
        try:
            fd = os.pidfd_open(info.pid)
        except OSError:
            return  # already gone: the next collection or the died event reports it
        self._pidfds[info.id] = fd
        asyncio.get_running_loop().add_reader(fd, self._process_exited, model, info, paths, fd)

    def _disarm(self, container_id: str) -> None:
        fd = self._pidfds.pop(container_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _process_exited(self, model: str, info: ContainerInfo, paths: CgroupPaths, fd: int) -> None:
        del fd
        seq = next(self._clock)  # the exit is observed now, though reported after its exit code
        self._disarm(info.id)
        self._exit_seen[info.id] = info.pid
        self._dirty = True  # the list says it runs: list again at the next collection
        at = time.time_ns()
        # The cgroup outlives its last process by some tens of milliseconds: read it now.
        stats = read_cgroup(paths)
        before = self._previous.get(info.id)
        known = before.oom_kills if before is not None and before.oom_kills is not None else 0
        oom = stats.oom_kills is not None and stats.oom_kills > known
        task = asyncio.create_task(self._report_exit(model, info, at, seq, oom=oom))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exit_code(self, container_id: str) -> int | None:
        path = self._exits_dir / container_id
        deadline = time.monotonic() + EXIT_CODE_WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(path.read_text().strip())
            await asyncio.sleep(0.002)
        return None

    async def _report_exit(
        self, model: str, info: ContainerInfo, at: int, seq: int, *, oom: bool
    ) -> None:
        code = await self._exit_code(info.id)
        self._exited[info.id] = info.started_ns
        if oom:
            self._oom_exits.add(info.id)
        exited = replace(
            info,
            state="exited",
            pid=0,
            exit_code=137 if code is None and oom else (code if code is not None else -1),
            oom_killed=oom,
            finished_ns=at,
        )
        event = (
            EventView("oom_kill", at, "the model's container was OOM-killed", "warning")
            if oom
            else _event_view("died", code, at)
        )
        self._note(model, event)
        override = ("Failed", "container process exited") if code is None and not oom else None
        # Dropped if a refresh begun after the exit already told it (from podman, with its code).
        self._observe(model, _Facts(seq, exited, override=override))
        view = self._publish(model)
        if self._on_view is not None:
            self._on_view(view)

    async def _refresh_sizes(self) -> None:
        if time.monotonic() - self._sizes_at < SIZES_EVERY_S:
            return
        self._sizes_at = time.monotonic()
        try:
            images = await self._client.images()
            volumes = await self._client.volume_sizes()
        except RuntimeUnavailable as exc:
            _log.debug("image and volume sizes not read: %s", exc)
            return
        by_image: dict[str, int] = {}
        for image in images:
            by_image[image.id] = image.size
            for name in image.names:
                by_image[name] = image.size
        self.sizes = (by_image, volumes)

    async def refresh(self, model: str, event: EventView | None) -> ModelView | None:
        """A runtime event for `model`: note it and rebuild its view from a fresh inspect."""
        if event is not None:
            self._note(model, event)
        seq = next(self._clock)
        try:
            info = await self._client.inspect(model)
        except RuntimeUnavailable:
            info = None
        if info is None or info.labels.get(MODEL_LABEL) not in (None, model):
            matched = self._match(await self._client.list_containers())
            info = matched.get(model)
        # The view keeps the last measurements of the same process until the next collection.
        self._observe(model, _Facts(seq, info))
        self._publish(model)
        if info is not None and info.state == "running" and info.pid and self._current(model, info):
            paths = await asyncio.to_thread(cgroup_paths, info.pid)
            if paths is not None and self._current(model, info):
                self._arm(model, info, paths)
        # Built again after the await: an exit or a collection may have landed meanwhile.
        return self._publish(model)

    async def watch(self, on_view: Callable[[ModelView], None]) -> None:
        """Follow the event stream; each event of a model's container gives `on_view` a new view.

        Also arms the pidfd watch of the models' processes, which reports through `on_view` too.
        """
        self._on_view = on_view
        backoff = Backoff(cap_s=5.0)

        def opened() -> None:
            self._stream_up = True
            self._dirty = True  # what happened while it was down is listed at the next cycle

        while True:
            try:
                async for event in self._client.events(on_open=opened):
                    backoff.reset()
                    if event.status not in EVENT_STATUSES:
                        continue
                    model = self.model_of(None, event.name) or (
                        event.attributes.get(MODEL_LABEL)
                        if event.attributes.get(MODEL_LABEL) in self._models()
                        else None
                    )
                    if model is None:
                        continue  # another container's churn: no reason to list again
                    self._dirty = True
                    note: EventView | None = _event_view(
                        event.status, event.exit_code, event.time_ns
                    )
                    if event.status == "died" and event.id in self._exited:
                        note = None  # the pidfd reported this exit already
                    if event.status in {"stop", "kill"}:
                        self._deliberate[event.id] = event.time_ns
                    view = await self.refresh(model, note)
                    if view is not None:
                        on_view(view)
            except RuntimeUnavailable as exc:
                _log.debug("podman event stream ended: %s", exc)
            finally:
                self._stream_up = False
            await asyncio.sleep(backoff.next())

    def stopped_on_purpose(self, model: str) -> bool:
        """Whether the model's container was stopped or killed through podman since it last
        started (`podman stop`, `podman kill`, an orchestrator): not a crash to undo."""
        facts = self._facts.get(model)
        info = facts.info if facts is not None else None
        if info is None:
            return False
        when = self._deliberate.get(info.id)
        return when is not None and (info.started_ns is None or when >= info.started_ns)

    async def restart(self, model: str) -> bool:
        """Start the model's stopped container again; True if podman started it."""
        facts = self._facts.get(model)
        info = facts.info if facts is not None else None
        if info is None:
            raise RuntimeUnavailable(f"no container of {model} to start")
        return await self._client.start(info.id)

    async def close(self) -> None:
        for container_id in list(self._pidfds):
            self._disarm(container_id)
        for _, files in self._files.values():
            files.close()
        self._files.clear()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(RuntimeUnavailable):
            await self._client.close()


def _event_view(status: str, exit_code: int | None, time_ns: int) -> EventView:
    if status == "died":
        severity = "info" if exit_code == 0 else "warning"
        return EventView("died", time_ns, f"container died with exit code {exit_code}", severity)
    if status == "oom":
        return EventView("oom_kill", time_ns, "container was OOM-killed", "warning")
    return EventView(status, time_ns, f"container {status}", "info")
