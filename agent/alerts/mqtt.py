"""Publishes alerts over MQTT: the only module that imports aiomqtt (and, through it, paho-mqtt).

Delivery
    `enqueue` writes alerts to the outbox of the durable buffer (one SQLite transaction on the
    buffer's worker thread) and returns after the commit. `run` connects, publishes the retained
    status `online`, and sends every outbox message with QoS 1. The catch-up sends one at a time,
    each after the previous one's PUBACK; the direct path (below) keeps up to `MAX_INFLIGHT`
    messages awaiting their PUBACK, which paho writes to the connection in publish order, so the
    broker receives them in the order they were handed over, except that a batch of critical
    alerts (`submit(urgent=True)`) goes ahead of every batch not yet being sent. A message leaves
    the outbox only after its PUBACK: alerts enqueued while the broker is away, or while the agent
    is down, are sent after the next connect. Delivery is at least once: a message whose PUBACK was
    lost is sent again (QoS 1 duplicates carry the same alert `id`, by which receivers dedupe).

    Two paths lead to the broker. After a connect the publisher catches up from the outbox
    (`outbox_take`, oldest first) until it finds it empty. From then on `enqueue` also hands its
    messages straight to the publisher, and the commit waits until they are sent (at most
    `SEND_FIRST_S`): no thread hop and no SQLite call lie between an alert and its PUBACK. The
    order matters on small machines: a commit running on the worker thread during the publish
    doubled the wait for the PUBACK (p50 0.7 -> 1.3 ms on 2 cores: both threads want the GIL,
    and the broker and the subscribers want the cores). The messages leave the outbox once both
    the PUBACK and the commit are in. Commits start in enqueue order (each waits until the one
    before has started), so outbox order is enqueue order on both paths. A message that the
    catch-up already sent (its sequence number is at most the highest sent) is skipped on the
    direct path. If the publisher falls `LIVE_MAX` batches behind, it drops its in-memory copies
    of committed ones and catches up from the outbox again.

Connection
    One aiomqtt client per connection attempt (a fresh paho client each time): paho keeps
    unacknowledged QoS 1 messages of a client and re-sends them on its next connect, which would
    send a second copy beside the outbox's. With a fresh client the outbox is the only source.
    The Last Will sets the retained status `{prefix}/agents/{node}/status` to `offline` when the
    connection dies without a DISCONNECT (agent killed, network gone: after 1.5 x keepalive).
    A lost connection is noticed while idle too (an iterator over the client's incoming messages,
    with nothing subscribed, ends only by a disconnect), and a publish waiting for its PUBACK is
    abandoned at once. Reconnects back off with full jitter (`agent.backoff.Backoff`); the
    failure is logged once per outage. aiomqtt 2.5 ignores a connection closed before CONNACK
    (how a refused TLS client certificate shows) and waits `connect_timeout_s` for it.

Stopping
    `stop` keeps draining for at most `STOP_FLUSH_S`, publishes the retained status `offline`,
    and disconnects cleanly (no Last Will then); it returns within its timeout, cancelling `run`
    if it has to. A cancelled `run` still tries to publish `offline` for `OFFLINE_TIMEOUT_S`.
    Cancelled during a CONNECT that got no answer, aiomqtt 2.5 leaves its socket to the event
    loop; when that socket closes, its callback logs a CancelledError (harmless).

Latency
    Loopback, mosquitto 2.0.11, aiomqtt 2.5.1, Python 3.11, a 2-core VM shared with other
    benchmarks (load average 2), alerts 4 ms apart, 6 interleaved runs of 400 per design:

        design                                   enqueue -> PUBACK     enqueue -> subscriber
                                                 p50    p99    p99.9   p50    p99
        direct path, commit after the send      1.08   3.8    5.6     0.78   3.1   (this one)
        direct path, commit during the send     1.52   5.7    9.6     1.03   5.1
        commit, then take, then publish         1.77   13.3   44.5    1.46   11.1

    (ms; the subscriber is mosquitto_sub in another process, stamping arrivals on the wall
    clock; the PUBACK is stamped where aiomqtt's publish returns.) A bare awaited QoS 1
    publish -> PUBACK takes p50 0.3-0.45 ms, p99 0.6-1.5 ms on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiomqtt

from agent.backoff import Backoff
from agent.clock import rfc3339
from agent.config import parse_broker
from agent.model import EVENT_SEVERITY, OutboxMessage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.config import Mqtt
    from agent.health import Progress
    from agent.model import Alert

_log = logging.getLogger(__name__)
_client_log = _log.getChild("client")
# paho logs each lost connection as an ERROR ("failed to receive on socket"), which this module
# already reports once per outage; set this logger to DEBUG to see paho's packet trace.
_client_log.setLevel(logging.CRITICAL)

QOS = 1
BATCH_MESSAGES = 100
"""Outbox messages taken at a time; acknowledged together after the last one's PUBACK."""
IDLE_WAKE_S = 1.0
"""With an empty outbox, look again at least this often (and at once when alerts arrive)."""
CONNECT_TIMEOUT_S = 5.0
"""How long a broker may take to answer CONNECT. Also what a refused TLS client certificate
costs: aiomqtt 2.5 ignores a connection closed before CONNACK and waits this long."""
DISCONNECT_TIMEOUT_S = 2.0
"""How long a disconnect may take before the connection is abandoned."""
PUBLISH_TIMEOUT_S = 10.0
"""How long a connected broker may take to acknowledge a publish before we reconnect."""
STOP_FLUSH_S = 1.0
OFFLINE_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 3.0
SEND_FIRST_S = 0.05
"""How long a commit waits for its messages to be sent first (a slow broker delays it no more)."""
LIVE_MAX = 10_000
"""Enqueued batches held in memory for the direct path; beyond, the outbox is re-read."""
MAX_INFLIGHT = 20
"""QoS 1 messages of the direct path awaiting their PUBACK at a time (paho's own default
window): several alerts of a burst share one round trip, and order is kept because paho writes
them to the connection in the order they were published."""
PENDING_CALLS_THRESHOLD = 1000
"""aiomqtt logs a warning per publish while more calls than this (default 10) await answers."""


class Outbox(Protocol):
    """What the publisher needs of the durable outbox (agent.store.buffer.AsyncBuffer has it)."""

    outbox_changed: asyncio.Event
    """Set whenever messages were added (or the publisher should look again)."""

    async def outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]: ...
    async def outbox_take(self, limit: int) -> list[tuple[int, OutboxMessage]]: ...
    async def outbox_ack(self, seqs: Sequence[int]) -> None: ...
    def outbox_depth(self) -> int: ...


@dataclass(slots=True)
class MqttStats:
    published: int = 0
    """Messages acknowledged by the broker (PUBACK), status messages not counted."""
    failures: int = 0
    """Failed connection attempts and lost connections."""
    connected: bool = False
    connects: int = 0
    last_publish_ns: int | None = None
    max_inflight: int = 0
    """The most messages of the direct path that awaited their PUBACK at once."""


@dataclass(frozen=True, slots=True)
class _Live:
    """An enqueued batch on the direct path; `commit` gives its outbox sequence numbers."""

    messages: Sequence[OutboxMessage]
    commit: asyncio.Future[list[int]]
    sent: asyncio.Event
    """Set once the publisher has tried to send it (or skipped it): the commit may start."""
    urgent: bool = False
    """Critical alerts: sent ahead of every batch that is not yet being sent."""

    def sent_before(self, sent_upto: int) -> bool:
        """Whether the catch-up from the outbox has already sent all of it."""
        commit = self.commit
        if not commit.done() or commit.cancelled() or commit.exception() is not None:
            return False
        return commit.result()[-1] <= sent_upto


class MqttPublisher:
    """Delivers the outbox to the broker; see the module docstring for the contract."""

    name = "mqtt"

    def __init__(
        self,
        config: Mqtt,
        node: str,
        version: str,
        buffer: Outbox,
        progress: Progress,
        *,
        started_ns: int | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.stats = MqttStats()
        self._connect_timeout_s = connect_timeout_s
        self._config = config
        self._node = node
        self._buffer = buffer
        self._progress = progress
        self._prefix = config.topic_prefix.rstrip("/")
        self._host, self._port = parse_broker(config.broker, tls=config.tls.enabled)
        self.status_topic = f"{self._prefix}/agents/{node}/status"
        started = time.time_ns() if started_ns is None else started_ns
        status = {"node": node, "version": version, "started": rfc3339(started)}
        self._online = _compact({"status": "online", **status})
        self._offline = _compact({"status": "offline", **status})
        self._backoff = Backoff()
        self._outage = False
        self._stopping = asyncio.Event()
        self._flush_until = math.inf
        self._task: asyncio.Task[None] | None = None
        self._live: deque[_Live] = deque()
        self._caught_up = False
        self._sent_upto = 0
        """The highest outbox seq that the catch-up has had acknowledged by the broker."""
        self._acks: set[asyncio.Future[None]] = set()
        self._inflight = 0
        """Messages of the direct path published and awaiting their PUBACK."""
        self._last_commit_started: asyncio.Future[None] | None = None

    async def enqueue(self, alerts: Sequence[Alert]) -> None:
        """Put `alerts` in the durable outbox (one transaction); returns once it is committed.

        A connected publisher sends them before they are committed (see the module docstring).
        """
        if alerts:
            # Shielded: a cancelled caller must not cancel the commit that the publisher waits for.
            await asyncio.shield(self.submit(alerts))

    def submit(self, alerts: Sequence[Alert], *, urgent: bool = False) -> asyncio.Future[list[int]]:
        """Hand `alerts` to the publisher now and commit them to the outbox; never blocks.

        Returns the commit (the outbox sequence numbers). `urgent` batches (critical alerts) go
        ahead of every batch not yet being sent.
        """
        loop = asyncio.get_running_loop()
        if not alerts:
            done: asyncio.Future[list[int]] = loop.create_future()
            done.set_result([])
            return done
        now = time.time_ns()
        messages = [
            OutboxMessage(
                alert.topic(self._prefix),
                alert.payload(),
                retain=False,
                severity=EVENT_SEVERITY[alert.severity],
                created_ns=now,
            )
            for alert in alerts
        ]
        sent = asyncio.Event()
        previous, self._last_commit_started = self._last_commit_started, loop.create_future()
        commit = asyncio.ensure_future(
            self._commit(
                messages,
                sent,
                previous,
                self._last_commit_started,
                send_first=self._caught_up and self.stats.connected,
            )
        )
        self._hand_over(_Live(messages, commit, sent, urgent=urgent))
        return commit

    async def _commit(
        self,
        messages: Sequence[OutboxMessage],
        sent: asyncio.Event,
        previous: asyncio.Future[None] | None,
        started: asyncio.Future[None],
        *,
        send_first: bool,
    ) -> list[int]:
        try:
            if send_first:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SEND_FIRST_S):
                        await sent.wait()
            if previous is not None:
                await previous
            # The buffer's single worker runs puts in the order their tasks first step, which is
            # the order they are made in: sequence numbers follow enqueue order.
            put = asyncio.ensure_future(self._buffer.outbox_put(messages))
        finally:
            if not started.done():
                started.set_result(None)
        return await put

    def _hand_over(self, entry: _Live) -> None:
        if len(self._live) >= LIVE_MAX:
            # Far behind (or not running): the committed ones are safe in the outbox; read them
            # from there. One whose commit is still running stays, as a take may miss it.
            while self._live and self._live[0].commit.done():
                self._live.popleft()
            self._caught_up = False
        if entry.urgent:
            # Behind the urgent batches already waiting, ahead of everything else.
            place = 0
            while place < len(self._live) and self._live[place].urgent:
                place += 1
            self._live.insert(place, entry)
        else:
            self._live.append(entry)
        self._buffer.outbox_changed.set()

    # the connection loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain the outbox, reconnect after failures; returns after `stop`."""
        self._task = asyncio.current_task()
        max_gap_s = (
            IDLE_WAKE_S * 3
            + self._backoff.cap_s
            + self._connect_timeout_s
            + PUBLISH_TIMEOUT_S
            + 30.0
        )
        self._progress.register(self.name, max_gap_s)
        try:
            while not self._stopping.is_set():
                self._progress.tick(self.name)
                try:
                    await self._session()
                except (aiomqtt.MqttError, OSError) as exc:
                    self._lost(exc)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._backoff.next()):
                            await self._stopping.wait()
        finally:
            self.stats.connected = False
            self._progress.unregister(self.name)
            await self._settle()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Flush briefly, set the retained status `offline`, disconnect; bounded by `timeout_s`."""
        self._stopping.set()
        self._flush_until = time.monotonic() + min(STOP_FLUSH_S, timeout_s / 3)
        self._buffer.outbox_changed.set()  # wakes an idle drain so that it sees the stop
        task = self._task
        if task is None or task.done():
            return
        _, running = await asyncio.wait({task}, timeout=timeout_s)
        if running:
            _log.warning("MQTT publisher did not stop within %.1f s; cancelling it", timeout_s)
            task.cancel()
            await asyncio.wait({task}, timeout=OFFLINE_TIMEOUT_S + 1.0)

    async def _session(self) -> None:
        client = await self._client()
        await client.__aenter__()
        try:
            await self._connected(client)
        finally:
            # aiomqtt waits for the broker's side of the disconnect without a bound: a broker
            # that never answers must not hold the stop (or a reconnect) forever.
            try:
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                _log.warning("MQTT disconnect from %s did not finish: %r", self._broker, exc)

    async def _connected(self, client: aiomqtt.Client) -> None:
        self._up()
        await client.publish(
            self.status_topic, self._online, qos=QOS, retain=True, timeout=PUBLISH_TIMEOUT_S
        )
        self._backoff.reset()
        try:
            await self._serve(client)
        finally:
            # Also on cancellation: a clean DISCONNECT follows, so no Last Will would say it.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(OFFLINE_TIMEOUT_S):
                    await client.publish(self.status_topic, self._offline, qos=QOS, retain=True)

    async def _client(self) -> aiomqtt.Client:
        config = self._config
        password = config.password
        if password is None and config.password_file is not None:
            # Read at every connect, so a rotated password is picked up by the next one.
            data = await asyncio.to_thread(config.password_file.read_bytes)
            password = data.decode(errors="replace").strip()
        tls = None
        if config.tls.enabled:
            tls = aiomqtt.TLSParameters(
                ca_certs=_path(config.tls.ca_file),
                certfile=_path(config.tls.cert_file),
                keyfile=_path(config.tls.key_file),
            )
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=config.client_id or f"piccolo-agent-{self._node}",
            username=config.username,
            password=password,
            logger=_client_log,
            will=aiomqtt.Will(self.status_topic, self._offline, qos=QOS, retain=True),
            timeout=self._connect_timeout_s,
            keepalive=max(1, math.ceil(config.keepalive)),
            tls_params=tls,
            max_inflight_messages=MAX_INFLIGHT,
        )
        client.pending_calls_threshold = PENDING_CALLS_THRESHOLD
        return client

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Drain until stopped; raises `MqttError` as soon as the connection is lost."""
        drain = asyncio.create_task(self._drain(client), name="mqtt-drain")
        watch = asyncio.create_task(_until_disconnected(client), name="mqtt-watch")
        try:
            await asyncio.wait((drain, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            watch.cancel()
            outcomes = await asyncio.gather(drain, watch, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome

    async def _drain(self, client: aiomqtt.Client) -> None:
        self._caught_up = False
        changed = self._buffer.outbox_changed
        while not (self._stopping.is_set() and time.monotonic() > self._flush_until):
            # Cleared before looking: anything enqueued after this sets it again.
            changed.clear()
            if self._caught_up:
                sent = await self._send_live(client)
            else:
                sent = await self._catch_up(client)
                if not sent:
                    self._caught_up = True
                    continue  # straight to what was enqueued meanwhile
            if not sent:
                if self._stopping.is_set():
                    return
                # asyncio.timeout, not wait_for: no extra task between the wake-up and the publish.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAKE_S):
                        await changed.wait()
            self._progress.tick(self.name)

    async def _catch_up(self, client: aiomqtt.Client) -> bool:
        """Send the oldest outbox batch; False when the outbox is empty."""
        await self._settle()  # so that the take does not return what was just sent
        batch = await self._buffer.outbox_take(BATCH_MESSAGES)
        acknowledged: list[int] = []
        try:
            for seq, message in batch:
                await self._send(client, message)
                acknowledged.append(seq)
        finally:
            # Also when the batch broke off: what the broker has is not sent again.
            if acknowledged:
                self._sent_upto = max(self._sent_upto, acknowledged[-1])
                await self._buffer.outbox_ack(acknowledged)
        return bool(batch)

    async def _send_live(self, client: aiomqtt.Client) -> bool:
        """Send what `enqueue` handed over, up to `MAX_INFLIGHT` messages awaiting their PUBACK at
        a time; returns once nothing is in flight, False when there was nothing new."""
        sent = False
        changed = self._buffer.outbox_changed
        inflight: set[asyncio.Task[None]] = set()
        try:
            # Stops when an overflow sends the drain back to the outbox, where older ones now wait.
            while True:
                changed.clear()  # before looking: anything handed over after this sets it again
                stopped = self._stopping.is_set() and time.monotonic() > self._flush_until
                while (
                    self._caught_up and self._live and self._inflight < MAX_INFLIGHT and not stopped
                ):
                    entry = self._live.popleft()
                    if entry.sent_before(self._sent_upto):
                        continue
                    inflight.add(asyncio.ensure_future(self._send_entry(client, entry)))
                    sent = True
                if not inflight:
                    return sent
                wake = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait({*inflight, wake}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                for task in done - {wake}:
                    inflight.discard(task)
                    task.result()  # a lost connection raises here
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _send_entry(self, client: aiomqtt.Client, entry: _Live) -> None:
        """Publish a batch's messages back to back (paho writes them in this order) and
        acknowledge the run of them, from the first, that got their PUBACK."""
        self._inflight += len(entry.messages)
        self.stats.max_inflight = max(self.stats.max_inflight, self._inflight)
        publishes = [asyncio.ensure_future(self._send(client, m)) for m in entry.messages]
        count = 0
        try:
            for publish in publishes:
                await publish
                count += 1
        finally:
            for publish in publishes[count:]:
                publish.cancel()
            await asyncio.gather(*publishes[count:], return_exceptions=True)
            self._inflight -= len(entry.messages)
            entry.sent.set()
            if count:
                self._ack_later(entry.commit, count)

    async def _send(self, client: aiomqtt.Client, message: OutboxMessage) -> None:
        # aiomqtt returns from a QoS 1 publish once the PUBACK is in.
        await client.publish(
            message.topic,
            message.payload,
            qos=QOS,
            retain=message.retain,
            timeout=PUBLISH_TIMEOUT_S,
        )
        self.stats.published += 1
        self.stats.last_publish_ns = time.time_ns()

    def _ack_later(self, commit: asyncio.Future[list[int]], count: int) -> None:
        """Acknowledge the first `count` messages of a batch once its commit is done."""

        async def ack() -> None:
            try:
                seqs = await commit
            except Exception:  # noqa: BLE001 - enqueue's caller got the error; nothing was stored
                return
            await self._buffer.outbox_ack(seqs[:count])

        task = asyncio.ensure_future(ack())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _settle(self) -> None:
        """Wait for the acknowledgements of the direct path still on their way to the outbox."""
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)

    def _up(self) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        waiting = self._buffer.outbox_depth()
        if self._outage:
            _log.info("MQTT broker %s reachable again; %d alerts to send", self._broker, waiting)
        else:
            _log.info("connected to MQTT broker %s; %d alerts to send", self._broker, waiting)
        self._outage = False

    def _lost(self, exc: Exception) -> None:
        self.stats.failures += 1
        if self.stats.connected or not self._outage:
            _log.warning(
                "no connection to MQTT broker %s, alerts wait in the outbox: %s", self._broker, exc
            )
        self._outage = True
        self.stats.connected = False
        self._caught_up = False

    @property
    def _broker(self) -> str:
        return f"{self._host}:{self._port}"


async def _until_disconnected(client: aiomqtt.Client) -> None:
    # Nothing is subscribed, so the iterator yields nothing and ends only with the connection.
    async for _message in client.messages:
        pass


def _compact(document: dict[str, str]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
