"""PodmanClient against a real podman 4.3.1 API service, and fake servers for its HTTP edges.

Containers are tiny busybox ones without a network; every one is removed by the `podman` fixture.
Times are wall clock (time.time_ns), the clock podman stamps its events with.
"""

import asyncio
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.runtime.podman import (
    ContainerEvent,
    ContainerInfo,
    PodmanClient,
    RuntimeUnavailable,
    format_time_ns,
    parse_event,
    parse_time_ns,
)
from tests.support.services import PodmanService
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# Podman 4.3 follows its events file by polling it every 250 ms (nxadm/tail with Poll: true), so
# an event reaches an API client 0-250 ms after podman wrote it; the rest is scheduling slack.
EVENT_POLL_S = 0.25
EVENT_DELIVERY_BOUND_S = EVENT_POLL_S + 0.25
# From the process's death: conmon notices, runs `podman container cleanup`, which writes `died`
# (33-56 ms measured), then the poll above.
DEATH_TO_CLIENT_BOUND_S = 1.0


def unique(prefix: str) -> str:
    return f"piccolo-{prefix}-{uuid.uuid4().hex[:8]}"


async def run_container(podman: PodmanService, name: str, *args: str, command: list[str]) -> str:
    """podman.run_container off the event loop, so event consumers keep running meanwhile."""
    return await asyncio.to_thread(podman.run_container, name, *args, command=command)


class EventLog:
    """The container events of one subscription, each with the time it reached the client."""

    def __init__(self) -> None:
        self.received: list[tuple[int, ContainerEvent]] = []
        self.error: RuntimeUnavailable | None = None
        self._changed = asyncio.Condition()

    async def follow(self, client: PodmanClient, since_ns: int) -> None:
        try:
            async for event in client.events(since_ns=since_ns):
                async with self._changed:
                    self.received.append((time.time_ns(), event))
                    self._changed.notify_all()
        except RuntimeUnavailable as error:
            async with self._changed:
                self.error = error
                self._changed.notify_all()

    async def wait_for(
        self, name: str, status: str, seconds: float = 10.0
    ) -> tuple[int, ContainerEvent]:
        """(arrival ns, event) of the first `status` event of container `name`."""

        def found() -> tuple[int, ContainerEvent] | None:
            for arrival, event in self.received:
                if event.name == name and event.status == status:
                    return arrival, event
            return None

        async with self._changed:
            try:
                async with asyncio.timeout(seconds):
                    await self._changed.wait_for(lambda: found() is not None or bool(self.error))
            except TimeoutError:
                pass
            result = found()
        if result is None:
            seen = [(e.name, e.status) for _, e in self.received]
            raise AssertionError(f"no {status} of {name} in {seconds:g} s: {seen} {self.error}")
        return result

    def statuses(self, name: str) -> list[str]:
        return [event.status for _, event in self.received if event.name == name]


@pytest.fixture
async def client(podman: PodmanService) -> AsyncIterator[PodmanClient]:
    async with PodmanClient(podman.socket, timeout_s=5.0) as client:
        yield client


@pytest.fixture
async def events(client: PodmanClient) -> AsyncIterator[EventLog]:
    """A subscription from now on; `since` closes the race with the stream being set up."""
    log = EventLog()
    task = asyncio.create_task(log.follow(client, since_ns=time.time_ns()), name="events")
    yield log
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ping_answers_podmans_version(client: PodmanClient) -> None:
    version = await client.ping()
    assert version.startswith("4."), version


async def test_a_running_container_is_listed_and_inspected_with_labels_limits_and_cgroup(
    podman: PodmanService, client: PodmanClient
) -> None:
    name = unique("running")
    before = time.time_ns()
    container_id = await run_container(
        podman,
        name,
        "--label=piccolo.io/model=detector",
        "--memory=32m",
        "--cpus=0.5",
        "--restart=on-failure:3",
        command=["sleep", "60"],
    )
    after = time.time_ns()

    listed = {info.id: info for info in await client.list_containers()}
    info = listed[container_id]
    assert info == await client.inspect(name) == await client.inspect(container_id)
    assert info.name == name
    assert info.labels["piccolo.io/model"] == "detector"
    assert info.labels["piccolo.test"] == "1"
    assert info.image == podman.image
    assert info.image_id in {image.id for image in await client.images()}
    assert info.state == "running"
    assert info.running
    assert info.pid > 0
    os.kill(info.pid, 0)  # the process exists (as root, signal 0 only checks)
    assert (info.exit_code, info.oom_killed, info.restart_count) == (0, False, 0)
    assert before <= info.created_ns <= (info.started_ns or 0) <= after
    assert info.finished_ns is None
    assert (info.restart_policy, info.restart_max_retries) == ("on-failure", 3)
    assert info.memory_limit == 32 * MiB
    assert (info.cpu_quota, info.cpu_period) == (50_000, 100_000)
    assert info.pod is None
    assert info.cgroup_path is not None
    assert info.cgroup_path.endswith(container_id)
    assert info.size_root_fs is None


async def test_an_unknown_container_inspects_as_none(client: PodmanClient) -> None:
    assert await client.inspect(unique("absent")) is None
    assert await client.inspect("a/b?c") is None


async def test_inspect_with_size_reports_the_root_filesystem(
    podman: PodmanService, client: PodmanClient
) -> None:
    name = unique("sized")
    await run_container(podman, name, command=["sleep", "60"])
    info = await client.inspect(name, with_size=True)
    assert info is not None
    assert info.size_root_fs is not None
    assert info.size_root_fs > 1 * MiB  # the static busybox alone is about 2 MB


async def test_a_container_in_a_pod_names_its_pod(
    podman: PodmanService, client: PodmanClient
) -> None:
    pod = unique("pod")
    await asyncio.to_thread(podman.create_pod, pod)
    name = unique("in-pod")
    container_id = await run_container(podman, name, "--pod", pod, command=["sleep", "60"])
    info = await client.inspect(name)
    assert info is not None
    assert info.pod == pod
    assert {c.id: c.pod for c in await client.list_containers()}[container_id] == pod


async def test_a_container_that_exits_3_is_exited_with_code_3(
    podman: PodmanService, client: PodmanClient, events: EventLog
) -> None:
    name = unique("exit3")
    await run_container(podman, name, command=["sh", "-c", "exit 3"])

    _, died = await events.wait_for(name, "died")
    assert died.exit_code == 3

    async def exited() -> ContainerInfo | None:
        info = await client.inspect(name)
        return info if info is not None and info.state == "exited" else None

    info = await eventually(exited, what=f"exited state of {name}")
    assert (info.exit_code, info.pid) == (3, 0)
    assert info.started_ns is not None
    assert info.finished_ns is not None
    # Not started <= finished: for a process this short, podman's StartedAt (taken after
    # `runc start` returned) can be a few ms later than FinishedAt (conmon's exit file).
    assert info.created_ns < info.finished_ns
    assert abs(info.finished_ns - info.started_ns) < 5 * 10**9
    assert {c.id: c.exit_code for c in await client.list_containers()}[info.id] == 3


async def test_restarts_by_policy_are_counted(
    podman: PodmanService, client: PodmanClient, events: EventLog
) -> None:
    name = unique("crashloop")
    await run_container(
        podman, name, "--restart=on-failure:2", command=["sh", "-c", "sleep 0.2; exit 1"]
    )

    async def gave_up() -> ContainerInfo | None:
        info = await client.inspect(name)
        done = info is not None and info.restart_count == 2 and info.state == "exited"
        return info if done else None

    info = await eventually(gave_up, seconds=20, what=f"two restarts of {name}")
    assert info.exit_code == 1
    # The list entry changed with every run, so list_containers inspected it again.
    assert {c.id: c.restart_count for c in await client.list_containers()}[info.id] == 2
    # Three runs, each ending in `died` with the exit code.
    await events.wait_for(name, "cleanup")
    died = [event for _, event in events.received if event.name == name and event.status == "died"]
    assert [event.exit_code for event in died] == [1, 1, 1], events.statuses(name)


async def test_an_oom_kill_is_exit_code_137(
    podman: PodmanService, client: PodmanClient, events: EventLog
) -> None:
    name = unique("oom")
    # Command substitution makes busybox sh keep the whole output in memory: 64 MiB > 16 MiB.
    await run_container(
        podman,
        name,
        "--memory=16m",
        "--memory-swap=16m",
        command=["sh", "-c", 'x=$(head -c 64m /dev/zero | tr "\\0" a); echo survived'],
    )

    _, died = await events.wait_for(name, "died", seconds=20)
    assert died.exit_code == 137
    info = await client.inspect(name)
    assert info is not None
    assert info.exit_code == 137
    assert (await asyncio.to_thread(podman.podman, "logs", name)).stdout == ""
    # Podman 4.3.1 with runc on cgroup v1 reports no `oom` event and leaves OOMKilled false
    # (see the adapter's docstring): neither is asserted, so a fixed podman passes too.


@pytest.mark.parametrize("how", ["podman stop", "SIGKILL"])
async def test_a_container_stopped_by_hand_is_seen_as_died_within_the_event_poll(
    podman: PodmanService, client: PodmanClient, events: EventLog, how: str
) -> None:
    """The `died` event reaches the client within podman's 250 ms events-file poll.

    The requirement "seen within 100 ms" cannot be met through podman 4.3's event stream: with
    events_logger=file the service polls the file every 250 ms (measured: event to client
    21-247 ms, median 165 ms; with journald ~300-370 ms). What is asserted is the bound podman
    gives; a faster signal needs a pidfd on the container's process.
    """
    name = unique("by-hand")
    await run_container(podman, name, "--label=piccolo.io/model=stopper", command=["sleep", "60"])
    _, started = await events.wait_for(name, "start")
    assert started.attributes["piccolo.io/model"] == "stopper"
    assert started.attributes["image"] == podman.image
    info = await client.inspect(name)
    assert info is not None

    stopped_at = time.time_ns()
    if how == "SIGKILL":
        os.kill(info.pid, signal.SIGKILL)
    else:
        await asyncio.to_thread(podman.podman, "stop", "--time=0", name)
    arrival, died = await events.wait_for(name, "died")

    assert died.exit_code == 137
    assert died.id == info.id
    assert died.attributes["piccolo.io/model"] == "stopper"
    finished = await client.inspect(name)
    assert finished is not None
    assert finished.finished_ns is not None
    event_to_client = (arrival - died.time_ns) / 1e9
    death_to_client = (arrival - max(stopped_at, finished.finished_ns)) / 1e9
    assert 0 <= event_to_client <= EVENT_DELIVERY_BOUND_S, event_to_client
    assert death_to_client <= DEATH_TO_CLIENT_BOUND_S, death_to_client


async def test_list_containers_inspects_only_what_changed(
    podman: PodmanService, client: PodmanClient
) -> None:
    name = unique("steady")
    container_id = await run_container(podman, name, command=["sleep", "60"])
    await client.list_containers()
    first = client._inspected[container_id]
    await client.list_containers()
    assert client._inspected[container_id] is first  # unchanged: not inspected again

    await asyncio.to_thread(podman.podman, "stop", "--time=0", name)
    stopped = {c.id: c for c in await client.list_containers()}[container_id]
    assert stopped.state == "exited"
    assert client._inspected[container_id] is not first


async def test_volume_sizes_and_images(podman: PodmanService, client: PodmanClient) -> None:
    volume = await asyncio.to_thread(podman.create_volume, unique("volume"))
    name = unique("writer")
    write = "head -c 300000 /dev/zero > /data/f"
    await run_container(podman, name, "-v", f"{volume}:/data", command=["sh", "-c", write])
    await asyncio.to_thread(podman.podman, "wait", name)

    async def written() -> int | None:
        size = (await client.volume_sizes()).get(volume, 0)
        return size if size >= 300_000 else None

    assert await eventually(written, what=f"300 kB in {volume}") >= 300_000
    images = {name for image in await client.images() for name in image.names}
    assert podman.image in images


async def test_the_event_stream_ends_when_the_service_stops_and_calls_reconnect_after(
    podman: PodmanService, client: PodmanClient
) -> None:
    assert await client.ping()
    log = EventLog()
    follower = asyncio.create_task(log.follow(client, since_ns=time.time_ns()))
    await asyncio.sleep(0.2)  # let the stream be established
    try:
        await asyncio.to_thread(podman.stop_api)
        async with asyncio.timeout(5):
            await follower
        assert isinstance(log.error, RuntimeUnavailable)
        assert str(podman.socket) in str(log.error)
        with pytest.raises(RuntimeUnavailable, match=re.escape(str(podman.socket))):
            await client.ping()
    finally:
        if not podman.running:
            await asyncio.to_thread(podman.start_api)
    # The same client, with no call in between: it connects afresh.
    assert await client.ping()
    assert isinstance(await client.list_containers(), list)


async def test_a_missing_socket_is_runtime_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    async with PodmanClient(missing, timeout_s=1.0) as client:
        with pytest.raises(RuntimeUnavailable, match=re.escape(str(missing))):
            await client.ping()
        with pytest.raises(RuntimeUnavailable, match=re.escape(str(missing))):
            await client.list_containers()
        with pytest.raises(RuntimeUnavailable, match=re.escape(str(missing))):
            await anext(aiter(client.events()))


async def test_a_socket_nobody_listens_on_is_runtime_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: connections are refused
        async with PodmanClient(path, timeout_s=1.0) as client:
            with pytest.raises(RuntimeUnavailable, match="refused"):
                await client.ping()


# Fake servers: the HTTP edges podman does not show on demand.

PING_ANSWER = (
    b"HTTP/1.1 200 OK\r\nLibpod-Api-Version: 4.3.1\r\nContent-Length: 2\r\n"
    b"Content-Type: text/plain\r\n\r\nOK"
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_server(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Path]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Path:
        path = tmp_path / f"fake-{len(servers)}.sock"
        servers.append(await asyncio.start_unix_server(handler, path))
        return path

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_a_kept_connection_the_server_dropped_is_retried_once_on_a_fresh_one(
    fake_server: Callable[[Handler], Awaitable[Path]],
) -> None:
    connections = 0

    async def answer_once_then_drop_the_next(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(PING_ANSWER)
        await writer.drain()
        await read_request(reader)  # as a server closing an idle connection just then
        writer.close()

    path = await fake_server(answer_once_then_drop_the_next)
    async with PodmanClient(path, timeout_s=2.0) as client:
        assert await client.ping() == "4.3.1"
        assert await client.ping() == "4.3.1"
    assert connections == 2


async def test_a_list_spoiled_by_a_removal_is_asked_again(
    fake_server: Callable[[Handler], Awaitable[Path]],
) -> None:
    removed = b'{"cause":"no such container","message":"container 58a6 does not exist in database"}'
    answers = [
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s"
        % (len(removed), removed),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    ]

    async def race_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()

    path = await fake_server(race_then_answer)
    async with PodmanClient(path, timeout_s=1.0) as client:
        assert await client.list_containers() == []


async def test_no_answer_in_time_is_runtime_unavailable(
    fake_server: Callable[[Handler], Awaitable[Path]],
) -> None:
    async def never_answer(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes

    path = await fake_server(never_answer)
    async with PodmanClient(path, timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match=r"within 0\.3 s"):
            await client.ping()
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n[1,2",
        b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        b'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\n\r\n{"message": "boom"}',
    ],
    ids=["not-http", "cut-short", "not-a-list", "error-status"],
)
async def test_a_broken_answer_is_runtime_unavailable(
    fake_server: Callable[[Handler], Awaitable[Path]], answer: bytes
) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    path = await fake_server(reply)
    async with PodmanClient(path, timeout_s=1.0) as client:
        with pytest.raises(RuntimeUnavailable, match=re.escape(str(path))):
            await client.list_containers()


# Parsing: what podman 4.3.1 sends.

DIED = {
    "status": "died",
    "id": "45df9a832de6b1f95e2056e32afc269d10693ad5c6b29052d69b3f118ae140cb",
    "from": "localhost/piccolo-busybox:test",
    "Type": "container",
    "Action": "died",
    "Actor": {
        "ID": "45df9a832de6b1f95e2056e32afc269d10693ad5c6b29052d69b3f118ae140cb",
        "Attributes": {
            "containerExitCode": "137",
            "image": "localhost/piccolo-busybox:test",
            "name": "t3",
            "piccolo.test": "1",
            "podId": "",
        },
    },
    "scope": "local",
    "time": 1795677364,
    "timeNano": 1795677364531438544,
}


def test_a_died_event_carries_its_exit_code_and_labels() -> None:
    event = parse_event(DIED)
    assert event is not None
    assert (event.status, event.name, event.exit_code) == ("died", "t3", 137)
    assert event.time_ns == 1795677364531438544
    assert event.attributes["piccolo.test"] == "1"


def test_only_died_has_an_exit_code() -> None:
    # Podman puts containerExitCode "0" on every container event.
    event = parse_event({**DIED, "status": "cleanup", "Action": "cleanup"})
    assert event is not None
    assert event.exit_code is None


def test_an_event_of_another_type_is_skipped() -> None:
    assert parse_event({**DIED, "Type": "image"}) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T07:15:54.061153735Z", 1795677354_061153735),
        ("2026-11-26T07:15:54Z", 1795677354_000000000),
        ("2026-11-26T07:15:54.5Z", 1795677354_500000000),
        ("2026-11-26T09:15:54.061153735+02:00", 1795677354_061153735),
        ("2026-11-26T02:45:54.061153735-04:30", 1795677354_061153735),
        ("2026-11-26T07:15:54.0611537351234Z", 1795677354_061153735),
        ("1970-01-01T00:00:00Z", 0),
        ("0001-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00+00:00", None),
    ],
)
def test_timestamps_parse_to_nanoseconds(text: str, expected: int | None) -> None:
    assert parse_time_ns(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-11-26", "2026-13-01T00:00:00Z"])
def test_a_malformed_timestamp_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_time_ns(text)


def test_formatted_times_parse_back() -> None:
    for time_ns in (0, 1795677354_061153735, 1795677354_000000001):
        assert parse_time_ns(format_time_ns(time_ns)) == time_ns
