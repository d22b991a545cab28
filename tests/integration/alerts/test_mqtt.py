"""The MQTT publisher against a real mosquitto: topics, QoS 1, order, outages, status, TLS, auth.

Subscribers are aiomqtt clients in the test's own event loop; the publisher that is SIGKILLed runs
in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Self

import aiomqtt
import pytest

from agent.alerts.alerts import Alert, AlertKey, AlertManager, AlertSeverity
from agent.alerts.mqtt import MqttPublisher
from agent.config import Mqtt, TLSFiles
from agent.health import Progress
from agent.store.buffer import AsyncBuffer, Buffer
from tests.conftest import require_binary
from tests.support.certs import Pki
from tests.support.services import LOOPBACK, MosquittoServer, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFIX = "piccolo/monitoring"
NODE = "ecu-1"
REPO = Path(__file__).resolve().parents[3]


class Subscriber:
    """Collects what arrives on `topic` (QoS 1), reconnecting until closed.

    `persistent` uses a session the broker keeps (clean_session false), so messages published
    while this subscriber is away, or the broker restarts, are delivered when it is back.
    """

    def __init__(self, port: int, topic: str, *, persistent: bool = False) -> None:
        self.port = port
        self.topic = topic
        self.persistent = persistent
        self.messages: list[aiomqtt.Message] = []
        self.arrived_ns: list[int] = []
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        identifier = f"test-sub-{os.getpid()}-{id(self)}"
        while True:
            try:
                async with aiomqtt.Client(
                    LOOPBACK,
                    self.port,
                    identifier=identifier,
                    clean_session=not self.persistent,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.arrived_ns.append(time.perf_counter_ns())
                        self.messages.append(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def payloads(self) -> list[dict[str, Any]]:
        documents = []
        for message in self.messages:
            assert isinstance(message.payload, bytes)
            documents.append(json.loads(message.payload))
        return documents

    def ids(self) -> list[str]:
        return [document["id"] for document in self.payloads()]

    async def wait_for(self, done: Callable[[], bool], within_s: float = 10.0) -> None:
        await eventually(done, within_s, lambda: f"the messages; received {self.payloads()}")


def mqtt_config(port: int, **settings: Any) -> Mqtt:
    return Mqtt(broker=f"{LOOPBACK}:{port}", **settings)


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[AsyncBuffer]:
    buffer = AsyncBuffer(Buffer(tmp_path / "buffer.sqlite3", 10**8))
    await buffer.open()
    yield buffer
    await buffer.close()


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher, *, connected: bool = True) -> AsyncIterator[None]:
    task = asyncio.create_task(publisher.run())
    try:
        if connected:
            await eventually(lambda: publisher.stats.connected, what="a connection")
        yield
    finally:
        await publisher.stop()
        await asyncio.wait_for(task, 5)


def alerts_for(
    manager: AlertManager, count: int, *, start: int = 0, severity: AlertSeverity = "critical"
) -> list[Alert]:
    """`count` alerts of distinct models, each a new episode (so each is published)."""
    prefix, kind = ("m", "deadline_miss") if severity == "critical" else ("w", "threshold")
    return [
        alert
        for i in range(start, start + count)
        for alert in manager.fire(
            AlertKey("model", f"{prefix}{i:04d}", kind, "responseTime"),
            severity=severity,
            value=i,
            threshold=10,
            asil="B" if severity == "critical" else "QM",
            message=str(i),
            now_ns=time.time_ns(),
        )
    ]


async def test_firing_then_resolved_arrive_with_qos_1_on_the_resource_topic(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    progress = Progress()
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1.2.3", buffer, progress)
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=10)
    key = AlertKey("model", "camera", "deadline_miss", "responseTime")
    async with (
        Subscriber(mosquitto.port, f"{PREFIX}/alerts/#") as sub,
        running(publisher),
    ):
        fired = manager.fire(
            key,
            severity="warning",
            value=12,
            threshold=10,
            asil="QM",
            message="late",
            now_ns=time.time_ns(),
        )
        await publisher.enqueue(fired)
        await publisher.enqueue(manager.resolve(key, now_ns=time.time_ns()))
        await sub.wait_for(lambda: len(sub.messages) == 2)
        await eventually(lambda: buffer.outbox_depth() == 0, what="an empty outbox")
        assert progress.ticks("mqtt") > 0
        assert progress.stalled() == []
    assert progress.ticks("mqtt") == 0, "unregistered once stopped"
    assert [str(m.topic) for m in sub.messages] == [f"{PREFIX}/alerts/{NODE}/model/camera"] * 2
    assert [m.qos for m in sub.messages] == [1, 1]
    assert [m.retain for m in sub.messages] == [False, False]
    firing, resolved = sub.payloads()
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")
    assert firing["id"] == resolved["id"]
    assert firing["resource"] == {"type": "model", "id": "camera"}
    assert publisher.stats.published == 2
    assert publisher.stats.last_publish_ns is not None


async def test_alerts_enqueued_at_once_arrive_once_in_enqueue_order(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=1000)
    alerts = alerts_for(manager, 200)
    async with Subscriber(mosquitto.port, f"{PREFIX}/alerts/#") as sub, running(publisher):
        await asyncio.gather(*(publisher.enqueue([alert]) for alert in alerts[:150]))
        await publisher.enqueue(alerts[150:])  # one transaction of 50
        await sub.wait_for(lambda: len(sub.messages) >= len(alerts))
        await eventually(lambda: buffer.outbox_depth() == 0, what="an empty outbox")
        await asyncio.sleep(0.1)  # room for a duplicate, were one sent
    assert sub.ids() == [alert.id for alert in alerts]


async def test_critical_alerts_overtake_warnings_not_yet_sent_and_several_are_in_flight(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=10_000)
    warnings, critical = alerts_for(manager, 60, severity="warning"), alerts_for(manager, 3)
    async with Subscriber(mosquitto.port, f"{PREFIX}/alerts/#") as sub, running(publisher):
        await publisher.enqueue(alerts_for(manager, 1, start=100))  # caught up: the direct path
        await sub.wait_for(lambda: len(sub.messages) == 1)
        # Handed over in one go, before the publisher runs: the critical ones were raised last.
        commits = [publisher.submit([w]) for w in warnings]
        commits.append(publisher.submit(critical, urgent=True))
        await asyncio.gather(*commits)
        await sub.wait_for(lambda: len(sub.messages) == 64)
        await eventually(lambda: buffer.outbox_depth() == 0, what="an empty outbox")
        await asyncio.sleep(0.1)  # room for a duplicate, were one sent
    ids = sub.ids()[1:]
    assert ids[:3] == [alert.id for alert in critical]
    assert ids[3:] == [alert.id for alert in warnings], "the others keep their order"
    assert publisher.stats.published == 64
    assert publisher.stats.max_inflight > 1


async def test_alerts_enqueued_before_the_first_connect_are_sent_once_in_order(
    mosquitto: MosquittoServer, buffer: AsyncBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Few in-memory copies: most of what waits is read back from the outbox at connect.
    monkeypatch.setattr("agent.alerts.mqtt.LIVE_MAX", 5)
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=1000)
    early, late = alerts_for(manager, 20), alerts_for(manager, 5, start=20)
    for alert in early:
        await publisher.enqueue([alert])
    assert buffer.outbox_depth() == 20
    async with Subscriber(mosquitto.port, f"{PREFIX}/alerts/#") as sub, running(publisher):
        await sub.wait_for(lambda: len(sub.messages) >= 20)
        for alert in late:
            await publisher.enqueue([alert])
        await sub.wait_for(lambda: len(sub.messages) >= 25)
        await eventually(lambda: buffer.outbox_depth() == 0, what="an empty outbox")
        await asyncio.sleep(0.1)
    assert sub.ids() == [alert.id for alert in early + late]


async def test_alerts_left_in_the_outbox_by_an_earlier_run_are_sent_on_connect(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    path = tmp_path / "restart.sqlite3"
    first = AsyncBuffer(Buffer(path, 10**8))
    await first.open()
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=100)
    away = MqttPublisher(mqtt_config(free_port()), NODE, "1", first, Progress())
    await away.enqueue(alerts_for(manager, 5))  # no broker there: they stay in the outbox
    await first.close()
    again = AsyncBuffer(Buffer(path, 10**8))
    await again.open()
    try:
        publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", again, Progress())
        async with Subscriber(mosquitto.port, f"{PREFIX}/alerts/#") as sub, running(publisher):
            await sub.wait_for(lambda: len(sub.messages) == 5)
            await eventually(lambda: again.outbox_depth() == 0, what="an empty outbox")
        assert [p["message"] for p in sub.payloads()] == ["0", "1", "2", "3", "4"]
    finally:
        await again.close()


async def test_the_status_is_online_while_running_and_offline_after_a_stop(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    started = 1_764_140_209_000_000_000
    publisher = MqttPublisher(
        mqtt_config(mosquitto.port), NODE, "1.2.3", buffer, Progress(), started_ns=started
    )
    status_topic = f"{PREFIX}/agents/{NODE}/status"
    async with running(publisher):
        async with Subscriber(mosquitto.port, status_topic) as late:
            await late.wait_for(lambda: bool(late.messages))
        assert late.messages[0].retain, "a new subscriber gets it from the broker's store"
        assert late.payloads()[0] == {
            "status": "online",
            "node": NODE,
            "version": "1.2.3",
            "started": "2025-11-26T06:56:49.000000000Z",
        }
    async with Subscriber(mosquitto.port, status_topic) as later:
        await later.wait_for(lambda: bool(later.messages))
    assert later.messages[0].retain
    assert later.payloads()[0]["status"] == "offline", "published: a clean DISCONNECT has no will"


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.alerts.mqtt import MqttPublisher
    from agent.config import Mqtt
    from agent.health import Progress
    from agent.store.buffer import AsyncBuffer, Buffer

    async def main() -> None:
        buffer = AsyncBuffer(Buffer(Path(sys.argv[2]), 10**7))
        await buffer.open()
        config = Mqtt(broker=sys.argv[1], keepalive="60s")
        await MqttPublisher(config, sys.argv[3], "9.9.9", buffer, Progress()).run()

    asyncio.run(main())
    """
)


@pytest.fixture
def publisher_process(
    mosquitto: MosquittoServer, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PUBLISHER_SCRIPT,
            mosquitto.endpoint,
            str(tmp_path / "child.sqlite3"),
            "killed-node",
        ],
        cwd=REPO,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def test_the_last_will_says_offline_when_the_publisher_is_killed(
    mosquitto: MosquittoServer, publisher_process: subprocess.Popen[bytes]
) -> None:
    status_topic = f"{PREFIX}/agents/killed-node/status"
    async with Subscriber(mosquitto.port, status_topic) as sub:

        def online() -> bool:
            assert publisher_process.poll() is None, "the publisher process exited"
            return any(p["status"] == "online" for p in sub.payloads())

        await sub.wait_for(online, 20)
        killed = time.perf_counter_ns()
        publisher_process.send_signal(signal.SIGKILL)
        # The socket closes with the process: the broker sends the will at once, not after
        # the 60 s keepalive.
        await sub.wait_for(lambda: sub.payloads()[-1]["status"] == "offline", 5)
        will_ms = (sub.arrived_ns[-1] - killed) / 1e6
    assert not sub.messages[-1].retain, "a live subscriber gets the will as a new message"
    assert sub.payloads()[-1]["version"] == "9.9.9"
    async with Subscriber(mosquitto.port, status_topic) as late:
        await late.wait_for(lambda: bool(late.messages))
    assert late.messages[0].retain
    assert late.payloads()[0]["status"] == "offline"
    print(f"last will arrived {will_ms:.1f} ms after SIGKILL")  # noqa: T201


async def test_no_alert_is_lost_while_the_broker_is_away(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=1000)
    expected: list[str] = []

    async def produce(count: int) -> None:
        for i in range(count):
            alerts = alerts_for(manager, 1, start=len(expected))
            expected.extend(a.id for a in alerts)
            await publisher.enqueue(alerts)
            await asyncio.sleep(0.004 if i % 3 else 0)

    async with (
        Subscriber(mosquitto.port, f"{PREFIX}/alerts/#", persistent=True) as sub,
        running(publisher),
    ):
        producing = asyncio.create_task(produce(150))
        await sub.wait_for(lambda: len(sub.messages) >= 20)
        # Stopped while alerts are being enqueued and sent: some publish is likely in flight.
        await asyncio.to_thread(mosquitto.stop)
        await eventually(lambda: not publisher.stats.connected, what="the disconnect")
        await asyncio.sleep(0.5)
        depth_while_away = buffer.outbox_depth()
        await asyncio.to_thread(mosquitto.start)
        await producing
        await sub.wait_for(lambda: set(sub.ids()) == set(expected), 30)
        await eventually(lambda: buffer.outbox_depth() == 0, what="an empty outbox")
    received = sub.ids()
    assert list(dict.fromkeys(received)) == expected, "all arrived; first arrivals kept their order"
    assert depth_while_away > 0, "alerts enqueued meanwhile waited in the outbox"
    assert publisher.stats.failures >= 1
    assert publisher.stats.connects >= 2
    # QoS 1 repeats what was in flight when the broker went: the publisher's one unacknowledged
    # message, and what the broker had sent on to the subscriber without its PUBACK.
    assert max(received.count(i) for i in expected) <= 3
    print(f"{len(received) - len(expected)} duplicates across the outage")  # noqa: T201


def write_password_file(path: Path, user: str, password: str) -> Path:
    subprocess.run(
        [require_binary("mosquitto_passwd"), "-c", "-b", str(path), user, password],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def secured(tmp_path: Path, pki: Pki) -> Iterator[tuple[MosquittoServer, int]]:
    """A broker with a TLS listener demanding a client certificate, and a password file.

    The plain listener stays anonymous (MosquittoServer's readiness probe uses it): without
    `per_listener_settings`, anonymous clients pass and named clients need their password.
    """
    require_binary("mosquitto")
    tls_port = free_port()
    passwords = write_password_file(tmp_path / "passwd", "agent", "s3cret")
    config = [
        f"password_file {passwords}",
        f"listener {tls_port} {LOOPBACK}",
        f"cafile {pki.ca.cert}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        "require_certificate true",
    ]
    with MosquittoServer(tmp_path / "secure", extra_config=config) as server:
        yield server, tls_port


async def test_tls_with_a_client_certificate_and_a_password_file(
    secured: tuple[MosquittoServer, int], pki: Pki, buffer: AsyncBuffer, tmp_path: Path
) -> None:
    server, tls_port = secured
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    tls = TLSFiles(
        enabled=True, ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key
    )
    config = mqtt_config(tls_port, username="agent", password_file=secret, tls=tls)
    publisher = MqttPublisher(config, NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=100)
    async with Subscriber(server.port, f"{PREFIX}/alerts/#") as sub, running(publisher):
        await publisher.enqueue(alerts_for(manager, 3))
        await sub.wait_for(lambda: len(sub.messages) == 3)
    assert publisher.stats.failures == 0


@pytest.mark.parametrize(
    "change",
    ["wrong password", "no client certificate", "another CA"],
)
async def test_a_refused_connection_keeps_the_alerts_in_the_outbox(
    secured: tuple[MosquittoServer, int],
    pki: Pki,
    buffer: AsyncBuffer,
    change: str,
) -> None:
    _, tls_port = secured
    tls = TLSFiles(
        enabled=True, ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key
    )
    if change == "no client certificate":
        tls = TLSFiles(enabled=True, ca_file=pki.ca.cert)
    elif change == "another CA":
        tls = TLSFiles(
            enabled=True,
            ca_file=pki.ca.cert,
            cert_file=pki.other_client.cert,
            key_file=pki.other_client.key,
        )
    password = "wrong" if change == "wrong password" else "s3cret"
    config = mqtt_config(tls_port, username="agent", password=password, tls=tls)
    # A refused certificate shows only as a connection closed before CONNACK, which aiomqtt
    # notices at the connect timeout.
    publisher = MqttPublisher(config, NODE, "1", buffer, Progress(), connect_timeout_s=0.5)
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=100)
    await publisher.enqueue(alerts_for(manager, 2))
    async with running(publisher, connected=False):
        await eventually(lambda: publisher.stats.failures >= 2, what="two failures")
        assert not publisher.stats.connected
    assert buffer.outbox_depth() == 2


async def test_stop_is_bounded_when_the_broker_never_answers(buffer: AsyncBuffer) -> None:
    # A listening socket that never accepts: connect() hangs in the kernel's backlog.
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(0)
        publisher = MqttPublisher(
            mqtt_config(silent.getsockname()[1]), NODE, "1", buffer, Progress()
        )
        task = asyncio.create_task(publisher.run())
        await asyncio.sleep(0.3)
        began = time.monotonic()
        await publisher.stop(timeout_s=1.0)
        assert time.monotonic() - began < 3.5
        assert task.done(), "cancelled by stop(), as its CONNECT got no answer in time"


async def test_enqueue_to_delivery_latency_on_loopback(
    mosquitto: MosquittoServer, buffer: AsyncBuffer
) -> None:
    """Enqueue -> a subscriber in another process (mosquitto_sub, wall-clock arrival stamps)."""
    publisher = MqttPublisher(mqtt_config(mosquitto.port), NODE, "1", buffer, Progress())
    manager = AlertManager(NODE, renotify_s=60, rate_limit_per_s=10_000)
    count = 300
    receiver = await asyncio.create_subprocess_exec(
        require_binary("mosquitto_sub"),
        *("-h", LOOPBACK, "-p", str(mosquitto.port), "-q", "1", "-C", str(count)),
        *("-t", f"{PREFIX}/alerts/#", "-F", "%U %p"),
        stdout=asyncio.subprocess.PIPE,
    )
    enqueued: dict[str, int] = {}
    try:
        await asyncio.sleep(0.5)  # mosquitto_sub has no "subscribed" signal; it needs ~10 ms
        async with running(publisher):
            for _ in range(count):
                alerts = alerts_for(manager, 1, start=len(enqueued))
                enqueued[alerts[0].id] = time.time_ns()
                await publisher.enqueue(alerts)
                await asyncio.sleep(0.004)
            output, _ = await asyncio.wait_for(receiver.communicate(), 10)
    finally:
        if receiver.returncode is None:
            receiver.kill()
            await receiver.wait()
    arrived = {}
    for line in output.decode().splitlines():
        stamp, _, payload = line.partition(" ")
        seconds, _, fraction = stamp.partition(".")
        arrived[json.loads(payload)["id"]] = int(seconds) * 10**9 + int(fraction.ljust(9, "0"))
    assert arrived.keys() == enqueued.keys()
    latencies_ms = sorted((arrived[i] - t) / 1e6 for i, t in enqueued.items())
    p50 = statistics.median(latencies_ms)
    p99 = latencies_ms[int(0.99 * len(latencies_ms))]
    print(f"enqueue -> subscriber on loopback: p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # noqa: T201
    # Loose bounds: CI machines are shared. Measured numbers are in agent.alerts.mqtt's docstring.
    assert p50 < 10.0
    assert p99 < 100.0
