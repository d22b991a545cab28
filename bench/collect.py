"""Collection cost under a real workload: 300 processes and 20 model containers, two ways.

- First scenario (the keys without a prefix): each of the 300 processes is a model of its own,
  bound by pid file, so every process costs the whole pipeline (samples, rollups, status documents)
  every second.
- Node scenario (keys prefixed `node_`): the same 300 processes and 20 containers run on the node,
  but only 2 models are process-bound, found by matchers that scan every process on the node each
  cycle: one by name (a sleep whose argv[0] is distinctive) and one by command-line regular
  expression (a sleep with a distinctive argument).

Prints one JSON line (progress goes to stderr). Sets up and tears down everything itself: a
throwaway etcd, `podman system service` with the busybox test image (tests.support.services),
`sleep` children with pid files, containers labelled `piccolo.io/model=<name>` (most idle, a few
doing light CPU work under `--cpus`), and the real agent as a subprocess at a 1 s interval. Run it
from the repo root: `.venv/bin/python bench/collect.py` (as root: Podman runs as root here).

Measured in one run, in this order:
1. The agent (tests.support.agentproc.AgentProcess) with node, container and process collection
   every 1 s, the processes bound by pid file, Model manifests for the containers, and etcd as its
   store (buffer and pusher run): its RSS once ready (before the workload exists), then, after a
   warm-up with the workload, its CPU time (user+system) over a window of wall time as a percent
   of one core, and its RSS at the end. Beside it: the CPU of podman's API service and of etcd in
   the same window, and the agent's CPU per thread (main, other Python threads, gRPC's).
2. Once it has stopped, the node scenario's agent: a second AgentProcess with the same settings
   and etcd but only the 2 matcher bindings (and the 20 container models): its RSS once ready (the
   workload runs by then), then its CPU and RSS after the same warm-up and window as in 1, and the
   states it published in etcd for the 2 models.
   Then the idle agent: the same settings with no bindings and no model manifests, measured
   the same way: the agent's own floor (its node and self metrics, pushes, timers), so that
   `collection_cpu_pct_one_core` = agent minus idle is what collecting the workload costs.
3. With the agents stopped, in this process, cycle by cycle:
   - the first scenario's ProcessCollector over the 300 pid-file bindings, a raw reader (os.open/
     os.read of /proc/<pid>/stat and statm, nothing parsed) and a bare psutil loop over the same
     pids, interleaved (rotating order) so that machine noise hits all three alike; wall time and
     this process's CPU time per process, medians;
   - the node scenario's ProcessCollector over its 2 matcher bindings, each matcher alone
     (find_processes), and the raw reader and psutil loop over every pid on the node (listed at
     the start of each cycle, `node_processes_scanned`), per pid on the node, medians.
4. The agent's ContainerCollector (PodmanClient on the same socket) over the containers: median
   wall time of collect() per container, this process's CPU and the podman service's CPU (mean),
   first with the event stream down (the containers listed at every collection, keys
   `*_listing_each_cycle`), then with it up, as the agent runs (listed after events only). The
   list call covers every container on the machine (`containers_listed`), not only ours.

Targets: the agent at most 2 % of one core and 50 MB RSS (in both scenarios); the process collector
at most 1.5 times the raw reader. The agent runs with the `Environment=` of the systemd unit, and
the RSS of Python importing only the chosen libraries (`dependencies_floor_rss_mb`) is measured
beside it. Every child (sleeps, etcd, podman's service) gets SIGTERM if this
process dies; a guard process that dies with it kills the running agent, removes the containers and
the temporary folder if this process is killed before it could clean up. A SIGALRM deadline bounds
the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collectors.container import MODEL_LABEL, ContainerCollector  # noqa: E402
from agent.collectors.process import ProcessCollector  # noqa: E402
from agent.config import ProcessBinding  # noqa: E402
from agent.manifests import PlacedModel  # noqa: E402
from agent.runtime.podman import PodmanClient  # noqa: E402
from agent.runtime.procfs import ProcessMatcher, find_processes  # noqa: E402
from agent.runtime.procfs import pids as node_pids  # noqa: E402
from bench.harness import (  # noqa: E402
    cpu_s,
    on_alarm,
    on_term,
    raw_read,
    start_guard,
    thread_cpu,
)
from tests.support.agentproc import AgentProcess  # noqa: E402
from tests.support.services import EtcdServer, PodmanService, parent_death_hook  # noqa: E402

NODE = "VisionHPC"
MB = 2**20
LIGHT_WORK = (
    # About 2-4 % of a core each in busybox sh, for about 5 minutes at most.
    "i=0; while [ $i -lt 600 ]; do j=0; while [ $j -lt 4000 ]; do j=$((j+1)); done; "
    "sleep 0.5; i=$((i+1)); done"
)
CONTAINER_LIFETIME = ("sleep", "300")
SLEEPER = ("sleep", "600")
# The node scenario's two process-bound models, each found by a matcher scanning every process.
NODE_NAME_MODEL = "pn-by-name"
NODE_CMDLINE_MODEL = "pn-by-cmdline"
TARGETS = {"agent_cpu_pct_one_core": 2.0, "rss_mb": 50.0, "process_cost_over_raw": 1.5}


def log(message: str) -> None:
    print(f"collect: {message}", file=sys.stderr, flush=True)


# workload -----------------------------------------------------------------------------------


class Sleepers:
    """`count` children `sleep 600`, each with a pid file; all killed and reaped on exit.

    `argv` replaces the arguments of some of them by index (argv[0] included: the program run is
    always `sleep`), so that a name or command-line matcher can tell them apart.
    """

    def __init__(
        self, directory: Path, count: int, argv: Mapping[int, tuple[str, ...]] | None = None
    ) -> None:
        self.directory = directory
        self.count = count
        self.argv = dict(argv or {})
        self.children: list[subprocess.Popen[bytes]] = []

    def pidfile(self, index: int) -> Path:
        return self.directory / f"p{index:03d}.pid"

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        program = shutil.which(SLEEPER[0])
        if program is None:
            raise RuntimeError(f"{SLEEPER[0]} is not on PATH")
        try:
            for index in range(self.count):
                child = subprocess.Popen(
                    self.argv.get(index, SLEEPER),
                    executable=program,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
                )
                self.children.append(child)
                self.pidfile(index).write_text(f"{child.pid}\n", encoding="ascii")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
        for child in self.children:
            child.wait()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]


def node_matchers(tag: int) -> tuple[dict[int, tuple[str, ...]], list[ProcessBinding]]:
    """The node scenario: which sleeps to mark (by index) and the 2 bindings that find them.

    Sleep 0 runs with argv[0] `pcb-sleep-<tag>` (its comm stays `sleep`, so the name matcher reads
    the command line of every process whose comm differs); sleep 1 runs `sleep 600.<tag>`.
    """
    name = f"pcb-sleep-{tag}"
    argv: dict[int, tuple[str, ...]] = {
        0: (name, SLEEPER[1]),
        1: (SLEEPER[0], f"{SLEEPER[1]}.{tag}"),
    }
    bindings = [
        ProcessBinding(model=NODE_NAME_MODEL, name=name),
        ProcessBinding(model=NODE_CMDLINE_MODEL, cmdline=rf"^sleep {SLEEPER[1]}\.{tag}$"),
    ]
    return argv, bindings


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    model: str
    args: tuple[str, ...]
    command: tuple[str, ...]


def container_specs(count: int, busy: int, tag: str) -> list[ContainerSpec]:
    specs = []
    for index in range(count):
        model = f"cm-{tag}-{index:02d}"
        limits = ("--memory", "64m") if index % 2 else ()
        if index < busy:
            spec = ContainerSpec(model, ("--cpus", "0.25", *limits), ("sh", "-c", LIGHT_WORK))
        else:
            spec = ContainerSpec(model, limits, CONTAINER_LIFETIME)
        specs.append(spec)
    return specs


def start_containers(podman: PodmanService, specs: Sequence[ContainerSpec]) -> list[str]:
    def run(spec: ContainerSpec) -> str:
        return podman.run_container(
            f"{spec.model}-{podman.session}",
            "--label",
            f"{MODEL_LABEL}={spec.model}",
            *spec.args,
            command=spec.command,
        )

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(run, specs))


def write_manifests(directory: Path, models: Sequence[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    documents = [
        {
            "apiVersion": "piccolo.io/v1",
            "kind": "Model",
            "metadata": {"name": model},
            "spec": {"node": NODE},
        }
        for model in models
    ]
    (directory / "models.yaml").write_text(yaml.safe_dump_all(documents), encoding="utf-8")


def start_run_guard(work: Path, podman: PodmanService) -> tuple[subprocess.Popen[bytes], Path]:
    """The guard kills the agent named in its pid file and removes this run's containers."""
    pids_file = work / "guard.pids"
    guard = start_guard(work, pids_file, podman_label=podman.labels[1], env=podman.env)
    return guard, pids_file


def service_pid(podman: PodmanService) -> int | None:
    """The pid of `podman system service` on this instance's socket."""
    wanted = f"unix://{podman.socket}"
    for process in psutil.process_iter(["cmdline"]):
        if wanted in (process.info["cmdline"] or []):
            return int(process.pid)
    return None


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MB


def rss_split_mb(pid: int) -> dict[str, float]:
    """RssAnon (heap, stacks: the process's own) and RssFile (mapped code, mostly shared)."""
    split = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"RssAnon", "RssFile"}:
            split[f"rss_{name[3:].lower()}_mb"] = round(int(value.split()[0]) / 1024, 1)
    return split


DEPENDENCIES = "aetcd, aiomqtt, grpc, h11, psutil, pydantic, sqlite3, yaml"
"""What the agent must import (the project's chosen libraries), none of its own code."""


PYDANTIC_IN_USE = "class M(pydantic.BaseModel):\n    x: int\nM(x=1)\n"
"""Defining and using one model loads pydantic's schema machinery (about 5 MB more)."""


def floor_rss_mb(imports: str = "", then: str = "") -> float:
    """RSS of this interpreter sleeping after `import time` and `imports` and running `then`,
    with the unit's environment."""
    code = f"import time{', ' + imports if imports else ''}\n{then}time.sleep(5)"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **unit_environment()},
        preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
    )
    try:
        deadline = time.monotonic() + 4.0
        rss = 0.0
        while time.monotonic() < deadline:  # until the imports are done and it sleeps
            time.sleep(0.3)
            now = rss_mb(child.pid)
            if now == rss and psutil.Process(child.pid).status() == psutil.STATUS_SLEEPING:
                break
            rss = now
        return rss
    finally:
        child.kill()
        child.wait()


def rss_floors() -> dict[str, float]:
    return {
        "python_floor_rss_mb": round(floor_rss_mb(), 1),
        "dependencies_floor_rss_mb": round(floor_rss_mb(DEPENDENCIES), 1),
        "dependencies_in_use_floor_rss_mb": round(floor_rss_mb(DEPENDENCIES, PYDANTIC_IN_USE), 1),
    }


def etcd_keys(endpoint: str) -> tuple[int, int] | None:
    """(keys, revision) of the etcd at `endpoint`: what the agent left there, and its writes."""
    command = ["etcdctl", f"--endpoints={endpoint}", "-w", "json", "get", "/", "--prefix"]
    result = subprocess.run(
        [*command, "--keys-only", "--limit=1"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        log(f"etcdctl failed: {result.stderr.strip()}")
        return None
    answer = json.loads(result.stdout)
    return int(answer.get("count", 0)), int(answer["header"]["revision"])


def etcd_model_states(endpoint: str, models: Sequence[str]) -> dict[str, str | None]:
    """The state in each model's `model/<id>/state` document in etcd; None where there is none."""
    env = {**os.environ, "ETCDCTL_API": "3"}
    base = ["etcdctl", f"--endpoints={endpoint}"]
    listed = subprocess.run(
        [*base, "get", "/", "--prefix", "--keys-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    keys = listed.stdout.split() if listed.returncode == 0 else []
    states: dict[str, str | None] = {}
    for model in models:
        states[model] = None
        key = next((k for k in keys if k.endswith(f"/model/{model}/state")), None)
        if key is None:
            continue
        value = subprocess.run(
            [*base, "get", key, "--print-value-only"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if value.returncode == 0 and value.stdout.strip():
            states[model] = str(json.loads(value.stdout).get("state"))
    return states


# 1. the agent as a process --------------------------------------------------------------------


@dataclass
class AgentRun:
    ready_s: float = 0.0
    rss_startup_mb: float = 0.0
    rss_mb: float = 0.0
    rss_max_mb: float = 0.0
    cpu_pct: float = 0.0
    window_s: float = 0.0
    threads: int = 0
    cpu_by_thread_pct: dict[str, float] | None = None
    rss_split: dict[str, float] | None = None
    podman_cpu_pct: float = 0.0
    etcd_cpu_pct: float = 0.0
    exit_code: int | None = None
    log_warnings: int = 0
    log_errors: int = 0
    etcd_keys: int | None = None
    etcd_revision: int | None = None


def pidfile_bindings(sleepers: Sleepers) -> list[ProcessBinding]:
    """The first scenario: every sleep a model of its own, bound by its pid file."""
    return [
        ProcessBinding(model=f"pm-{index:03d}", pidfile=sleepers.pidfile(index))
        for index in range(sleepers.count)
    ]


def agent_overrides(
    podman: PodmanService,
    etcd: EtcdServer,
    process_bindings: Sequence[ProcessBinding],
    manifests: Path,
) -> dict[str, Any]:
    """1 s intervals, the given process bindings, this run's manifests, podman and etcd."""
    bindings = [binding.model_dump(mode="json", exclude_none=True) for binding in process_bindings]
    return {
        "resource_monitoring.node.collection_interval": "1s",
        "resource_monitoring.container.collection_interval": "1s",
        "resource_monitoring.container.socket": str(podman.socket),
        "resource_monitoring.process.collection_interval": "1s",
        "resource_monitoring.process.bindings": bindings,
        "manifests.paths": [str(manifests)],
        "data_storage.configuration.endpoints": [etcd.endpoint],
    }


def start_profiler(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` for `seconds` into `output` (collapsed stacks), if py-spy is found.

    py-spy comes from `PYSPY` or PATH; it is a developer's tool, not a dependency. It samples
    without stopping the agent (`--nonblocking`), yet reading its stacks costs the machine CPU.
    """
    program = os.environ.get("PYSPY") or shutil.which("py-spy")
    if program is None:
        log("no py-spy (set PYSPY or put it on PATH): not profiling")
        return None
    command = [program, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    command += ["--rate", "200", "--format", "raw", "--nonblocking", "--threads"]
    return subprocess.Popen(
        [*command, "--output", str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
    )


def measure_agent(
    agent: AgentProcess,
    *,
    warmup_s: float,
    window_s: float,
    podman_pid: int | None,
    etcd_pid: int,
    profile: Path | None = None,
) -> AgentRun:
    assert agent.process is not None  # noqa: S101 - started by the caller
    pid = agent.process.pid
    run = AgentRun()
    log(f"warm-up {warmup_s:.0f} s")
    time.sleep(warmup_s)
    log(f"measuring the agent's CPU over {window_s:.0f} s")
    profiler = None if profile is None else start_profiler(pid, window_s, profile)
    threads_before = thread_cpu(pid)
    cpu_before = cpu_s(pid), cpu_s(podman_pid), cpu_s(etcd_pid)
    started = time.monotonic()
    end = started + window_s
    rss_samples = []
    while (now := time.monotonic()) < end:
        if not agent.running:
            raise RuntimeError(f"the agent exited; its log:\n{agent.log()[-3000:]}")
        rss_samples.append(rss_mb(pid))
        time.sleep(min(1.0, end - now))
    cpu_after = cpu_s(pid), cpu_s(podman_pid), cpu_s(etcd_pid)
    run.window_s = time.monotonic() - started
    if profiler is not None:
        profiler.wait(timeout=30)
        log(f"profile in {profile}")
    threads_after = thread_cpu(pid)
    run.rss_mb = rss_mb(pid)
    run.rss_split = rss_split_mb(pid)
    run.rss_max_mb = max([run.rss_mb, *rss_samples])
    run.threads = psutil.Process(pid).num_threads()

    def pct(before: float, after: float) -> float:
        return round((after - before) / run.window_s * 100, 2)

    run.cpu_pct = pct(cpu_before[0], cpu_after[0])
    run.podman_cpu_pct = pct(cpu_before[1], cpu_after[1])
    run.etcd_cpu_pct = pct(cpu_before[2], cpu_after[2])
    by_thread = {
        name: pct(threads_before.get(name, 0.0), seconds) for name, seconds in threads_after.items()
    }
    run.cpu_by_thread_pct = {
        name: share for name, share in sorted(by_thread.items(), key=lambda i: -i[1]) if share > 0
    }
    return run


# 2. and 3. the collectors in this process -----------------------------------------------------


def raw_reader(pids: Sequence[int]) -> None:
    raw_read(pids)


def raw_pidfile_reader(pidfiles: Sequence[Path]) -> None:
    """The floor of what a pid-file binding needs: the pid file, then stat and statm."""
    for path in pidfiles:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = int(os.read(fd, 64))
        finally:
            os.close(fd)
        raw_reader((pid,))


def psutil_loop(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                process.cpu_times()
                process.memory_info()
                process.status()
                process.num_threads()
                process.name()
                process.create_time()
        except psutil.NoSuchProcess:  # gone since it was listed (only in the node scenario)
            continue


@dataclass
class Series:
    wall_us: list[float]
    cpu_us: list[float]

    def median(self, per: int) -> tuple[float, float]:
        return (
            round(statistics.median(self.wall_us) / per, 1),
            round(statistics.median(self.cpu_us) / per, 1),
        )

    def per_item(self, counts: Sequence[int]) -> Series:
        """Each cycle's times divided by that cycle's item count (`counts`, one per cycle)."""
        return Series(
            [us / count for us, count in zip(self.wall_us, counts, strict=True)],
            [us / count for us, count in zip(self.cpu_us, counts, strict=True)],
        )


@contextlib.contextmanager
def timed(series: Series) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    series.cpu_us.append((time.process_time() - cpu) * 1e6)
    series.wall_us.append((time.perf_counter() - wall) * 1e6)


async def bench_processes(sleepers: Sleepers, cycles: int) -> dict[str, float | int]:
    bindings = pidfile_bindings(sleepers)
    pidfiles = [sleepers.pidfile(index) for index in range(sleepers.count)]
    pids = sleepers.pids
    collector = ProcessCollector(NODE, bindings, psutil.virtual_memory().total)
    await collector.collect()  # the first cycle notes every start; later ones are steady
    running = sum(1 for view in collector.views.values() if view.phase == "Running")
    if running != len(bindings):
        raise RuntimeError(f"the process collector sees {running} of {len(bindings)} running")
    series = {name: Series([], []) for name in ("collector", "raw", "raw_pidfile", "psutil")}

    async def run_collector() -> None:
        with timed(series["collector"]):
            await collector.collect()

    async def run_sync(name: str, work: Callable[[], None]) -> None:
        with timed(series[name]):
            work()

    steps: list[Callable[[], Any]] = [
        run_collector,
        lambda: run_sync("raw", lambda: raw_reader(pids)),
        lambda: run_sync("raw_pidfile", lambda: raw_pidfile_reader(pidfiles)),
        lambda: run_sync("psutil", lambda: psutil_loop(pids)),
    ]
    for cycle in range(cycles):
        for step in steps[cycle % len(steps) :] + steps[: cycle % len(steps)]:
            await step()
        await asyncio.sleep(0.05)
    count = len(pids)
    collector_wall, collector_cpu = series["collector"].median(count)
    raw_wall, raw_cpu = series["raw"].median(count)
    pidfile_wall, _ = series["raw_pidfile"].median(count)
    psutil_wall, psutil_cpu = series["psutil"].median(count)
    return {
        "us_per_process": collector_wall,
        "cpu_us_per_process": collector_cpu,
        "raw_reader_us_per_process": raw_wall,
        "raw_reader_cpu_us_per_process": raw_cpu,
        "raw_pidfile_reader_us_per_process": pidfile_wall,
        "psutil_us_per_process": psutil_wall,
        "psutil_cpu_us_per_process": psutil_cpu,
        "process_cost_over_raw": round(collector_wall / raw_wall, 2),
        "process_cost_over_raw_pidfile": round(collector_wall / pidfile_wall, 2),
        "psutil_over_raw": round(psutil_wall / raw_wall, 2),
        "process_cycles": cycles,
    }


async def bench_node_processes(
    bindings: Sequence[ProcessBinding], cycles: int
) -> dict[str, float | int]:
    """The node scenario: 2 matcher bindings, each scanning every process; per pid on the node."""
    collector = ProcessCollector(NODE, bindings, psutil.virtual_memory().total)
    await collector.collect()
    for binding in bindings:
        view = collector.views[binding.model]
        if view.phase != "Running" or view.pids != 1:
            raise RuntimeError(
                f"{binding.model} should be 1 running process, is {view.phase} with {view.pids}"
            )
    by_name, by_cmdline = (ProcessMatcher(name=b.name, cmdline=b.cmdline) for b in bindings)
    names = ("collector", "name_matcher", "cmdline_matcher", "raw", "psutil")
    series = {name: Series([], []) for name in names}
    counts: list[int] = []
    listed: list[int] = []

    async def run_collector() -> None:
        with timed(series["collector"]):
            await collector.collect()

    async def run_sync(name: str, work: Callable[[], object]) -> None:
        with timed(series[name]):
            work()

    steps: list[Callable[[], Any]] = [
        run_collector,
        lambda: run_sync("name_matcher", lambda: find_processes(by_name)),
        lambda: run_sync("cmdline_matcher", lambda: find_processes(by_cmdline)),
        lambda: run_sync("raw", lambda: raw_reader(listed)),
        lambda: run_sync("psutil", lambda: psutil_loop(listed)),
    ]
    for cycle in range(cycles):
        listed[:] = node_pids()  # what every matcher scans this cycle
        counts.append(len(listed))
        for step in steps[cycle % len(steps) :] + steps[: cycle % len(steps)]:
            await step()
        await asyncio.sleep(0.05)
    medians = {name: values.per_item(counts).median(1) for name, values in series.items()}
    collector_wall, collector_cpu = medians["collector"]
    raw_wall, raw_cpu = medians["raw"]
    psutil_wall, psutil_cpu = medians["psutil"]
    return {
        "node_processes_scanned": int(statistics.median(counts)),
        "node_processes_scanned_min": min(counts),
        "node_processes_scanned_max": max(counts),
        "node_us_per_process": collector_wall,
        "node_cpu_us_per_process": collector_cpu,
        "node_name_matcher_us_per_process": medians["name_matcher"][0],
        "node_cmdline_matcher_us_per_process": medians["cmdline_matcher"][0],
        "node_raw_reader_us_per_process": raw_wall,
        "node_raw_reader_cpu_us_per_process": raw_cpu,
        "node_psutil_us_per_process": psutil_wall,
        "node_psutil_cpu_us_per_process": psutil_cpu,
        "node_process_cost_over_raw": round(collector_wall / raw_wall, 2),
        "node_psutil_over_raw": round(psutil_wall / raw_wall, 2),
        "node_process_cycles": cycles,
    }


async def bench_containers(
    podman: PodmanService, models: Sequence[str], cycles: int, podman_pid: int | None
) -> dict[str, float | int]:
    """Per container, two ways: as the agent runs (the event stream up: containers are listed
    after events only) and with the stream down (listed at every collection)."""
    placed = {model: PlacedModel(model, None, None, ()) for model in models}
    client = PodmanClient(podman.socket, 5.0)
    collector = ContainerCollector(client, NODE, lambda: placed, psutil.virtual_memory().total)
    listing, streaming = Series([], []), Series([], [])
    watch: asyncio.Task[None] | None = None
    try:
        await collector.collect()  # inspects every container, reads image and volume sizes
        running = sum(1 for view in collector.views.values() if view.phase == "Running")
        if running != len(models):
            raise RuntimeError(f"the container collector sees {running} of {len(models)} running")
        listed = len(await client.list_containers())
        # The kernel counts CPU time in ticks (10 ms): podman's is summed over all cycles.
        podman_before = cpu_s(podman_pid)
        for _ in range(cycles):
            await asyncio.sleep(0.2)
            with timed(listing):
                await collector.collect()
        podman_listing_s = cpu_s(podman_pid) - podman_before
        watch = asyncio.create_task(collector.watch(lambda _: None))
        for _ in range(500):
            if collector.events_live:
                break
            await asyncio.sleep(0.01)
        if not collector.events_live:
            raise RuntimeError("podman's event stream did not open")
        await collector.collect()  # lists once: the stream just opened
        podman_before = cpu_s(podman_pid)
        for _ in range(cycles):
            await asyncio.sleep(0.2)
            with timed(streaming):
                await collector.collect()
        podman_s = cpu_s(podman_pid) - podman_before
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await collector.close()
    count = len(models)
    wall, cpu = streaming.median(count)
    listing_wall, listing_cpu = listing.median(count)
    return {
        "us_per_container": wall,
        "us_per_container_mean": round(statistics.mean(streaming.wall_us) / count, 1),
        "cpu_us_per_container": cpu,
        "podman_service_cpu_us_per_container": round(podman_s / cycles / count * 1e6, 1),
        "us_per_container_listing_each_cycle": listing_wall,
        "cpu_us_per_container_listing_each_cycle": listing_cpu,
        "podman_service_cpu_us_per_container_listing_each_cycle": round(
            podman_listing_s / cycles / count * 1e6, 1
        ),
        "containers_listed": listed,
        "container_cycles": cycles,
    }


# the run --------------------------------------------------------------------------------------


UNIT = REPO / "systemd" / "piccolo-agent.service"


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """The `Environment=` settings of the systemd unit: the agent is measured as deployed."""
    environment = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            for assignment in line.removeprefix("Environment=").split():
                name, _, value = assignment.partition("=")
                environment[name] = value.strip('"')
    return environment


def start_agent(
    work: Path, overrides: dict[str, Any], guard_pids: Path, stack: contextlib.ExitStack
) -> tuple[AgentProcess, AgentRun]:
    """An agent started and ready, killed on the way out and by the guard; ready time and RSS."""
    agent = AgentProcess(work, overrides, env=unit_environment())
    started = time.monotonic()
    agent.start()
    assert agent.process is not None  # noqa: S101
    # The guard kills only the agent running now: an earlier one is stopped and reaped.
    guard_pids.write_text(f"{agent.process.pid}\n", encoding="ascii")
    stack.callback(agent.kill)
    agent.wait_for_log("ready in", timeout=30)
    return agent, AgentRun(
        ready_s=round(time.monotonic() - started, 3), rss_startup_mb=rss_mb(agent.process.pid)
    )


def stop_agent(agent: AgentProcess, measured: AgentRun, endpoint: str) -> None:
    """Stops the agent; its exit code, log warnings and errors, and etcd's keys after it."""
    measured.exit_code = agent.stop(timeout=30)
    lines = agent.log().splitlines()
    measured.log_warnings = sum(1 for line in lines if line.startswith("<4>"))
    measured.log_errors = sum(1 for line in lines if line[:3] in {"<0>", "<1>", "<2>", "<3>"})
    if (keys := etcd_keys(endpoint)) is not None:
        measured.etcd_keys, measured.etcd_revision = keys


def run(args: argparse.Namespace) -> dict[str, Any]:
    begun = time.monotonic()
    result: dict[str, Any] = {
        "processes": args.processes,
        "containers": args.containers,
        "interval_s": 1.0,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "agent_environment": unit_environment(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="pcb-", dir="/tmp") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        result |= rss_floors()
        podman = PodmanService(work / "p")
        guard, guard_pids = start_run_guard(work, podman)

        def stop_guard() -> None:
            guard.kill()  # SIGKILL: everything it would clean is cleaned by now
            guard.wait()

        stack.callback(stop_guard)
        log("starting etcd and podman's API service")
        etcd = stack.enter_context(EtcdServer(work / "etcd"))
        stack.enter_context(podman)
        podman_pid = service_pid(podman)
        specs = container_specs(
            args.containers, min(args.busy, args.containers), podman.session[:6]
        )
        write_manifests(work / "manifests", [spec.model for spec in specs])
        node_argv, node_bindings = node_matchers(os.getpid())
        sleepers = Sleepers(work / "pids", args.processes, node_argv)

        def measure(agent: AgentProcess, scenario: str) -> AgentRun:
            return measure_agent(
                agent,
                warmup_s=args.warmup,
                window_s=args.window,
                podman_pid=podman_pid,
                etcd_pid=etcd.pid or 0,
                profile=None if args.profile is None else args.profile / f"{scenario}.txt",
            )

        log(f"starting the agent ({args.processes} pid-file bindings)")
        agent, agent_run = start_agent(
            work / "agent",
            agent_overrides(podman, etcd, pidfile_bindings(sleepers), work / "manifests"),
            guard_pids,
            stack,
        )
        log(f"starting {args.processes} sleeps and {args.containers} containers")
        stack.enter_context(sleepers)
        start_containers(podman, specs)
        log(f"workload up after {time.monotonic() - begun:.1f} s")
        measured = measure(agent, "process-models")
        measured.ready_s, measured.rss_startup_mb = agent_run.ready_s, agent_run.rss_startup_mb
        log("stopping the agent")
        stop_agent(agent, measured, etcd.endpoint)

        log("starting the node scenario's agent (2 matcher bindings)")
        node_agent, node_run = start_agent(
            work / "agent-node",
            agent_overrides(podman, etcd, node_bindings, work / "manifests"),
            guard_pids,
            stack,
        )
        node = measure(node_agent, "node")
        node.ready_s, node.rss_startup_mb = node_run.ready_s, node_run.rss_startup_mb
        log("stopping the node scenario's agent")
        stop_agent(node_agent, node, etcd.endpoint)
        node_states = etcd_model_states(etcd.endpoint, [b.model for b in node_bindings])

        # The floor: the same agent with nothing to find (no bindings, no model manifests).
        log("starting the idle agent (nothing bound, no models)")
        write_manifests(work / "no-manifests", [])
        idle_agent, idle_run = start_agent(
            work / "agent-idle",
            agent_overrides(podman, etcd, [], work / "no-manifests"),
            guard_pids,
            stack,
        )
        idle = measure(idle_agent, "idle")
        idle.ready_s, idle.rss_startup_mb = idle_run.ready_s, idle_run.rss_startup_mb
        log("stopping the idle agent")
        stop_agent(idle_agent, idle, etcd.endpoint)

        log("measuring the collectors in this process")
        collectors = asyncio.run(
            bench_collectors(
                sleepers,
                node_bindings,
                podman,
                [spec.model for spec in specs],
                cycles=args.cycles,
                podman_pid=podman_pid,
            )
        )
        log("tearing down")

    def added(after: int | None, before: int | None) -> int | None:
        return None if after is None or before is None else after - before

    result |= {
        "agent_cpu_pct_one_core": measured.cpu_pct,
        "rss_mb": round(measured.rss_mb, 1),
        "rss_mb_max": round(measured.rss_max_mb, 1),
        "rss_mb_startup": round(measured.rss_startup_mb, 1),
        **(measured.rss_split or {}),
        **{key: value for key, value in collectors.items() if not key.startswith("node_")},
        "agent_ready_s": measured.ready_s,
        "agent_window_s": round(measured.window_s, 1),
        "agent_threads": measured.threads,
        "agent_cpu_pct_by_thread": measured.cpu_by_thread_pct,
        "podman_service_cpu_pct_one_core": measured.podman_cpu_pct,
        "etcd_cpu_pct_one_core": measured.etcd_cpu_pct,
        "agent_exit_code": measured.exit_code,
        "agent_log_warnings": measured.log_warnings,
        "agent_log_errors": measured.log_errors,
        "etcd_keys": measured.etcd_keys,
        "etcd_revision": measured.etcd_revision,
        "rss_over_python_floor_mb": round(measured.rss_mb - result["python_floor_rss_mb"], 1),
        "rss_over_dependencies_floor_mb": round(
            measured.rss_mb - result["dependencies_floor_rss_mb"], 1
        ),
        "node_bound_models": len(node_bindings),
        "node_bindings": [b.model_dump(mode="json", exclude_none=True) for b in node_bindings],
        "node_agent_cpu_pct_one_core": node.cpu_pct,
        "node_rss_mb": round(node.rss_mb, 1),
        "node_rss_mb_max": round(node.rss_max_mb, 1),
        "node_rss_mb_ready": round(node.rss_startup_mb, 1),
        **{f"node_{key}": value for key, value in (node.rss_split or {}).items()},
        **{key: value for key, value in collectors.items() if key.startswith("node_")},
        "node_agent_ready_s": node.ready_s,
        "node_agent_window_s": round(node.window_s, 1),
        "node_agent_threads": node.threads,
        "node_agent_cpu_pct_by_thread": node.cpu_by_thread_pct,
        "node_podman_service_cpu_pct_one_core": node.podman_cpu_pct,
        "node_etcd_cpu_pct_one_core": node.etcd_cpu_pct,
        "node_agent_exit_code": node.exit_code,
        "node_agent_log_warnings": node.log_warnings,
        "node_agent_log_errors": node.log_errors,
        "node_etcd_keys_added": added(node.etcd_keys, measured.etcd_keys),
        "node_etcd_revisions_added": added(node.etcd_revision, measured.etcd_revision),
        "node_model_states_in_etcd": node_states,
        "node_rss_over_python_floor_mb": round(node.rss_mb - result["python_floor_rss_mb"], 1),
        "node_rss_over_dependencies_floor_mb": round(
            node.rss_mb - result["dependencies_floor_rss_mb"], 1
        ),
        "idle_agent_cpu_pct_one_core": idle.cpu_pct,
        "idle_agent_cpu_pct_by_thread": idle.cpu_by_thread_pct,
        "idle_rss_mb": round(idle.rss_mb, 1),
        "collection_cpu_pct_one_core": round(measured.cpu_pct - idle.cpu_pct, 2),
        "node_collection_cpu_pct_one_core": round(node.cpu_pct - idle.cpu_pct, 2),
        "runtime_s": round(time.monotonic() - begun, 1),
        "targets": TARGETS,
    }
    return result


async def bench_collectors(
    sleepers: Sleepers,
    node_bindings: Sequence[ProcessBinding],
    podman: PodmanService,
    models: Sequence[str],
    *,
    cycles: int,
    podman_pid: int | None,
) -> dict[str, Any]:
    processes = await bench_processes(sleepers, cycles)
    node_processes = await bench_node_processes(node_bindings, cycles)
    containers = await bench_containers(podman, models, cycles, podman_pid)
    return processes | node_processes | containers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--busy", type=int, default=4, help="containers doing light work")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--deadline", type=int, default=300, help="seconds before giving up")
    parser.add_argument(
        "--profile",
        type=Path,
        help="folder for py-spy profiles of each agent's window (adds CPU: do not report those)",
    )
    args = parser.parse_args()
    if args.processes < len(node_matchers(0)[1]):
        parser.error("--processes: the node scenario marks 2 of them, give at least 2")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.deadline)
    try:
        result = run(args)
    finally:
        signal.alarm(0)
    result["ratios"] = {
        "agent_cpu_over_target": round(
            result["agent_cpu_pct_one_core"] / TARGETS["agent_cpu_pct_one_core"], 2
        ),
        "rss_over_target": round(result["rss_mb"] / TARGETS["rss_mb"], 2),
        "process_cost_over_raw_over_target": round(
            result["process_cost_over_raw"] / TARGETS["process_cost_over_raw"], 2
        ),
    }
    result["node_ratios"] = {
        "agent_cpu_over_target": round(
            result["node_agent_cpu_pct_one_core"] / TARGETS["agent_cpu_pct_one_core"], 2
        ),
        "rss_over_target": round(result["node_rss_mb"] / TARGETS["rss_mb"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
