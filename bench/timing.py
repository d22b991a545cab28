"""The timing path: ingest throughput at one core, alert latency under load, the MQTT floor, and
deadline supervision against ground truth, quiet and with every core busy.

Prints one JSON line (progress goes to stderr). Sets up and tears down everything itself: a
throwaway etcd and mosquitto on loopback, and the real agent (tests.support.agentproc) with the
example manifests, whose model `vision-system` has period 10 ms, deadline 8 ms, budget 2 ms and
ASIL B; the ingest socket lies in a short temporary folder. Run it from the repo root:
`.venv/bin/python bench/timing.py` (about two minutes; `--only-supervision` runs phase 3 alone,
in about 40 s; `--supervision-seconds 0` leaves it out).

Measured in one run, in this order:
1. Alert latency and the MQTT floor, under a background load of 1,000 on-time reports a second
   (a sender process with the agent's client, `agent.ingest.client.Reporter`: 10 tasks of 100 Hz).
   In this process, one asyncio loop runs a probe task at 100 Hz (its own task name, 1 ms
   activations) and an aiomqtt subscriber (QoS 1) of the model's alert topic. Every
   `--probe-every` activations (160 ms) the probe sends one violating activation (9 ms of
   execution against the 8 ms deadline; the 2 ms budget is overrun too, so a budget alert comes
   with it); `time.monotonic()` is read right before its `send`, and the latency is the arrival of
   the episode's `firing` deadline_miss alert at the subscriber minus that. The 10 clean
   activations that follow resolve the episode before the next violation. Between violations
   (40, 60 and 80 ms after each), a second aiomqtt client publishes a bare QoS 1 message to a
   topic the same subscriber holds: publish -> arrival is the floor of any alert, on the same
   broker, under the same load, timed the same way. The alert's `first_seen` (the agent's wall
   clock when it raised it, turned into CLOCK_MONOTONIC here) splits each latency into
   `alert_raise` (send -> raised: socket, event loop, parse, supervision) and `alert_publish`
   (raised -> arrival: the agent's alert pipeline, broker, subscriber). Other alerts seen (the
   budget overruns, resolutions, alive timeouts of background or probe tasks) are counted. The
   agent's CPU is measured idle (before) and over this phase.
2. Ingest throughput: `--senders` processes blast valid on-time activations (8 task names) into
   the socket with a BLOCKING Unix datagram socket, so a sender waits while the agent's queue is
   full and nothing is dropped. Over a window after a warm-up: reports sent (all of which the
   agent receives), the agent's CPU time (psutil, user + system, all threads), per thread, and
   the senders', mosquitto's and etcd's. `ingest_reports_per_s` = reports / wall s;
   `cpu_us_per_report` = agent CPU s / reports x 1e6. The agent handles the ingest on its event
   loop thread; when it is below 90 % of one core the senders (or the machine) were the limit:
   `sender_limited`, and `ingest_limited_by` says which: `agent` (>= 90 %), `sender` (a sender at
   >= 90 %), `machine` (all cores >= 90 % busy, other work included) or `handoff` (sender and
   agent wait on each other across the short socket queue). Afterwards the agent's own counters
   in etcd (`node/VisionHPC/metrics/agent_ingest_delivered` and `..._dropped`) must account for
   every report sent (within the 1 % publish deadband of the agent's default config), and none
   may be dropped.
3. Deadline supervision against ground truth, twice: quiet, then with a SCHED_OTHER busy loop
   pinned to every core (tests.support.workload.BusyLoad). Each run gets an agent of its own
   with four Models (tests.support.workload.FOUR_TASKS: periods 5, 10, 20 and 50 ms, deadlines
   4, 8, 15 and 40 ms, ASIL B) and runs their four periodic tasks for `--supervision-seconds`,
   each task a process of its own under SCHED_FIFO (rate-monotonic priorities) that reports
   `start` and `end` of every activation and logs what really happened. Per task: four misses
   (0.3 ms past the deadline), two budget overruns and a hang-up (its end three deadlines late),
   1/8 of the run apart; the 20 ms task is also silent for 1/20 of the run. Once the agent's
   status documents have settled, per task: `true_misses` (end - release > deadline, from the
   task's log), `counted_misses` (its deadlineMisses in etcd), `false_misses` and
   `missed_misses` (from the counts and, per activation, the firing alerts that name an
   activation which met its deadline: tests.support.workload.fidelity), `false_misses_lost_ends`
   (those explained by ends the socket refused: the agent must count them), `false_alarms`
   (alerts sent about activations that met their deadline, taken back later or not),
   `alive_timeouts_unexpected` (alive_timeout alerts while the task's starts were within the
   margins). The alert latency runs from the violating end's `sendto` to the arrival of its
   episode's first `firing` alert at an aiomqtt QoS 1 subscriber (hang-ups have none); the floor
   is a bare QoS 1 message every 100 ms on the same broker meanwhile. The agent's CPU is taken
   idle before, over the run, and once every task has stopped (`agent_cpu_pct_after_run`). Top
   level: `false_misses` and `missed_misses` over both runs, `quiet_`/`loaded_alert_latency_ms_p99`
   and `..._mqtt_floor_ms_p99`, and `supervising_cpu_pct_one_core` (the quiet run's agent CPU).

Linux queues at most `net.unix.max_dgram_qlen` + 1 datagrams on a Unix datagram socket (the
value in force when the socket is made, per network namespace; docs/ingest-protocol.md); it is
reported as `max_dgram_qlen`. The bench does not change the machine's setting: `--qlen 512`
(systemd's value) runs the whole bench again in a network namespace of its own (`unshare -n`, as
root) with loopback up and that limit. `--py-spy BIN` records the agent during phases 1 and 2
(raw collapsed stacks, non-blocking, all threads) into `--profile-dir`.

Targets: at least 30,000 reports/s at one core; alert latency p99 at most 10 ms. A SIGALRM
deadline bounds the whole run; every child gets SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiomqtt
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.ingest.client import Reporter  # noqa: E402
from bench.harness import cpu_s, on_alarm, on_term, start_guard, thread_cpu  # noqa: E402
from tests.support.agentproc import AgentProcess  # noqa: E402
from tests.support.services import EtcdServer, MosquittoServer, parent_death_hook  # noqa: E402
from tests.support.workload import (  # noqa: E402
    BusyLoad,
    FiringAlert,
    TaskLog,
    fidelity,
    four_task_spec,
    monotonic_of,
    rfc3339_ns,
    start_workload,
    unexpected_alive,
    write_manifests,
)

NODE = "VisionHPC"
MODEL = "vision-system"
MS = 1_000_000
PREFIX = "/piccolo/monitoring/"
ALERT_TOPIC = f"piccolo/monitoring/alerts/{NODE}/model/{MODEL}"
STATUS_TOPIC = f"piccolo/monitoring/agents/{NODE}/status"
PROBE_TASK = "probe"
PERIOD_NS = 10 * MS
FLOOR_OFFSETS = (4, 6, 8)
"""Probe activations after a violation at which a floor message goes (40, 60, 80 ms)."""
DEADBAND = 0.01
"""The agent's default `data_storage.publish_deadband`, which its counters in etcd obey."""
NETNS_MARK = "PICCOLO_BENCH_TIMING_NETNS"
"""Set in the environment of the bench run again inside its own network namespace."""
QLEN_FILE = Path("/proc/sys/net/unix/max_dgram_qlen")
TARGETS = {"ingest_reports_per_s": 30_000, "alert_latency_ms_p99": 10.0}
ACTIVATION = (
    b'{"v":1,"type":"activation","model":"vision-system","task":"%s","seq":%d,'
    b'"start_ns":%d,"end_ns":%d,"release_ns":%d}'
)
"""The client's activation message (agent.ingest.client.Reporter.report_activation)."""


def log(message: str) -> None:
    print(f"timing: {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary_ms(name: str, seconds: Sequence[float]) -> dict[str, float | None]:
    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value * 1e3, 3)

    return {
        f"{name}_ms_p50": ms(percentile(seconds, 50)),
        f"{name}_ms_p90": ms(percentile(seconds, 90)),
        f"{name}_ms_p99": ms(percentile(seconds, 99)),
        f"{name}_ms_max": ms(max(seconds, default=math.nan)),
    }


# senders: this file run as a child -------------------------------------------------------------


def run_blast(path: str, tasks: Sequence[str], seconds: float, counter: Path) -> dict[str, Any]:
    """Send on-time activations as fast as a blocking socket takes them, round robin over tasks.

    The running total is written to `counter` (8 bytes, shared with the parent through mmap).
    """
    names = [task.encode() for task in tasks]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(path)
    send = sock.send
    clock = time.monotonic_ns
    sent = seq = 0
    with counter.open("r+b") as file, mmap.mmap(file.fileno(), 8) as shared:
        end = clock() + round(seconds * 1e9)
        while (now := clock()) < end:
            start = now - MS
            for name in names:
                send(ACTIVATION % (name, seq, start, now, start))
            seq += 1
            sent += len(names)
            if not seq & 15:
                struct.pack_into("q", shared, 0, sent)
        struct.pack_into("q", shared, 0, sent)
    sock.close()
    return {"sent": sent}


def run_paced(path: str, tasks: Sequence[str], rate: float, seconds: float) -> dict[str, Any]:
    """`rate` on-time activations a second with the agent's client, spread evenly over tasks."""
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    reporter = Reporter(path, model=MODEL)
    interval = round(1e9 / rate)
    base = time.monotonic_ns()
    end = base + round(seconds * 1e9)
    seqs = dict.fromkeys(tasks, 0)
    index = 0
    late_max = 0
    while not stop:
        due = base + index * interval
        if due >= end:
            break
        now = time.monotonic_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
            now = time.monotonic_ns()
        else:
            late_max = max(late_max, now - due)
        task = tasks[index % len(tasks)]
        reporter.report_activation(task, now - MS, now, seqs[task], now - MS)
        seqs[task] += 1
        index += 1
    elapsed = (time.monotonic_ns() - base) / 1e9
    return {
        "sent": reporter.sent,
        "dropped": reporter.dropped,
        "last_error": reporter.last_error,
        "elapsed_s": round(elapsed, 3),
        "late_max_ms": round(late_max / 1e6, 2),
    }


def sender_main(spec: dict[str, Any]) -> None:
    if spec["mode"] == "blast":
        result = run_blast(spec["socket"], spec["tasks"], spec["seconds"], Path(spec["counter"]))
    else:
        result = run_paced(spec["socket"], spec["tasks"], spec["rate"], spec["seconds"])
    print(json.dumps(result), flush=True)


def start_sender(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--sender", json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=REPO,
        preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
    )


def finish_sender(child: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = child.communicate(timeout=timeout)
    if child.returncode != 0:
        raise RuntimeError(f"a sender exited with status {child.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def kill_children(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


# helpers ----------------------------------------------------------------------------------


def etcd_value(endpoint: str, key: str) -> float | None:
    """The `value` of the agent's JSON document at PREFIX + key, None when absent."""
    result = subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", "get", PREFIX + key, "--print-value-only"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    text = result.stdout.strip()
    if result.returncode != 0 or not text:
        return None
    value = json.loads(text.splitlines()[0]).get("value")
    return float(value) if isinstance(value, int | float) else None


def ingest_counters(endpoint: str) -> dict[str, float | None]:
    return {
        name: etcd_value(endpoint, f"node/{NODE}/metrics/agent_ingest_{name}")
        for name in ("received", "delivered", "dropped")
    }


def settled_counters(endpoint: str, timeout: float = 5.0) -> dict[str, float | None]:
    """The ingest counters once two reads 0.5 s apart agree (nothing sends, all pushed)."""
    deadline = time.monotonic() + timeout
    last = ingest_counters(endpoint)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = ingest_counters(endpoint)
        if now == last and now["delivered"] is not None:
            break
        last = now
    return last


@contextlib.contextmanager
def profiled(py_spy: str | None, pid: int, output: Path | None, seconds: float) -> Iterator[None]:
    """py-spy record of `pid` (raw collapsed stacks, non-blocking) while the body runs."""
    if py_spy is None or output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "500",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=parent_death_hook(),  # noqa: PLW1509 - only calls prctl(2)
    )
    try:
        yield
    finally:
        try:
            child.wait(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# 1. alert latency and the floor ----------------------------------------------------------------


def parse_rfc3339_ns(text: str) -> int:
    """`2026-11-26T06:56:49.123456789Z` (the agent's fixed format) as Unix nanoseconds."""
    stamp = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(stamp.timestamp()) * 1_000_000_000 + int(text[20:29])


@dataclass
class Latency:
    alerts_s: list[float] = field(default_factory=list)
    raised_s: list[float] = field(default_factory=list)
    """Send -> the agent's `first_seen` (the wall clock when it raised the alert)."""
    published_s: list[float] = field(default_factory=list)
    """The agent's `first_seen` -> arrival at the subscriber."""
    floor_s: list[float] = field(default_factory=list)
    alerts_missing: int = 0
    floor_missing: int = 0
    wrong_value: int = 0
    other_alerts: Counter[str] = field(default_factory=Counter)
    probe_sent: int = 0
    probe_dropped: int = 0
    window_s: float = 0.0
    agent_cpu_pct: float = 0.0
    agent_cpu_by_thread_pct: dict[str, float] = field(default_factory=dict)
    mosquitto_cpu_pct: float = 0.0
    background: dict[str, Any] = field(default_factory=dict)


class Subscriber:
    """Routes what arrives: the agent's status, probe alerts, floor messages; stamps arrivals."""

    def __init__(self, floor_topic: str, result: Latency) -> None:
        self.floor_topic = floor_topic
        self.result = result
        self.online = asyncio.Event()
        self.alert_waiter: asyncio.Future[tuple[float, dict[str, Any]]] | None = None
        self.floor_waiters: dict[int, asyncio.Future[float]] = {}
        self.seen: set[str] = set()

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.monotonic()
            payload = message.payload
            if not isinstance(payload, bytes):
                continue
            topic = message.topic.value
            if topic == self.floor_topic:
                waiter = self.floor_waiters.pop(int(payload), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)
            elif topic == STATUS_TOPIC:
                if json.loads(payload).get("status") == "online":
                    self.online.set()
            else:
                self.alert(now, json.loads(payload))

    def alert(self, now: float, alert: dict[str, Any]) -> None:
        ours = (alert.get("kind"), alert.get("status"), alert.get("metric")) == (
            "deadline_miss",
            "firing",
            PROBE_TASK,
        )
        if not ours:
            name = f"{alert.get('kind')}:{alert.get('status')}"
            if alert.get("kind") == "alive_timeout":
                name += ":probe" if alert.get("metric") == PROBE_TASK else ":background"
            self.result.other_alerts[name] += 1
            return
        if alert["id"] in self.seen:  # a QoS 1 duplicate
            return
        self.seen.add(alert["id"])
        waiter = self.alert_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((now, alert))
        else:
            self.result.other_alerts["deadline_miss:firing:unexpected"] += 1


async def sleep_until(target_ns: int) -> None:
    delay = target_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


async def measure_latency(
    args: argparse.Namespace, mosquitto: MosquittoServer, socket_path: Path
) -> Latency:
    result = Latency()
    session = uuid.uuid4().hex[:8]
    floor_topic = f"bench/floor/{session}"
    subscriber = Subscriber(floor_topic, result)
    background = start_sender(
        {
            "mode": "paced",
            "socket": str(socket_path),
            "tasks": [f"bg-{i}" for i in range(args.background_tasks)],
            "rate": args.background_rate,
            "seconds": 600,
        }
    )
    try:
        async with (
            aiomqtt.Client(
                mosquitto.host, mosquitto.port, identifier=f"bench-sub-{session}"
            ) as sub,
            aiomqtt.Client(
                mosquitto.host, mosquitto.port, identifier=f"bench-pub-{session}"
            ) as pub,
        ):
            for topic in (ALERT_TOPIC, floor_topic, STATUS_TOPIC):
                await sub.subscribe(topic, qos=1)
            receiver = asyncio.create_task(subscriber.run(sub), name="subscriber")
            try:
                await asyncio.wait_for(subscriber.online.wait(), 15)
                await asyncio.sleep(1.0)  # the background load settles
                await probe(args, socket_path, subscriber, pub, result)
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
    finally:
        if background.poll() is None:
            background.send_signal(signal.SIGTERM)
        try:
            result.background = finish_sender(background, timeout=10)
        finally:
            kill_children([background])
    return result


class Prober:
    """The probe task at 100 Hz; a violation every `probe_every` activations; floor messages."""

    def __init__(
        self,
        args: argparse.Namespace,
        socket_path: Path,
        subscriber: Subscriber,
        publisher: aiomqtt.Client,
        result: Latency,
    ) -> None:
        self.args = args
        self.subscriber = subscriber
        self.publisher = publisher
        self.result = result
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.connect(str(socket_path))
        self.pending: set[asyncio.Task[None]] = set()
        self.floor_index = 0
        self.task = PROBE_TASK.encode()

    async def run(self) -> None:
        args = self.args
        total = (args.warmup_probes + args.probes) * args.probe_every
        base = time.monotonic_ns() + PERIOD_NS
        try:
            for index in range(total):
                await sleep_until(base + index * PERIOD_NS)
                self.activation(index)
            if self.pending:
                await asyncio.wait(self.pending, timeout=args.alert_timeout + 1)
        finally:
            self.sock.close()

    def activation(self, index: int) -> None:
        cycle, step = divmod(index, self.args.probe_every)
        counted = cycle >= self.args.warmup_probes
        violation = step == 0
        now = time.monotonic_ns()
        execution = 9 * MS if violation else 1 * MS
        data = ACTIVATION % (self.task, index, now - execution, now, now - execution)
        waiter: asyncio.Future[tuple[float, dict[str, Any]]] | None = None
        if violation:
            waiter = self.subscriber.alert_waiter = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        try:
            self.sock.send(data)
        except OSError:
            self.result.probe_dropped += 1
            if waiter is not None:
                self.subscriber.alert_waiter = None
                self.result.alerts_missing += counted
            return
        self.result.probe_sent += 1
        if waiter is not None:
            self.spawn(self.await_alert(waiter, sent, counted=counted))
        elif step in FLOOR_OFFSETS:
            self.spawn(self.await_floor(self.floor_index, counted=counted))
            self.floor_index += 1

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def await_alert(
        self, waiter: asyncio.Future[tuple[float, dict[str, Any]]], sent: float, *, counted: bool
    ) -> None:
        try:
            arrived, alert = await asyncio.wait_for(waiter, self.args.alert_timeout)
        except TimeoutError:
            self.result.alerts_missing += counted
            return
        if alert.get("value") != 9.0:
            self.result.wrong_value += 1
        if counted:
            self.result.alerts_s.append(arrived - sent)
            # CLOCK_MONOTONIC to the wall clock, read now (both clocks tick alike over a run).
            offset_s = time.time() - time.monotonic()
            raised = parse_rfc3339_ns(alert["first_seen"]) / 1e9 - offset_s
            self.result.raised_s.append(raised - sent)
            self.result.published_s.append(arrived - raised)

    async def await_floor(self, index: int, *, counted: bool) -> None:
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.subscriber.floor_waiters[index] = waiter
        sent = time.monotonic()
        await self.publisher.publish(self.subscriber.floor_topic, str(index).encode(), qos=1)
        try:
            arrived = await asyncio.wait_for(waiter, self.args.alert_timeout)
        except TimeoutError:
            self.subscriber.floor_waiters.pop(index, None)
            self.result.floor_missing += counted
            return
        if counted:
            self.result.floor_s.append(arrived - sent)


async def probe(
    args: argparse.Namespace,
    socket_path: Path,
    subscriber: Subscriber,
    publisher: aiomqtt.Client,
    result: Latency,
) -> None:
    """Run the prober; the agent's and the broker's CPU over its run."""
    agent_pid = args.agent_pid
    seconds = (args.warmup_probes + args.probes) * args.probe_every * PERIOD_NS / 1e9
    log(f"alert latency: {args.probes} violations over {seconds:.0f} s, floor between them")
    profile = args.profile_dir / "latency.txt" if args.profile_dir else None
    cpu_before, threads_before = cpu_s(agent_pid), thread_cpu(agent_pid)
    broker_before = cpu_s(args.mosquitto_pid)
    started = time.monotonic()
    with profiled(args.py_spy, agent_pid, profile, seconds):
        await Prober(args, socket_path, subscriber, publisher, result).run()
    window = result.window_s = time.monotonic() - started
    result.agent_cpu_pct = round((cpu_s(agent_pid) - cpu_before) / window * 100, 1)
    result.mosquitto_cpu_pct = round((cpu_s(args.mosquitto_pid) - broker_before) / window * 100, 1)
    result.agent_cpu_by_thread_pct = {
        name: round((spent - threads_before.get(name, 0.0)) / window * 100, 1)
        for name, spent in thread_cpu(agent_pid).items()
    }


# 2. ingest throughput --------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    sent: int
    agent_s: float
    threads: dict[str, float]
    senders_s: float
    mosquitto_s: float
    etcd_s: float
    machine: Any


def snapshot(
    counters: Sequence[mmap.mmap], agent_pid: int, senders: Sequence[int], args: argparse.Namespace
) -> Snapshot:
    return Snapshot(
        at=time.monotonic(),
        sent=sum(struct.unpack_from("q", shared, 0)[0] for shared in counters),
        agent_s=cpu_s(agent_pid),
        threads=thread_cpu(agent_pid),
        senders_s=sum(cpu_s(pid) for pid in senders),
        mosquitto_s=cpu_s(args.mosquitto_pid),
        etcd_s=cpu_s(args.etcd_pid),
        machine=psutil.cpu_times(),
    )


def counted_by_agent(
    endpoint: str, before: dict[str, float | None], sent: int
) -> tuple[float, float]:
    """(delivered, dropped) by the agent since `before`, as it published them once settled.

    The agent writes a latest value again only when it moved by more than
    `data_storage.publish_deadband` (1 %) or after `publish_max_age` (60 s), so the delivered
    count in etcd may stay up to 1 % below the truth; a first drop (from 0) always shows.
    """
    expected = (before["delivered"] or 0) + sent * (1 - DEADBAND)
    deadline = time.monotonic() + 10
    after = ingest_counters(endpoint)
    while (after["delivered"] or 0) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        after = ingest_counters(endpoint)
    after = settled_counters(endpoint)
    log(f"ingest counters in etcd: before {before}, after {after}; sent {sent}")
    delivered = (after["delivered"] or 0) - (before["delivered"] or 0)
    return delivered, (after["dropped"] or 0) - (before["dropped"] or 0)


def limited_by(agent_pct: float, sender_pct: float, machine_pct: float) -> str:
    """What held the blast back (CPU percents of one core; the machine's of all cores)."""
    if agent_pct >= 90:
        return "agent"
    if sender_pct >= 90:
        return "sender"
    if machine_pct >= 90:
        return "machine"  # the cores are busy, with other work too
    return "handoff"  # sender and agent take turns on the short socket queue


def measure_ingest(
    args: argparse.Namespace, etcd: EtcdServer, socket_path: Path, work: Path, agent_pid: int
) -> dict[str, Any]:
    before = settled_counters(etcd.endpoint)
    tasks = [f"blast-{i}" for i in range(args.blast_tasks)]
    seconds = args.blast_warmup + args.blast_window + 0.5
    children: list[subprocess.Popen[bytes]] = []
    counters: list[mmap.mmap] = []
    log(
        f"ingest: {args.senders} blocking sender(s) over {len(tasks)} tasks, "
        f"{args.blast_warmup:.0f} s warm-up, {args.blast_window:.0f} s window"
    )
    try:
        for index in range(args.senders):
            path = work / f"sent-{index}"
            path.write_bytes(bytes(8))
            with path.open("r+b") as file:
                counters.append(mmap.mmap(file.fileno(), 8))
            children.append(
                start_sender(
                    {
                        "mode": "blast",
                        "socket": str(socket_path),
                        "tasks": tasks[index :: args.senders],
                        "seconds": seconds,
                        "counter": str(path),
                    }
                )
            )
        pids = [child.pid for child in children]
        time.sleep(args.blast_warmup)
        first = snapshot(counters, agent_pid, pids, args)
        profile = args.profile_dir / "ingest.txt" if args.profile_dir else None
        with profiled(args.py_spy, agent_pid, profile, args.blast_window):
            time.sleep(args.blast_window)
            last = snapshot(counters, agent_pid, pids, args)
        outcomes = [finish_sender(child, timeout=seconds + 30) for child in children]
    finally:
        kill_children(children)
        for shared in counters:
            shared.close()
    sent_total = sum(outcome["sent"] for outcome in outcomes)
    wall = last.at - first.at
    reports = last.sent - first.sent

    def pct(spent: float) -> float:
        return round(spent / wall * 100, 1)

    busy_before = first.machine.user + first.machine.system + first.machine.softirq
    busy_after = last.machine.user + last.machine.system + last.machine.softirq
    agent_s = last.agent_s - first.agent_s
    delivered, dropped = counted_by_agent(etcd.endpoint, before, sent_total)
    agent_pct = pct(agent_s)
    sender_pct = pct(last.senders_s - first.senders_s)
    machine_pct = round((busy_after - busy_before) / (wall * (psutil.cpu_count() or 1)) * 100, 1)
    return {
        "ingest_reports_per_s": round(reports / wall),
        "cpu_us_per_report": round(agent_s / reports * 1e6, 2),
        "agent_cpu_pct_one_core": agent_pct,
        "ingest_reports_per_s_at_one_core": round(reports / agent_s) if agent_s else None,
        "sender_limited": agent_pct < 90,
        "ingest_limited_by": limited_by(agent_pct, sender_pct / args.senders, machine_pct),
        "senders": args.senders,
        "sender_cpu_pct": sender_pct,
        "blast_tasks": len(tasks),
        "blast_window_s": round(wall, 2),
        "blast_reports_in_window": reports,
        "blast_reports_sent": sent_total,
        "agent_ingest_delivered": delivered,
        "agent_ingest_dropped": dropped,
        "agent_counted_every_report": dropped == 0
        and abs(delivered - sent_total) <= DEADBAND * ((before["delivered"] or 0) + delivered),
        "agent_cpu_pct_by_thread_blast": {
            name: pct(spent - first.threads.get(name, 0.0))
            for name, spent in sorted(last.threads.items(), key=lambda item: -item[1])
            if spent - first.threads.get(name, 0.0) > 0
        },
        "mosquitto_cpu_pct_blast": pct(last.mosquitto_s - first.mosquitto_s),
        "etcd_cpu_pct_blast": pct(last.etcd_s - first.etcd_s),
        "machine_busy_pct_blast": machine_pct,
    }


# 3. deadline supervision against ground truth --------------------------------------------------


SUPERVISION_ALERTS = f"piccolo/monitoring/alerts/{NODE}/model/+"
SILENT_MODEL = "rt-20ms"
"""The task of the four that also falls silent for a while (SILENT_FROM..SILENT_TO of the run)."""
FLOOR_EVERY_S = 0.1


def etcd_documents(endpoint: str, key: str, *, prefix: bool = False) -> list[dict[str, Any]]:
    """The JSON documents at PREFIX + key (every key under it with `prefix`)."""
    result = subprocess.run(
        [
            "etcdctl",
            f"--endpoints={endpoint}",
            "get",
            PREFIX + key,
            "--print-value-only",
            *(["--prefix"] if prefix else []),
        ],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return []
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@dataclass
class Observed:
    """What one supervision run's subscriber saw, and the floor measured beside it."""

    floor_topic: str
    alerts: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    """(arrival, `first_seen`, payload), CLOCK_MONOTONIC ns; the first copy of each message."""
    seen: set[tuple[str, str]] = field(default_factory=set)
    floor_waiters: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    floor_s: list[float] = field(default_factory=list)
    floor_missing: int = 0
    agent_cpu_pct: float = 0.0
    agent_cpu_by_thread_pct: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0

    async def receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            arrived = time.monotonic_ns()
            if not isinstance(message.payload, bytes):
                continue
            if message.topic.value == self.floor_topic:
                waiter = self.floor_waiters.pop(int(message.payload), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(arrived)
                continue
            alert = json.loads(message.payload)
            if (alert["id"], alert["status"]) in self.seen:  # a QoS 1 duplicate
                continue
            self.seen.add((alert["id"], alert["status"]))
            self.alerts.append((arrived, monotonic_of(rfc3339_ns(alert["first_seen"])), alert))

    def of(self, model: str, task: str, kind: str, status: str = "firing") -> list[Any]:
        return [
            item
            for item in self.alerts
            if (item[2]["resource"]["id"], item[2]["metric"], item[2]["kind"], item[2]["status"])
            == (model, task, kind, status)
        ]

    async def floor(self, publisher: aiomqtt.Client, index: int, wait_s: float) -> None:
        """One bare QoS 1 message: publish -> arrival at the subscriber."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.floor_waiters[index] = waiter
        sent = time.monotonic_ns()
        await publisher.publish(self.floor_topic, str(index).encode(), qos=1)
        try:
            arrived = await asyncio.wait_for(waiter, wait_s)
        except TimeoutError:
            self.floor_waiters.pop(index, None)
            self.floor_missing += 1
            return
        self.floor_s.append((arrived - sent) / 1e9)


async def observe_supervision(
    args: argparse.Namespace,
    mosquitto: MosquittoServer,
    spec: dict[str, Any],
    outdir: Path,
    *,
    loaded: bool,
) -> tuple[dict[str, TaskLog], Observed]:
    """Run the workload (with a busy loop on every core when `loaded`) while a subscriber takes
    the alerts and a bare QoS 1 message goes every FLOOR_EVERY_S; the task logs and what came."""
    session = uuid.uuid4().hex[:8]
    observed = Observed(f"bench/floor/{session}")
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sv-sub-{session}") as sub,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sv-pub-{session}") as pub,
    ):
        for topic in (SUPERVISION_ALERTS, observed.floor_topic):
            await sub.subscribe(topic, qos=1)
        receiver = asyncio.create_task(observed.receive(sub), name="subscriber")
        load = BusyLoad().start() if loaded else None
        pending: set[asyncio.Task[None]] = set()
        try:
            await asyncio.sleep(0.5)  # the load settles
            cpu_before, started = cpu_s(args.agent_pid), time.monotonic()
            threads_before = thread_cpu(args.agent_pid)
            run = start_workload(spec, outdir)  # from the main thread: see its docstring
            try:
                waiting = asyncio.create_task(
                    asyncio.to_thread(run.wait, run.duration_ns / 1e9 + 30)
                )
                index = 0
                while not waiting.done():
                    probe = asyncio.create_task(observed.floor(pub, index, args.alert_timeout))
                    pending.add(probe)
                    probe.add_done_callback(pending.discard)
                    index += 1
                    await asyncio.wait([waiting], timeout=FLOOR_EVERY_S)
                logs = waiting.result()
            finally:
                run.kill()
            observed.window_s = time.monotonic() - started
            spent = cpu_s(args.agent_pid) - cpu_before
            observed.agent_cpu_pct = round(spent / observed.window_s * 100, 1)
            observed.agent_cpu_by_thread_pct = {
                name: round((spent - threads_before.get(name, 0.0)) / observed.window_s * 100, 1)
                for name, spent in thread_cpu(args.agent_pid).items()
            }
        finally:
            if load is not None:
                load.stop()
        if pending:
            await asyncio.wait(pending, timeout=args.alert_timeout + 1)
        await asyncio.sleep(args.alert_timeout)  # alerts on their way
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    return logs, observed


def settled_task_counts(
    endpoint: str, logs: dict[str, TaskLog], task: str, timeout: float = 20.0
) -> dict[str, int | None]:
    """Each model's deadlineMisses of `task`, once its status document shows every activation
    the task reported and the model inactive (nothing reported for two reference cycles: all
    processed, every hang-up judged); None for a document that did not settle in time."""
    expected = {
        log.header["model"]: sum(1 for r in log.rows if r.get("start_ok") and r.get("end_ok"))
        for log in logs.values()
    }
    counts: dict[str, int | None] = dict.fromkeys(expected)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and None in counts.values():
        for model, activations in expected.items():
            if counts[model] is not None:
                continue
            docs = etcd_documents(endpoint, f"model/{model}") or [{}]
            safety = docs[0].get("status", {}).get("metrics", {}).get("safetyMetrics", {})
            found = safety.get("tasks", {}).get(task, {})
            inactive = safety.get("safetyMonitorStatus") == "Inactive"
            if inactive and found.get("activations") == activations:
                counts[model] = int(found["deadlineMisses"])
        time.sleep(0.2)
    return counts


def task_corrections(endpoint: str, model: str, task: str) -> int:
    """The hang-ups the agent took back for `task` (its `deadline_miss_corrected` events)."""
    return sum(
        1
        for event in etcd_documents(endpoint, f"model/{model}/events/", prefix=True)
        if event.get("type") == "deadline_miss_corrected"
        and event.get("details", {}).get("task") == task
    )


def supervision_phase(
    args: argparse.Namespace,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    *,
    socket_path: Path,
    work: Path,
    mode: str,
) -> dict[str, Any]:
    """One run of the four tasks (their task named `sv-<mode>`, so runs do not mix), judged."""
    task = f"sv-{mode}"
    spec = four_task_spec(
        socket_path, task=task, duration_s=args.supervision_seconds, silent_model=SILENT_MODEL
    )
    logs, observed = asyncio.run(
        observe_supervision(
            args, mosquitto, spec, work / f"supervision-{mode}", loaded=mode == "loaded"
        )
    )
    counts = settled_task_counts(etcd.endpoint, logs, task)
    tasks: dict[str, dict[str, Any]] = {}
    latency_ms: list[float] = []
    for log in logs.values():
        model = log.header["model"]
        counted = counts[model]
        period = int(log.header["period_ns"])
        end_of_run = int(log.header["t0_ns"]) + int(log.header["duration_ns"])
        alive = [raised for _, raised, _ in observed.of(model, task, "alive_timeout")]
        row: dict[str, Any] = {
            "settled": counted is not None,
            "fifo": log.header["fifo"]["applied"],
            "send_failures": sum(log.summary["send_failures"].values()),
            "alive_timeouts_in_run": sum(1 for raised in alive if raised <= end_of_run),
            "alive_timeouts_unexpected": len(unexpected_alive(log.rows, period, alive)),
        }
        if counted is not None:
            firing = [
                FiringAlert(float(alert["value"]), raised, arrived)
                for arrived, raised, alert in observed.of(model, task, "deadline_miss")
            ]
            corrections = task_corrections(etcd.endpoint, model, task)
            judged = fidelity(
                log.rows, int(log.header["deadline_ns"]), counted, firing, corrections=corrections
            )
            latency_ms += judged.pop("latency_ms")
            judged.pop("misses_by_kind")
            judged.pop("false_alarm_seqs")
            row = judged | row
        tasks[model] = row

    def total(name: str) -> int:
        return sum(int(row.get(name, 0)) for row in tasks.values())

    floor = summary_ms("mqtt_floor", observed.floor_s)
    return {
        "tasks": tasks,
        **{
            name: total(name)
            for name in (
                "true_misses",
                "counted_misses",
                "false_misses",
                "missed_misses",
                "false_misses_lost_ends",
                "lost_ends",
                "false_alarms",
                "corrections",
                "alive_timeouts_unexpected",
                "send_failures",
            )
        },
        "settled": all(row["settled"] for row in tasks.values()),
        **{
            key: value
            for key, value in summary_ms("alert_latency", [ms / 1e3 for ms in latency_ms]).items()
            if not key.endswith("_p90")
        },
        "alert_latency_samples": len(latency_ms),
        "mqtt_floor_ms_p50": floor["mqtt_floor_ms_p50"],
        "mqtt_floor_ms_p99": floor["mqtt_floor_ms_p99"],
        "floor_samples": len(observed.floor_s),
        "floor_missing": observed.floor_missing,
        "agent_cpu_pct": observed.agent_cpu_pct,
        "agent_cpu_pct_by_thread": observed.agent_cpu_by_thread_pct,
        "window_s": round(observed.window_s, 1),
    }


def supervised_run(
    args: argparse.Namespace,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    work: Path,
    pids_file: Path,
    *,
    mode: str,
) -> dict[str, Any]:
    """A fresh agent with the four models (each run starts from the same state), its CPU idle,
    the run of the four tasks, and its CPU once they have all stopped."""
    socket_path = work / f"sv-{mode}.sock"
    manifests = write_manifests(work / "supervision-manifests", NODE)
    agent = AgentProcess(
        work / f"supervision-agent-{mode}",
        {
            "data_storage.configuration.endpoints": [etcd.endpoint],
            "mqtt.broker": mosquitto.endpoint,
            "ingest.socket": str(socket_path),
            "manifests.paths": [str(manifests)],
            "resource_monitoring.container.socket": str(work / "no-podman.sock"),
            "resource_monitoring.container.collection_interval": "500ms",
        },
    )
    agent.start()
    try:
        assert agent.process is not None  # noqa: S101 - started above
        pid = args.agent_pid = agent.process.pid
        pids_file.write_text(f"{pid}\n", encoding="ascii")
        agent.wait_for_log("ready in", timeout=30)
        time.sleep(1.0)  # past its first cycles
        idle = cpu_pct(pid, args.idle_window)
        log(
            f"supervision ({mode}): 4 tasks for {args.supervision_seconds:.0f} s"
            + (", a busy loop on every core" if mode == "loaded" else "")
        )
        phase = supervision_phase(
            args, etcd, mosquitto, socket_path=socket_path, work=work, mode=mode
        )
        after = cpu_pct(pid, args.idle_window)
        if not agent.running:
            raise RuntimeError(f"the agent exited; its log:\n{agent.log()[-3000:]}")
        exit_code = agent.stop(timeout=30)
        lines = agent.log().splitlines()
    finally:
        agent.kill()
    return phase | {
        "agent_cpu_pct_idle_before": round(idle, 1),
        "agent_cpu_pct_after_run": round(after, 1),
        "agent_exit_code": exit_code,
        "agent_log_warnings": sum(1 for line in lines if line.startswith("<4>")),
        "agent_log_errors": sum(1 for line in lines if line[:3] in {"<0>", "<1>", "<2>", "<3>"}),
    }


def cpu_pct(pid: int, seconds: float) -> float:
    """The process's CPU (user + system, all threads) over the next `seconds`, % of one core."""
    before, started = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - before) / (time.monotonic() - started) * 100


def measure_supervision(
    args: argparse.Namespace,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    work: Path,
    pids_file: Path,
) -> dict[str, Any]:
    """The four tasks once quiet, once with every core busy, each with an agent of its own."""
    log("supervision: an agent with the four periodic models for each run")
    return {
        mode: supervised_run(args, etcd, mosquitto, work, pids_file, mode=mode)
        for mode in ("quiet", "loaded")
    }


def supervision_fields(phases: dict[str, Any]) -> dict[str, Any]:
    """The supervision block of the result and its top-level summary fields."""
    quiet, loaded = phases["quiet"], phases["loaded"]
    return {
        "supervision": phases,
        "false_misses": quiet["false_misses"] + loaded["false_misses"],
        "missed_misses": quiet["missed_misses"] + loaded["missed_misses"],
        "false_misses_lost_ends": quiet["false_misses_lost_ends"]
        + loaded["false_misses_lost_ends"],
        "false_alarms": quiet["false_alarms"] + loaded["false_alarms"],
        "quiet_alert_latency_ms_p99": quiet["alert_latency_ms_p99"],
        "quiet_mqtt_floor_ms_p99": quiet["mqtt_floor_ms_p99"],
        "loaded_alert_latency_ms_p99": loaded["alert_latency_ms_p99"],
        "loaded_mqtt_floor_ms_p99": loaded["mqtt_floor_ms_p99"],
        "supervising_cpu_pct_one_core": quiet["agent_cpu_pct"],
    }


# the run --------------------------------------------------------------------------------------


def measure_timing(
    args: argparse.Namespace,
    etcd: EtcdServer,
    mosquitto: MosquittoServer,
    work: Path,
    pids_file: Path,
) -> dict[str, Any]:
    """Phases 1 and 2 with an agent of the example manifests: idle CPU, latency, ingest."""
    socket_path = work / "ingest.sock"
    agent = AgentProcess(
        work / "agent",
        {
            "data_storage.configuration.endpoints": [etcd.endpoint],
            "mqtt.broker": mosquitto.endpoint,
            "ingest.socket": str(socket_path),
            "resource_monitoring.container.socket": str(work / "no-podman.sock"),
            "resource_monitoring.container.collection_interval": "500ms",
        },
    )
    log("starting the agent")
    qlen = int(QLEN_FILE.read_text(encoding="ascii"))
    agent.start()
    try:
        assert agent.process is not None  # noqa: S101 - started above
        pids_file.write_text(f"{agent.process.pid}\n", encoding="ascii")
        agent.wait_for_log("ready in", timeout=30)
        pid = args.agent_pid = agent.process.pid
        log(f"agent ready (pid {pid}, socket queue {qlen + 1} datagrams)")
        time.sleep(1.0)  # past its first cycles
        idle_before, idle_started = cpu_s(pid), time.monotonic()
        time.sleep(args.idle_window)
        idle_pct = (cpu_s(pid) - idle_before) / (time.monotonic() - idle_started) * 100

        latency = asyncio.run(measure_latency(args, mosquitto, socket_path))
        if not agent.running:
            raise RuntimeError(f"the agent exited; its log:\n{agent.log()[-3000:]}")
        ingest = measure_ingest(args, etcd, socket_path, work, pid)
        log("stopping the agent")
        exit_code = agent.stop(timeout=30)
        lines = agent.log().splitlines()
    finally:
        agent.kill()
    alerts = summary_ms("alert_latency", latency.alerts_s)
    split = {
        key: value
        for part, seconds in (("raise", latency.raised_s), ("publish", latency.published_s))
        for key, value in summary_ms(f"alert_{part}", seconds).items()
        if not key.endswith("_p90")
    }
    floor = summary_ms("mqtt_floor", latency.floor_s)
    background = latency.background
    load_rate = args.background_rate + 1e9 / PERIOD_NS  # the background and the probe task
    result: dict[str, Any] = {
        "ingest_reports_per_s": ingest.pop("ingest_reports_per_s"),
        "cpu_us_per_report": ingest.pop("cpu_us_per_report"),
        **alerts,
        **floor,
        **ingest,
        **split,
        "alerts_measured": len(latency.alerts_s),
        "alerts_missing": latency.alerts_missing,
        "alerts_wrong_value": latency.wrong_value,
        "floor_measured": len(latency.floor_s),
        "floor_missing": latency.floor_missing,
        "other_alerts": dict(sorted(latency.other_alerts.items())),
        "probe_sent": latency.probe_sent,
        "probe_dropped": latency.probe_dropped,
        "background_reports_per_s": round(background["sent"] / background["elapsed_s"])
        if background.get("elapsed_s")
        else None,
        "background_dropped": background.get("dropped"),
        "background_late_max_ms": background.get("late_max_ms"),
        "latency_window_s": round(latency.window_s, 1),
        "agent_cpu_pct_idle": round(idle_pct, 1),
        "agent_cpu_pct_under_load": latency.agent_cpu_pct,
        "agent_cpu_us_per_report_under_load": round(
            (latency.agent_cpu_pct - idle_pct) / 100 / load_rate * 1e6, 1
        ),
        "agent_cpu_pct_by_thread_under_load": latency.agent_cpu_by_thread_pct,
        "mosquitto_cpu_pct_under_load": latency.mosquitto_cpu_pct,
        "agent_exit_code": exit_code,
        "agent_log_warnings": sum(1 for line in lines if line.startswith("<4>")),
        "agent_log_errors": sum(1 for line in lines if line[:3] in {"<0>", "<1>", "<2>", "<3>"}),
    }

    def ratio(value: float | None, target: float | None) -> float | None:
        return None if value is None or not target else round(value / target, 2)

    result["ratios"] = {
        "ingest_over_target": ratio(
            result["ingest_reports_per_s"], TARGETS["ingest_reports_per_s"]
        ),
        "alert_p99_over_target": ratio(
            result["alert_latency_ms_p99"], TARGETS["alert_latency_ms_p99"]
        ),
        "alert_p50_over_floor_p50": ratio(
            result["alert_latency_ms_p50"], result["mqtt_floor_ms_p50"]
        ),
        "alert_p99_over_floor_p99": ratio(
            result["alert_latency_ms_p99"], result["mqtt_floor_ms_p99"]
        ),
    }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    begun = time.monotonic()
    result: dict[str, Any] = {"loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    with (
        tempfile.TemporaryDirectory(prefix="pct-", dir="/tmp") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        log("starting etcd and mosquitto")
        etcd = stack.enter_context(EtcdServer(work / "etcd"))
        mosquitto = stack.enter_context(MosquittoServer(work / "mqtt"))
        args.etcd_pid, args.mosquitto_pid = etcd.pid, mosquitto.pid
        # The guard kills the agent whose pid the file names when this run dies; etcd and
        # mosquitto stop on their own SIGTERM: the guard gives them a second.
        pids_file = work / "guard.pids"
        stack.callback(kill_children, [start_guard(work, pids_file, settle_s=1.0)])
        result["max_dgram_qlen"] = int(QLEN_FILE.read_text(encoding="ascii"))
        if not args.only_supervision:
            result |= measure_timing(args, etcd, mosquitto, work, pids_file)
        if args.supervision_seconds > 0:
            phases = measure_supervision(args, etcd, mosquitto, work, pids_file)
            result |= supervision_fields(phases)
        log("tearing down")
    result["runtime_s"] = round(time.monotonic() - begun, 1)
    result["targets"] = TARGETS
    return result


def in_netns(qlen: int) -> None:
    """Run this bench again, with the same arguments, in a new network namespace (loopback up,
    `net.unix.max_dgram_qlen` = qlen): the machine's own setting stays as it is."""
    script = 'ip link set lo up && sysctl -qw "net.unix.max_dgram_qlen=$0" && exec "$@"'
    log(f"running again in a network namespace of its own with max_dgram_qlen {qlen}")
    sys.stdout.flush()
    os.execvpe(  # noqa: S606 - a fixed argument list, no shell from outside
        "unshare",
        ["unshare", "--net", "sh", "-c", script, str(qlen), sys.executable, *sys.argv],
        {**os.environ, NETNS_MARK: "1"},
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--sender":
        sender_main(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=200, help="violations measured")
    parser.add_argument("--warmup-probes", type=int, default=3)
    parser.add_argument(
        "--probe-every", type=int, default=16, help="probe activations (10 ms) per violation"
    )
    parser.add_argument("--alert-timeout", type=float, default=1.0, help="seconds")
    parser.add_argument("--background-rate", type=float, default=1000.0, help="reports/s")
    parser.add_argument("--background-tasks", type=int, default=10)
    parser.add_argument("--idle-window", type=float, default=2.0, help="idle CPU, seconds")
    parser.add_argument("--senders", type=int, default=1, help="blocking blast senders")
    parser.add_argument("--blast-tasks", type=int, default=8)
    parser.add_argument("--blast-warmup", type=float, default=1.0)
    parser.add_argument("--blast-window", type=float, default=10.0)
    parser.add_argument(
        "--qlen", type=int, default=None, help="run in a netns with this max_dgram_qlen (root)"
    )
    parser.add_argument("--py-spy", default=None, help="py-spy binary: profile the agent")
    parser.add_argument("--profile-dir", type=Path, default=None)
    parser.add_argument(
        "--supervision-seconds",
        type=float,
        default=12.0,
        help="length of each supervision run (quiet, loaded); 0 leaves the phase out",
    )
    parser.add_argument(
        "--only-supervision", action="store_true", help="run the supervision phase alone"
    )
    parser.add_argument("--deadline", type=int, default=300, help="seconds before giving up")
    args = parser.parse_args()
    if args.qlen is not None and NETNS_MARK not in os.environ:
        in_netns(args.qlen)  # does not return
    if args.qlen is not None and int(QLEN_FILE.read_text(encoding="ascii")) != args.qlen:
        parser.error(f"net.unix.max_dgram_qlen is not {args.qlen} in this namespace")
    if 0 < args.supervision_seconds < 8:
        parser.error("--supervision-seconds must be 0 or at least 8 (injections 1 s apart)")
    if args.only_supervision and args.supervision_seconds == 0:
        parser.error("--only-supervision needs --supervision-seconds above 0")
    if args.probe_every < 12:
        parser.error("--probe-every must leave 10 clean activations (resolve) and then some")
    if args.py_spy and args.profile_dir is None:
        args.profile_dir = Path.cwd() / "timing-profile"
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.deadline)
    try:
        result = run(args)
    finally:
        signal.alarm(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
