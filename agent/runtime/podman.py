"""The Podman adapter: the only module that speaks to Podman, through the libpod REST API.

Contract:

- **Podman.** Written against podman 4.3.1 (Debian 12) serving its API with
  `podman system service --time=0 unix://PATH`; paths are under `/v4.0.0/libpod`, which every
  podman 4.x serves. Only GETs are sent: this module reads, it never changes a container.
- **Connections.** HTTP/1.1 through `h11` (a sans-IO state machine) over
  `asyncio.open_unix_connection`. One persistent keep-alive connection carries the
  request/response calls, one call at a time (a lock). A call that fails on a connection kept from
  an earlier call (podman closed it, or restarted since) is sent once more on a fresh connection;
  every call is a GET, so the retry cannot change anything. Each `events()` iterator has a
  streaming connection of its own.
- **Timeouts.** Each call (connect, send, read the whole answer) is bounded by `timeout_s`. An
  event stream bounds its connect and response header the same way, then waits for events as long
  as there are none.
- **Errors.** `RuntimeUnavailable`, naming the socket: the socket is missing or refused, no answer
  in time, the connection broke, the answer is not HTTP or not the JSON expected, or podman
  answered an error status. `inspect()` answers None for a container that does not exist.
- **Costs** (podman 4.3.1 on a 2-core Debian 12 VM, medians of warm calls; the CLI takes 40-70 ms
  per command): ping 0.5-0.8 ms; the container list about 1 ms plus 0.7 ms per container (8.5 ms
  for 10, running or not); inspect 1.5-2.6 ms, with `with_size` 3.8 ms (podman walks the
  container's files); images 1.4-2.3 ms; `/system/df` 8-30 ms, growing with every file in every
  container layer and volume. `list_containers()` sends one list and inspects only containers
  whose list entry changed since its previous call (or whose inspection is older than 30 s): with
  10 steady containers 10 ms instead of 32 ms, and 0.9 ms of this process's CPU.
- **Events.** `GET /libpod/events?stream=true&filters={"type":["container"]}`; podman flushes
  each event as one JSON line. With `events_logger = "file"` podman 4.3 follows its events log by
  polling it every 250 ms: an event reaches the client 0-250 ms after podman wrote it (measured
  21-247 ms, median 165 ms), and podman writes `died` 33-56 ms after the process died (conmon runs
  `podman container cleanup`, which writes it). The journald logger was slower (300-370 ms). A
  caller that must see a death sooner watches the container's pid (a pidfd is readable within a
  few ms) and takes the exit code from the event. `since` makes podman read its log from the
  start, so a re-subscription costs a scan of the whole log.

What podman 4.3.1 reports (observed with runc, cgroupfs, cgroup v1 + v2 hybrid):

- The exit code of a `died` event is `Actor.Attributes.containerExitCode` (a string). Podman puts
  that attribute on every container event, as "0" except on `died`, so `ContainerEvent.exit_code`
  is set for `died` only. Labels are attributes too, beside `image`, `name` and `podId`.
- `podman stop` gives `died` and `cleanup` (the latter sometimes twice), and no `stop` event with
  the file logger (the journald logger showed one). A restart by policy gives `died`, `restart`,
  `init`, `start`; the final `died` is followed by `cleanup`.
- A memory-cgroup OOM kill gives `died` with exit code 137 and no `oom` event, and inspect keeps
  `OOMKilled` false; the kernel's `oom_kill` counter in the container's memory cgroup is the
  reliable signal (see agent.runtime.cgroups), while the cgroup exists.
- `HostConfig.Memory` is the limit given at creation: `podman update --memory` changes the cgroup
  but neither inspect nor the event stream. The cgroup files are the truth for limits.
- The list gives StartedAt/ExitedAt in whole seconds and no restart count, policy, limits or cgroup
  path: those come from inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, Self

import h11

_API: Final = "/v4.0.0/libpod"
_READ_SIZE: Final = 64 * 1024
# The biggest answer taken in memory: a list of thousands of containers is a few MB.
_MAX_BODY: Final = 64 * 1024 * 1024
# One event is well under 4 KiB even with many labels; a longer line means a broken stream.
_MAX_EVENT_LINE: Final = 1024 * 1024
# Inspected details are reused while the container's list entry is unchanged; this bounds how
# long a change the list cannot show (a restart begun and ended within the second already seen)
# stays unseen.
_DETAILS_MAX_AGE_S: Final = 30.0
# Answers spoiled by a container removed during an aggregate query are asked again this often.
_REMOVAL_RACE_RETRIES: Final = 2
_CONTAINER_EVENTS: Final = json.dumps({"type": ["container"]}, separators=(",", ":"))
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_S: Final = 1_000_000_000
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))"
)


class RuntimeUnavailable(Exception):  # noqa: N818 - the name states the condition, as the error policy does
    """Podman's API cannot be used now: missing or refused socket, timeout, broken answer."""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """One container as podman inspects it.

    Times are wall-clock nanoseconds since the epoch; None where podman has Go's zero time
    (never started, never finished). `finished_ns` of a container running again after a restart is
    its previous exit; for a process that exits at once it can precede `started_ns` by a few ms
    (podman takes StartedAt after `runc start` returned, FinishedAt from conmon's exit file).
    Limits are those given at creation (None: unlimited). `cgroup_path` is the container's cgroup
    relative to each hierarchy's root (`/libpod_parent/libpod-<id>` with cgroupfs), given by
    podman while the container runs; `cgroup_parent` is the parent asked for at creation (None:
    podman's default). `size_root_fs` is set only by `inspect(with_size=True)`.
    """

    id: str
    name: str
    image: str
    image_id: str
    labels: Mapping[str, str]
    state: str
    pid: int
    exit_code: int
    oom_killed: bool
    created_ns: int
    started_ns: int | None
    finished_ns: int | None
    restart_count: int
    restart_policy: str
    restart_max_retries: int
    memory_limit: int | None
    cpu_quota: int | None
    cpu_period: int | None
    pod: str | None
    cgroup_parent: str | None
    cgroup_path: str | None
    size_root_fs: int | None
    ip_address: str | None = None
    """The container's IP on its first network that gives it one (None: no network of its own)."""
    host_network: bool = False
    """Whether it shares the host's network namespace (`--network=host`)."""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One container event: `status` is podman's (create, init, start, died, restart, cleanup,
    pause, unpause, kill, remove, ...); `exit_code` is set for `died`; `time_ns` is when podman
    recorded the event (wall clock); `attributes` are podman's, labels among them."""

    id: str
    name: str
    status: str
    exit_code: int | None
    time_ns: int
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str
    names: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class _Inspected:
    entry: dict[str, object]
    at: float
    info: ContainerInfo


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _BrokenResponse(Exception):  # noqa: N818 - internal, always turned into RuntimeUnavailable
    """The answer did not have the shape expected."""


class _Connection:
    """One HTTP/1.1 client connection to a Unix socket, driven by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._http = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        """Whether a next request may be sent: the last exchange finished and kept alive."""
        return (
            self._http.our_state is h11.IDLE
            and self._http.their_state is h11.IDLE
            and not self._reader.at_eof()
        )

    async def send_get(self, target: str, method: str = "GET") -> None:
        headers = [("Host", "podman"), ("Accept", "application/json")]
        if method != "GET":
            headers.append(("Content-Length", "0"))
        request = h11.Request(method=method, target=target, headers=headers)
        data = (self._http.send(request) or b"") + (self._http.send(h11.EndOfMessage()) or b"")
        self._writer.write(data)
        await self._writer.drain()

    async def next_event(self) -> h11.Event:
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                # b"" at EOF tells h11 the peer closed; it then raises or says ConnectionClosed.
                self._http.receive_data(await self._reader.read(_READ_SIZE))
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("podman closed the connection")
            if isinstance(event, h11.Event):
                return event
            # PAUSED: only after a response we never wait for (a protocol switch).
            raise h11.RemoteProtocolError(f"unexpected HTTP state {event!r}")

    async def read_response(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"expected a response, got {event!r}")

    async def read_body(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_BODY:
                    raise h11.RemoteProtocolError(f"answer longer than {_MAX_BODY} bytes")
                parts.append(event.data)
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()
        return b"".join(parts)

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class PodmanClient:
    """An asyncio client of one podman API socket; see the module docstring for the contract.

    Usable as an async context manager, which closes it; `close()` also ends every event stream
    still open (their iterators raise RuntimeUnavailable).
    """

    def __init__(self, socket_path: Path, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._streams: set[_Connection] = set()
        self._inspected: dict[str, _Inspected] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        if connection is not None:
            await connection.wait_closed()

    async def ping(self) -> str:
        """Podman's version (e.g. "4.3.1"), from the header of its `/_ping` answer."""
        answer = await self._request(f"{_API}/_ping")
        if answer.status != 200:
            raise self._unavailable(f"/_ping answered {answer.status}")
        version = answer.headers.get("libpod-api-version")
        if not version:
            raise self._unavailable("no Libpod-Api-Version header: not a podman API")
        return version

    async def list_containers(self) -> list[ContainerInfo]:
        """Every container, running or not (one list, plus inspect where an entry changed)."""
        entries = await self._get_json("/containers/json", {"all": "true"}, aggregate=True)
        now = time.monotonic()
        containers = []
        seen: set[str] = set()
        try:
            for raw in _array(entries, "the container list"):
                entry = _object(raw, "container list entry")
                container_id = _str(entry, "Id")
                seen.add(container_id)
                cached = self._inspected.get(container_id)
                if cached is None or cached.entry != entry or now - cached.at > _DETAILS_MAX_AGE_S:
                    inspected = await self._get_json(
                        f"/containers/{container_id}/json", missing_ok=True
                    )
                    if inspected is None:
                        continue  # removed between the list and the inspect
                    pod = _str(entry, "PodName") or _str(entry, "Pod") or None
                    info = _container_info(_object(inspected, "inspect"), pod, sized=False)
                    cached = _Inspected(entry, now, info)
                    self._inspected[container_id] = cached
                containers.append(cached.info)
        except (_BrokenResponse, ValueError) as error:
            raise self._unavailable(f"unexpected container list: {error}") from error
        for gone in self._inspected.keys() - seen:
            del self._inspected[gone]
        return containers

    async def inspect(self, name_or_id: str, *, with_size: bool = False) -> ContainerInfo | None:
        """The container with this name or id (or unique id prefix); None if there is none.

        `with_size` fills `size_root_fs`, which costs podman a walk over the container's files.
        """
        path = f"/containers/{urllib.parse.quote(name_or_id, safe='')}/json"
        raw = await self._get_json(path, {"size": "true"} if with_size else None, missing_ok=True)
        if raw is None:
            return None
        try:
            inspected = _object(raw, "inspect")
            pod_id = _str(inspected, "Pod")
            pod = None
            if pod_id:
                # Inspect names the pod by id only; models may be pods named like the model.
                pod_raw = await self._get_json(f"/pods/{pod_id}/json", missing_ok=True)
                pod = pod_id if pod_raw is None else _str(_object(pod_raw, "pod"), "Name")
            return _container_info(inspected, pod, sized=with_size)
        except (_BrokenResponse, ValueError) as error:
            raise self._unavailable(f"unexpected inspect of {name_or_id!r}: {error}") from error

    async def images(self) -> list[ImageInfo]:
        raw = await self._get_json("/images/json", aggregate=True)
        try:
            images = []
            for item in _array(raw, "the image list"):
                image = _object(item, "image")
                names = _str_list(image.get("Names")) or _str_list(image.get("RepoTags"))
                images.append(ImageInfo(_str(image, "Id"), names, _int(image, "Size")))
        except _BrokenResponse as error:
            raise self._unavailable(f"unexpected image list: {error}") from error
        return images

    async def volume_sizes(self) -> dict[str, int]:
        """Bytes used per named volume, from `/system/df`.

        Costly: podman walks every file of every container layer and volume to answer (8 ms with a
        few small ones, growing with their files). Call it at a slow interval.
        """
        raw = await self._get_json("/system/df", aggregate=True)
        try:
            sizes = {}
            for item in _array(_object(raw, "system df").get("Volumes") or [], "Volumes"):
                volume = _object(item, "volume")
                sizes[_str(volume, "VolumeName")] = _int(volume, "Size")
        except _BrokenResponse as error:
            raise self._unavailable(f"unexpected system df: {error}") from error
        return sizes

    async def events(
        self, since_ns: int | None = None, *, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[ContainerEvent]:
        """Container events as podman records them, from now on (or from `since_ns`, wall clock).

        Runs until the stream breaks, then raises RuntimeUnavailable: the caller subscribes again,
        with `since_ns` set to the last event's `time_ns` to miss nothing (events recorded at that
        very nanosecond may then come twice). The connection closes when the iterator is closed.
        `on_open` is called once podman accepted the subscription, before any event.
        """
        query = {"stream": "true", "filters": _CONTAINER_EVENTS}
        if since_ns is not None:
            query["since"] = format_time_ns(since_ns)
        target = f"{_API}/events?{urllib.parse.urlencode(query)}"
        connection: _Connection | None = None
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    connection = await self._open()
                    self._streams.add(connection)
                    await connection.send_get(target)
                    response = await connection.read_response()
                    if response.status_code != 200:
                        body = await connection.read_body()
                        raise self._unavailable(
                            f"the event stream answered {response.status_code}: {_message(body)}"
                        )
                    if on_open is not None:
                        on_open()
            except TimeoutError as error:
                raise self._unavailable(f"no event stream within {self.timeout_s:g} s") from error
            async for raw in _json_lines(connection):
                event = parse_event(raw)
                if event is not None:
                    yield event
            raise self._unavailable("the event stream ended")
        except (OSError, h11.ProtocolError, _BrokenResponse, ValueError) as error:
            if connection is not None and connection not in self._streams:
                raise self._unavailable("the event stream was closed with the client") from error
            raise self._unavailable(f"event stream broke: {error}") from error
        finally:
            if connection is not None:
                self._streams.discard(connection)
                connection.close()

    async def _get_json(
        self,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        missing_ok: bool = False,
        aggregate: bool = False,
    ) -> object:
        """The JSON podman answers to GET {_API}{path}; None for 404 when `missing_ok`.

        An `aggregate` query (over every container, image or volume) is asked again when podman
        failed it because one of them was removed meanwhile: podman 4.3's `system df` and, more
        rarely, its list answer 500 "no such container" then (fixed in podman 5.2, #23279).
        """
        target = _API + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        answer = await self._request(target)
        for _ in range(_REMOVAL_RACE_RETRIES if aggregate else 0):
            if answer.status != 500 or b"no such" not in answer.body:
                break
            answer = await self._request(target)
        if answer.status == 404 and missing_ok:
            return None
        if not 200 <= answer.status < 300:
            raise self._unavailable(
                f"GET {target} answered {answer.status}: {_message(answer.body)}"
            )
        try:
            return json.loads(answer.body)
        except ValueError as error:
            raise self._unavailable(f"GET {target} answered something not JSON") from error

    async def start(self, name_or_id: str, timeout_s: float = 30.0) -> bool:
        """Start a stopped container (the adapter's one write): True if it was started, False
        if it ran already; RuntimeUnavailable if podman could not (no such container, an error)."""
        target = f"{_API}/containers/{urllib.parse.quote(name_or_id, safe='')}/start"
        answer = await self._request(target, method="POST", timeout_s=timeout_s)
        if answer.status == 304:
            return False
        if not 200 <= answer.status < 300:
            raise self._unavailable(
                f"POST {target} answered {answer.status}: {_message(answer.body)}"
            )
        return True

    async def _request(
        self, target: str, *, method: str = "GET", timeout_s: float | None = None
    ) -> _Answer:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    return await self._exchange(target, method)
            except TimeoutError as error:
                raise self._unavailable(
                    f"no answer to {method} {target} within {timeout:g} s"
                ) from error

    async def _exchange(self, target: str, method: str = "GET") -> _Answer:
        """Send on the kept connection if it is there, else (or if that fails) on a fresh one."""
        if self._connection is not None and self._connection.reusable:
            try:
                return await self._exchange_on(self._connection, target, method)
            except (OSError, h11.ProtocolError):
                # Podman closed the idle connection or restarted since: once more, fresh.
                self._drop()
        self._drop()
        self._connection = await self._open()
        try:
            return await self._exchange_on(self._connection, target, method)
        except (OSError, h11.ProtocolError) as error:
            self._drop()
            raise self._unavailable(f"{method} {target} failed: {error}") from error

    async def _exchange_on(
        self, connection: _Connection, target: str, method: str = "GET"
    ) -> _Answer:
        try:
            await connection.send_get(target, method)
            response = await connection.read_response()
            body = await connection.read_body()
        except BaseException:
            # Cancelled or failed halfway: what is left on the wire belongs to no one.
            self._drop()
            raise
        if not connection.reusable:
            self._drop()
        headers = {name.decode().lower(): value.decode() for name, value in response.headers}
        return _Answer(response.status_code, headers, body)

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as error:
            raise self._unavailable(error.strerror or str(error)) from error
        return _Connection(reader, writer)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _unavailable(self, what: str) -> RuntimeUnavailable:
        return RuntimeUnavailable(f"podman API at {self.socket_path}: {what}")


async def _json_lines(connection: _Connection) -> AsyncIterator[dict[str, object]]:
    """The JSON objects of a streamed body, one per line, until the body ends."""
    pending = b""
    while True:
        event = await connection.next_event()
        if isinstance(event, h11.EndOfMessage):
            return
        if not isinstance(event, h11.Data):
            continue
        *lines, pending = (pending + event.data).split(b"\n")
        if len(pending) > _MAX_EVENT_LINE:
            raise _BrokenResponse(f"an event line longer than {_MAX_EVENT_LINE} bytes")
        for line in lines:
            if line.strip():
                yield _object(json.loads(line), "event")


def parse_event(raw: Mapping[str, object]) -> ContainerEvent | None:
    """A container event from podman's JSON (libpod 4.x, Docker-compatible field names);
    None for an event of another type. Raises ValueError for a malformed one."""
    if raw.get("Type", "container") != "container":
        return None
    try:
        actor = _object(raw.get("Actor") or {}, "Actor")
        attributes = {
            str(key): str(value)
            for key, value in _object(actor.get("Attributes") or {}, "Attributes").items()
        }
        status = _str(raw, "status") or _str(raw, "Action")
        time_ns = _int(raw, "timeNano") or _int(raw, "time") * _NS_PER_S
        exit_code = None
        if status == "died" and "containerExitCode" in attributes:
            exit_code = int(attributes["containerExitCode"])
        return ContainerEvent(
            id=_str(raw, "id") or _str(actor, "ID"),
            name=attributes.get("name", ""),
            status=status,
            exit_code=exit_code,
            time_ns=time_ns,
            attributes=MappingProxyType(attributes),
        )
    except _BrokenResponse as error:
        raise ValueError(str(error)) from error


def parse_time_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time (any number of fraction digits, `Z` or a
    `±hh:mm` offset); None for Go's zero time `0001-01-01T00:00:00Z` (podman's "never") and any
    other time before 1970. Raises ValueError for anything else."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    moment = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
    )
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    nanoseconds = int((fraction or "").ljust(9, "0")[:9])
    total = seconds * _NS_PER_S + nanoseconds
    return total if total >= 0 else None


def format_time_ns(time_ns: int) -> str:
    """RFC 3339 in UTC with nine fraction digits, as podman's `since` takes it."""
    seconds, nanoseconds = divmod(time_ns, _NS_PER_S)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z"


def _container_info(inspected: dict[str, object], pod: str | None, *, sized: bool) -> ContainerInfo:
    state = _object(inspected.get("State") or {}, "State")
    host = _object(inspected.get("HostConfig") or {}, "HostConfig")
    config = _object(inspected.get("Config") or {}, "Config")
    restart = _object(host.get("RestartPolicy") or {}, "RestartPolicy")
    created_ns = parse_time_ns(_str(inspected, "Created"))
    return ContainerInfo(
        id=_str(inspected, "Id"),
        name=_str(inspected, "Name"),
        image=_str(inspected, "ImageName"),
        image_id=_str(inspected, "Image"),
        labels=MappingProxyType(_str_map(config.get("Labels"))),
        state=_str(state, "Status"),
        pid=_int(state, "Pid"),
        exit_code=_int(state, "ExitCode"),
        oom_killed=state.get("OOMKilled") is True,
        created_ns=created_ns or 0,
        started_ns=parse_time_ns(_str(state, "StartedAt") or "0001-01-01T00:00:00Z"),
        finished_ns=parse_time_ns(_str(state, "FinishedAt") or "0001-01-01T00:00:00Z"),
        restart_count=_int(inspected, "RestartCount"),
        restart_policy=_str(restart, "Name") or "no",
        restart_max_retries=_int(restart, "MaximumRetryCount"),
        # Podman writes 0 (and -1 for the quota) where no limit was given.
        memory_limit=_int(host, "Memory") or None,
        cpu_quota=max(_int(host, "CpuQuota"), 0) or None,
        cpu_period=_int(host, "CpuPeriod") or None,
        pod=pod,
        cgroup_parent=_str(host, "CgroupParent") or None,
        cgroup_path=_str(state, "CgroupPath") or None,
        size_root_fs=_int(inspected, "SizeRootFs") if sized else None,
        ip_address=_ip_address(inspected.get("NetworkSettings")),
        host_network=host.get("NetworkMode") == "host",
    )


def _ip_address(settings: object) -> str | None:
    """`NetworkSettings.IPAddress`, else the first of `NetworkSettings.Networks[*].IPAddress`."""
    if not isinstance(settings, dict):
        return None
    address = settings.get("IPAddress")
    if isinstance(address, str) and address:
        return address
    networks = settings.get("Networks")
    for network in networks.values() if isinstance(networks, dict) else ():
        address = network.get("IPAddress") if isinstance(network, dict) else None
        if isinstance(address, str) and address:
            return address
    return None


def _object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _BrokenResponse(f"{what} is not a JSON object")
    return value


def _array(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise _BrokenResponse(f"{what} is not a JSON array")
    return value


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _BrokenResponse(f"{key} is not a string: {value!r}")
    return value


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BrokenResponse(f"{key} is not an integer: {value!r}")
    return value


def _str_list(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _BrokenResponse(f"not a list of strings: {value!r}")
    return tuple(value)


def _str_map(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _BrokenResponse(f"not a JSON object: {value!r}")
    return {str(key): str(item) for key, item in value.items()}


def _message(body: bytes) -> str:
    """Podman's error message from an error answer's JSON, else the start of the body."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    return body[:200].decode(errors="replace")
