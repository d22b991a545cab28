"""Real etcd, mosquitto, journald, an sd_notify socket and Podman, for tests and for `make run`.

Each server is a real process on 127.0.0.1 (free ports, the caller's directories) or a Unix
socket. start() returns once it answers (etcd's /health, an MQTT CONNACK, journald's socket,
Podman's /_ping) and raises ServiceError with the tail of its log when it does not. stop()
(SIGTERM, SIGKILL after 5 s) and kill() (SIGKILL) keep the data, so start() again brings the same
server back on the same ports: tests of an outage stop a server for a while and restart it. Every
class is also a context manager.

Children run in their own session, so a Ctrl-C in a terminal reaches only the program that started
them, which stops them in order. Started from the main thread, they also get SIGTERM when that
thread's process dies (PR_SET_PDEATHSIG), and an atexit hook stops any left running: a crashed or
killed test run leaves no servers behind. Only the standard library is used.
"""

import abc
import atexit
import contextlib
import ctypes
import http.client
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD_BINARY = "/lib/systemd/systemd-journald"
# etcd's defaults are 100 ms and 1000 ms; see EtcdServer for why tests use shorter ones.
SINGLE_MEMBER_TIMING = ("--heartbeat-interval", "50", "--election-timeout", "250")
CLUSTER_TIMING = ("--heartbeat-interval", "100", "--election-timeout", "500")

_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 40
_LOG_TAIL_BYTES = 64 * 1024
_ADDRESS_IN_USE = "address already in use"
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1
_UNIX_PATH_MAX = 108


class ServiceError(RuntimeError):
    """A service did not start, or is not in the state asked for; the message ends with its log."""


class BinaryNotFoundError(ServiceError):
    """The program a service needs is not installed (not on PATH, or not executable)."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    Every socket is held until all ports are chosen, so the ports differ from each other. Another
    process may still take one before the caller binds it: the servers here retry with new ports
    on "address already in use" when they chose the ports themselves.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind host:port now (with SO_REUSEADDR, as etcd and mosquitto do)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_binary(name: str) -> str:
    """The path of an executable given by name (searched on PATH) or by path."""
    path = shutil.which(name)
    if path is None:
        raise BinaryNotFoundError(f"{name} not found (PATH={os.environ.get('PATH', '')})")
    return path


def parent_death_hook() -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child get SIGTERM when its parent dies.

    The kernel sends the signal when the *thread* that forked the child exits, so the hook is only
    given from the main thread (a child started from `asyncio.to_thread` would be stopped when the
    executor's worker exits); elsewhere it is None and cleanup relies on stop() and atexit.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return die_with_parent


_running: set["ManagedProcess"] = set()


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_running):
        process.stop()


class ManagedProcess:
    """One child process writing stdout and stderr to a log file; the part every server shares.

    The log is appended to across launches, each launch behind a `--- <time> starting:` line, and
    log_tail() reads the current launch's part only.
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def launch(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            log.write(f"--- {stamp} starting: {shlex.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                # Only calls prctl(2); glibc's fork keeps malloc usable in the child.
                preexec_fn=parent_death_hook(),  # noqa: PLW1509
            )
        _running.add(self)

    def wait_until(self, probe: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll `probe` until it is true and return the seconds that took.

        If the process exits first, or `timeout` passes, or the wait is interrupted, the process is
        killed and ServiceError (or the interruption) raised: a failed start leaves nothing running.
        """
        started = time.monotonic()
        try:
            self._poll(probe, started + timeout, what)
        except BaseException:
            self.kill()
            raise
        return time.monotonic() - started

    def _poll(self, probe: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            code = self.returncode
            if code is not None or self._popen is None:
                raise ServiceError(
                    f"{self.name} exited ({code}) before it was {what}{self._tail()}"
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.name} was not {what} in time{self._tail()}")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, SIGKILL after `timeout` s; the exit status, None if it was never launched."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        _running.discard(self)
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash or power loss would; the exit status, None if never launched."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        _running.discard(self)
        return popen.returncode

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the latest launch wrote to the log."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - _LOG_TAIL_BYTES))
                data = log.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def _tail(self) -> str:
        return f"\n--- last lines of {self.log_path}:\n{self.log_tail()}"


class Service(abc.ABC):
    """Something with start() and stop(); `with service:` starts it and always stops it."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _PortedServer(Service):
    """A server on one ManagedProcess whose ports can be re-chosen until it first started."""

    def __init__(self, process: ManagedProcess, *, auto_ports: bool) -> None:
        self._process = process
        self._ports_fixed = not auto_ports
        self.startup_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return self._process.log_tail(lines)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch and wait until ready; the time it took is kept in `startup_seconds`."""
        attempts = 1 if self._ports_fixed else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self.startup_seconds = self._start_once(timeout)
            except ServiceError as error:
                if attempt == attempts or _ADDRESS_IN_USE not in str(error).lower():
                    raise
                self._choose_ports()
            else:
                self._ports_fixed = True
                return

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self._process.stop(timeout)

    def kill(self) -> None:
        self._process.kill()

    @abc.abstractmethod
    def _start_once(self, timeout: float) -> float: ...

    @abc.abstractmethod
    def _choose_ports(self) -> None: ...


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class EtcdTLS:
    """Serve etcd's client port over https with these PEM files.

    With `client_cert_auth` etcd demands a client certificate signed by `ca_file` (on every client
    request, /health included). The health probe presents `probe_cert`/`probe_key`, by default
    the server's own pair (which then has to allow clientAuth). Peer traffic stays plain http.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_auth: bool = True
    probe_cert: Path | None = None
    probe_key: Path | None = None

    def args(self) -> tuple[str, ...]:
        return (
            "--trusted-ca-file", str(self.ca_file),
            "--cert-file", str(self.cert_file),
            "--key-file", str(self.key_file),
            *(("--client-cert-auth",) if self.client_cert_auth else ()),
        )  # fmt: skip

    def probe_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.probe_cert or self.cert_file, self.probe_key or self.key_file)
        return context


class EtcdServer(_PortedServer):
    """A real etcd member on 127.0.0.1, a single-member cluster unless `initial_cluster` is given.

    Data lives in `data_dir`; the log is `<data_dir>.log` beside it. Ports left as None are chosen
    free. `extra_args` go to etcd as they are (e.g. `--max-txn-ops`, `--auto-compaction-retention`).

    Elections are shortened unless `extra_args` sets the flags: SINGLE_MEMBER_TIMING for a single
    member (with etcd's default 1 s election timeout a restart with data waits 1-2 s for its own
    election, as it does not yet know that it is alone; with 250 ms it is ready in about 0.35 s),
    CLUSTER_TIMING for a cluster member (a new leader within about a second after one stops).

    With `tls` the client port speaks https only (see EtcdTLS); `endpoint` stays `127.0.0.1:PORT`
    and `client_url` becomes `https://127.0.0.1:PORT`.
    """

    def __init__(
        self,
        data_dir: Path,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "piccolo-test",
        *,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str = "etcd",
        tls: EtcdTLS | None = None,
    ) -> None:
        log_path = data_dir.parent / f"{data_dir.name}.log"
        super().__init__(
            ManagedProcess(f"etcd {name}", log_path),
            auto_ports=client_port is None and peer_port is None and initial_cluster is None,
        )
        self.data_dir = data_dir
        self.name = name
        self.client_port, self.peer_port = _fill_ports(client_port, peer_port)
        self._initial_cluster = initial_cluster
        self._cluster_token = cluster_token or f"piccolo-test-{uuid.uuid4().hex[:12]}"
        self._extra_args = tuple(extra_args)
        self._binary = binary
        self.tls = tls
        self._opener = (
            _NO_PROXY_OPENER
            if tls is None
            else urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=tls.probe_context()),
            )
        )

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, as etcd clients and `etcdctl --endpoints` take it."""
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    def launch(self) -> None:
        """Start the process without waiting (a cluster launches every member, then waits)."""
        argv = [
            find_binary(self._binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self._cluster_token,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self._timing_args(),
            *(() if self.tls is None else self.tls.args()),
            *self._extra_args,
        ]  # fmt: skip
        # ETCD_* variables would conflict with these flags, and etcd refuses to start on conflicts.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ETCD_") or key == "ETCD_UNSUPPORTED_ARCH"
        }
        self._process.launch(argv, env)

    def _timing_args(self) -> tuple[str, ...]:
        timing = SINGLE_MEMBER_TIMING if self._initial_cluster is None else CLUSTER_TIMING
        if any(arg.split("=", 1)[0] in timing[::2] for arg in self._extra_args):
            return ()
        return timing

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until /health says true (a member of a cluster: once there is a leader)."""
        return self._process.wait_until(self.healthy, timeout, f"healthy at {self.client_url}")

    def healthy(self) -> bool:
        """Whether `GET /health` answers `{"health": "true"}` now."""
        try:
            with self._opener.open(f"{self.client_url}/health", timeout=0.5) as response:
                body = json.loads(response.read())
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def _start_once(self, timeout: float) -> float:
        self.launch()
        return self.wait_ready(timeout)

    def _choose_ports(self) -> None:
        self.client_port, self.peer_port = free_ports(2)


class EtcdCluster(Service):
    """`size` etcd members on 127.0.0.1 forming one cluster; member i keeps its data in
    `<base_dir>/etcd-<i>`. Stop and start single members through `members` to test failover."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        extra_args: Sequence[str] = (),
        tls: EtcdTLS | None = None,
    ) -> None:
        ports = free_ports(2 * size)
        names = [f"etcd-{index}" for index in range(size)]
        peers = ports[size:]
        initial_cluster = ",".join(
            f"{name}=http://{LOOPBACK}:{peer}" for name, peer in zip(names, peers, strict=True)
        )
        token = f"piccolo-test-{uuid.uuid4().hex[:12]}"
        self.members = [
            EtcdServer(
                base_dir / name,
                client,
                peer,
                name,
                initial_cluster=initial_cluster,
                cluster_token=token,
                extra_args=extra_args,
                tls=tls,
            )
            for name, client, peer in zip(names, ports[:size], peers, strict=True)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch every member, then wait until each is healthy (which needs a quorum)."""
        try:
            for member in self.members:
                member.launch()
            for member in self.members:
                member.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in reversed(self.members):
            member.stop()


class MosquittoServer(_PortedServer):
    """A real mosquitto broker on 127.0.0.1, anonymous, with persistence in `work_dir`.

    `work_dir` holds mosquitto.conf, the persistence file and mosquitto.log (the broker logs to
    stderr, which goes to that file together with anything it prints before reading its config).
    `extra_config` lines are appended to the config (e.g. `autosave_interval 1`, so that a kill()
    keeps recent retained messages; by default they are saved at stop()).
    """

    def __init__(
        self,
        work_dir: Path,
        port: int | None = None,
        *,
        extra_config: Sequence[str] = (),
        binary: str = "mosquitto",
    ) -> None:
        super().__init__(
            ManagedProcess("mosquitto", work_dir / "mosquitto.log"), auto_ports=port is None
        )
        self.work_dir = work_dir
        self.port = free_port() if port is None else port
        self.config_path = work_dir / "mosquitto.conf"
        self._extra_config = tuple(extra_config)
        self._binary = binary

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def write_config(self) -> None:
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.work_dir}/",
            "log_dest stderr",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto switches to user "mosquitto", which cannot write work_dir.
            lines.append("user root")
        lines.extend(self._extra_config)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def connectable(self) -> bool:
        """Whether an MQTT 3.1.1 CONNECT is answered with CONNACK "accepted" now."""
        return mqtt_handshake(LOOPBACK, self.port)

    def _start_once(self, timeout: float) -> float:
        self.write_config()
        self._process.launch([find_binary(self._binary), "-c", str(self.config_path)])
        return self._process.wait_until(self.connectable, timeout, f"accepting MQTT on {self.port}")

    def _choose_ports(self) -> None:
        self.port = free_port()


class PrometheusServer(_PortedServer):
    """A real Prometheus server on 127.0.0.1 scraping `targets` (host:port) every `interval`,
    its TSDB in `work_dir`; `query(promql)` asks its HTTP API."""

    def __init__(
        self,
        work_dir: Path,
        targets: Sequence[str],
        *,
        interval: str = "1s",
        port: int | None = None,
    ) -> None:
        super().__init__(
            ManagedProcess("prometheus", work_dir / "prometheus.log"), auto_ports=port is None
        )
        self.work_dir = work_dir
        self.port = free_port() if port is None else port
        self.targets = tuple(targets)
        self.interval = interval

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "prometheus.yml"
        targets = ", ".join(f'"{t}"' for t in self.targets)
        path.write_text(
            f"global: {{scrape_interval: {self.interval}, evaluation_interval: {self.interval}}}\n"
            f"scrape_configs:\n  - job_name: piccolo\n    static_configs:\n"
            f"      - targets: [{targets}]\n"
        )
        return path

    def _get(self, target: str, timeout: float) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def healthy(self) -> bool:
        try:
            status, _ = self._get("/-/ready", 0.5)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        _, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}), 5)
        document = json.loads(body)
        assert document["status"] == "success", document
        return list(document["data"]["result"])

    def _start_once(self, timeout: float) -> float:
        config = self.write_config()
        self._process.launch(
            [
                find_binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.work_dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
            ]
        )
        return self._process.wait_until(self.healthy, timeout, f"ready on {self.port}")

    def _choose_ports(self) -> None:
        self.port = free_port()


def mqtt_handshake(host: str, port: int, timeout: float = 0.5) -> bool:
    """Send an MQTT 3.1.1 CONNECT (clean session) and DISCONNECT; True on CONNACK code 0."""
    client_id = f"piccolo-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode()
    variable_header = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, 10 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(variable_header) + len(payload)]) + variable_header + payload
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(connect)
            connack = _receive_exactly(sock, 4)
            sock.sendall(b"\xe0\x00")
    except OSError:
        return False
    return connack[0] == 0x20 and connack[1] == 0x02 and connack[3] == 0x00


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed during the MQTT handshake")
        data += chunk
    return data


def _fill_ports(*given: int | None) -> list[int]:
    """The given ports, with each None replaced by a free port that differs from the others."""
    taken = {port for port in given if port is not None}
    spare = iter(port for port in free_ports(len(given) + len(taken)) if port not in taken)
    return [next(spare) if port is None else port for port in given]


class Journald(Service):
    """A running systemd-journald: the one already there, or a standalone one started here.

    If `/run/systemd/journal/socket` exists and a `systemd-journald` process is alive, it is used
    and left running at stop(). Otherwise `/lib/systemd/systemd-journald` is started in the
    background (as root) and stopped at stop(). `journalctl --sync` works without systemd as PID 1
    (it talks to journald's varlink socket), so read() syncs before each look.
    """

    def __init__(self, log_path: Path | None = None, binary: str = JOURNALD_BINARY) -> None:
        default_log = Path(tempfile.gettempdir()) / f"piccolo-journald-{os.getpid()}.log"
        self._process = ManagedProcess("systemd-journald", log_path or default_log)
        self._binary = binary
        self.started_here = False

    @staticmethod
    def available() -> bool:
        """Whether a journald process is alive and its socket exists."""
        return JOURNAL_SOCKET.exists() and bool(_journald_pids())

    def start(self, timeout: float = 5.0) -> None:
        if self.started_here or self.available():
            return
        binary = find_binary(self._binary)
        JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        # A socket left by a dead journald would pass the readiness check before the new one binds.
        JOURNAL_SOCKET.unlink(missing_ok=True)
        self._process.launch([binary])
        self._process.wait_until(JOURNAL_SOCKET.exists, timeout, f"listening on {JOURNAL_SOCKET}")
        self.started_here = True

    def stop(self) -> None:
        if self.started_here:
            self._process.stop()
            self.started_here = False

    def sync(self) -> bool:
        """Ask journald to write out what it received (`journalctl --sync`); False if it failed."""
        result = subprocess.run(
            [find_binary("journalctl"), "--sync"],
            capture_output=True,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        return result.returncode == 0

    def cursor(self) -> str | None:
        """The cursor of the newest entry (None while the journal is empty).

        `read(since_cursor=...)` with it returns only entries written afterwards.
        """
        self.sync()
        output = _journalctl("--no-pager", "--quiet", "--lines=0", "--show-cursor")
        for line in output.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        return None

    def read(
        self,
        identifier: str,
        since_cursor: str | None = None,
        match: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, str]]:
        """Entries with SYSLOG_IDENTIFIER=identifier and every `match` field, oldest first.

        Only entries after `since_cursor`, when given. Polls until at least one entry is there or
        `timeout` passed (then returns []). Binary values are decoded as UTF-8 (with replacement);
        a field that occurs several times in one entry has its values joined with newlines.
        """
        matches = {"SYSLOG_IDENTIFIER": identifier, **(match or {})}
        args = ["--no-pager", "--quiet", "--all", "--output=json"]
        if since_cursor is not None:
            # Not --after-cursor: systemd 252 then skips the first match when the cursor's own
            # entry does not match. --cursor starts at that entry; it is dropped below.
            args.append(f"--cursor={since_cursor}")
        for field, value in matches.items():
            if not _JOURNAL_FIELD.fullmatch(field):
                raise ValueError(f"not a journal field name: {field!r}")
            args.append(f"{field}={value}")
        deadline = time.monotonic() + timeout
        while True:
            self.sync()
            output = _journalctl(*args)
            entries = [
                entry
                for entry in map(_journal_entry, output.splitlines())
                if entry and entry.get("__CURSOR") != since_cursor
            ]
            if entries or time.monotonic() >= deadline:
                return entries
            time.sleep(0.05)


_JOURNAL_FIELD = re.compile(r"[A-Z_][A-Z0-9_]*")


def _journalctl(*args: str) -> str:
    result = subprocess.run(
        [find_binary("journalctl"), *args],
        capture_output=True,
        timeout=STOP_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"journalctl {shlex.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode(errors="replace")


def _journal_entry(line: str) -> dict[str, str]:
    """One line of `journalctl --output=json` as text fields; {} for anything else it printed."""
    if not line.startswith("{"):
        return {}
    raw = json.loads(line)
    if not isinstance(raw, dict):
        raise ServiceError(f"journalctl printed something other than an entry: {line[:200]}")
    return {str(key): _journal_value(value) for key, value in raw.items()}


def _journal_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return bytes(value).decode(errors="replace")
        return "\n".join(_journal_value(item) for item in value)
    return "" if value is None else str(value)


def _journald_pids() -> list[int]:
    """Live journald processes: "(systemd-journal) S ..." in /proc/PID/stat, not a zombie."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The kernel keeps 15 characters of a command name.
            name, _, rest = stat.read_text().partition(") ")
            if name.endswith("(systemd-journal") and rest[:1] not in {"Z", "X"}:
                pids.append(int(stat.parent.name))
    return pids


@dataclass(frozen=True)
class NotifyMessage:
    """One sd_notify datagram: when it arrived (time.monotonic()), its fields, and its sender."""

    received: float
    fields: Mapping[str, str]
    raw: bytes
    pid: int | None


def parse_notify(data: bytes) -> dict[str, str]:
    """The KEY=VALUE lines of an sd_notify datagram; lines without `=` are ignored."""
    fields = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_MAX_FDS = 16


class NotifySocket(Service):
    """An AF_UNIX datagram socket bound at `path`, for NOTIFY_SOCKET, as systemd would hold it.

    A background thread receives every datagram into `messages` with its monotonic receive time
    and the sender's pid (SO_PASSCRED); file descriptors sent along (FDSTORE=1) are closed.
    The path must be shorter than 108 bytes: use a short temporary directory, not pytest's tmp_path.
    """

    def __init__(self, path: Path) -> None:
        if len(os.fsencode(path)) >= _UNIX_PATH_MAX:
            raise ValueError(f"socket path longer than {_UNIX_PATH_MAX - 1} bytes: {path}")
        self.path = path
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._messages: list[NotifyMessage] = []
        self._next_unread = 0

    @property
    def address(self) -> str:
        return str(self.path)

    @property
    def env(self) -> dict[str, str]:
        """`{"NOTIFY_SOCKET": path}`, to merge into a child's environment."""
        return {"NOTIFY_SOCKET": self.address}

    @property
    def messages(self) -> list[NotifyMessage]:
        with self._changed:
            return list(self._messages)

    def start(self) -> None:
        if self._socket is not None:
            return
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(self.path))
        sock.settimeout(0.05)
        self._socket = sock
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._receive_loop, args=(sock,), name=f"notify {self.path}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self.path.unlink(missing_ok=True)

    def receive(self, timeout: float = 5.0) -> dict[str, str] | None:
        """The fields of the next message not yet returned by receive(); None after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._next_unread < len(self._messages), timeout):
                return None
            message = self._messages[self._next_unread]
            self._next_unread += 1
            return dict(message.fields)

    def wait_for(
        self,
        key: str,
        value: str | None = None,
        timeout: float = 5.0,
        *,
        after: float | None = None,
    ) -> float:
        """The receive time of the first message with `key` (equal to `value`, when given).

        Looks at every message so far and those still to come; with `after` (a time.monotonic()
        value, e.g. an earlier wait_for's result) only at messages received later than that.
        Raises TimeoutError listing what did arrive.
        """

        def first_match() -> NotifyMessage | None:
            for message in self._messages:
                if after is not None and message.received <= after:
                    continue
                if key in message.fields and value in (None, message.fields[key]):
                    return message
            return None

        with self._changed:
            found = self._changed.wait_for(first_match, timeout)
            seen = [message.raw for message in self._messages]
        if found is None:
            wanted = key if value is None else f"{key}={value}"
            raise TimeoutError(f"no {wanted} on {self.path} within {timeout:g} s; got {seen}")
        return found.received

    def watchdog_times(self) -> list[float]:
        """Receive times of every WATCHDOG=1."""
        with self._changed:
            return [m.received for m in self._messages if m.fields.get("WATCHDOG") == "1"]

    def values(self, key: str) -> list[str]:
        """Every value sent for `key`, in order (e.g. each STATUS=)."""
        with self._changed:
            return [m.fields[key] for m in self._messages if key in m.fields]

    def _receive_loop(self, sock: socket.socket) -> None:
        ancillary_size = socket.CMSG_SPACE(_CREDENTIALS.size) + socket.CMSG_SPACE(4 * _MAX_FDS)
        while not self._stopping.is_set():
            try:
                data, ancillary, _flags, _address = sock.recvmsg(
                    65536, ancillary_size, socket.MSG_CMSG_CLOEXEC
                )
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.monotonic()
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDENTIALS.unpack_from(payload)[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    for fd in struct.unpack(f"{usable // 4}i", payload[:usable]):
                        os.close(fd)
            message = NotifyMessage(received, parse_notify(data), data, pid)
            with self._changed:
                self._messages.append(message)
                self._changed.notify_all()


PODMAN_TEST_IMAGE = "localhost/piccolo-busybox:test"
PODMAN_TEST_LABEL = "piccolo.test"
# What Podman 4.3.1 needs to run containers on these machines (shared/PLATFORM-NOTES.md): crun
# refuses the cgroup v1 + v2 hybrid, systemd is not PID 1 (cgroupfs), the default ulimits fail
# without explicit ones, and no journald may be listening (events to a file).
PODMAN_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
_PT_INTERP = 3  # ELF program header type naming a dynamic loader


class PodmanService(Service):
    """Podman set up to run containers here, a busybox image, and its API on a Unix socket.

    start() writes `containers.conf` (PODMAN_CONTAINERS_CONF) into `work_dir`, imports `image`
    from a static busybox unless it exists (about 0.2 s, kept across runs), starts
    `podman system service --time=0 unix://<work_dir>/podman.sock` and waits until `/_ping`
    answers. stop() stops the API and removes every container and pod this instance labelled:
    each carries `piccolo.test=1` and `piccolo.test.session=<id of this instance>`, so parallel
    test runs on one machine leave each other's containers alone. Podman's storage is the
    machine's own (root), as the agent's would be. `env` is what a child needs to use the same
    configuration; the CLI helpers pass it. `work_dir` must be short: a Unix socket path has at
    most 107 bytes.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        image: str = PODMAN_TEST_IMAGE,
        busybox: str = "busybox",
        binary: str = "podman",
    ) -> None:
        self.work_dir = work_dir
        self.socket = work_dir / "podman.sock"
        if len(os.fsencode(self.socket)) >= _UNIX_PATH_MAX:
            raise ValueError(f"socket path longer than {_UNIX_PATH_MAX - 1} bytes: {self.socket}")
        self.conf_path = work_dir / "containers.conf"
        self.image = image
        self.session = uuid.uuid4().hex[:12]
        self._busybox = busybox
        self._binary = binary
        self._process = ManagedProcess("podman system service", work_dir / "podman-service.log")

    @property
    def env(self) -> dict[str, str]:
        """`{"CONTAINERS_CONF": path}`, to merge into a child's environment."""
        return {"CONTAINERS_CONF": str(self.conf_path)}

    @property
    def labels(self) -> tuple[str, ...]:
        """The `--label` values every container and pod made through this instance carries."""
        return (f"{PODMAN_TEST_LABEL}=1", f"{PODMAN_TEST_LABEL}.session={self.session}")

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(PODMAN_CONTAINERS_CONF)
        if self.podman("image", "exists", self.image, check=False).returncode != 0:
            self.build_image()
        self.start_api(timeout)

    def stop(self) -> None:
        self.stop_api()
        self.remove_containers()

    def start_api(self, timeout: float = START_TIMEOUT) -> float:
        """Start `podman system service` on `socket`; the seconds until `/_ping` answered."""
        # A socket left behind would pass the readiness check before the new service binds.
        self.socket.unlink(missing_ok=True)
        self._process.launch(
            [find_binary(self._binary), "system", "service", "--time=0", f"unix://{self.socket}"],
            {**os.environ, **self.env},
            # conmon inherits the working directory and, on cgroup v1, leaves a file named `oom`
            # there after an OOM kill: keep it out of the checkout.
            cwd=self.work_dir,
        )
        return self._process.wait_until(self.api_ready, timeout, f"answering on {self.socket}")

    def stop_api(self) -> None:
        """Stop the API service; containers keep running (conmon, not the service, holds them)."""
        self._process.stop()

    def api_ready(self) -> bool:
        """Whether `GET /_ping` on the socket answers 200 now."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
                status_line = sock.recv(64)
        except OSError:
            return False
        return status_line.split(b" ")[1:2] == [b"200"]

    def podman(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI with this configuration; ServiceError if it fails and `check`."""
        result = subprocess.run(
            [find_binary(self._binary), *args],
            env={**os.environ, **self.env},
            cwd=self.work_dir,  # see start_api: conmon's `oom` file lands in the working directory
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ServiceError(
                f"podman {shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def run_container(
        self, name: str, *podman_args: str, command: Sequence[str] = ("sleep", "300")
    ) -> str:
        """`podman run -d` of `image` named `name`, labelled; returns the container's id.

        Without a `--network`/`--pod` argument the container gets `--network=none`: setting up a
        bridge costs about 0.3 s per start and monitoring tests need no network. The default
        command ends by itself, so even a killed test run leaves nothing running for long.
        """
        labels = [arg for label in self.labels for arg in ("--label", label)]
        wants_network = any(arg.startswith(("--network", "--net", "--pod")) for arg in podman_args)
        network = [] if wants_network else ["--network=none"]
        result = self.podman(
            "run", "-d", "--name", name, *labels, *network, *podman_args, self.image, *command
        )
        return result.stdout.strip().splitlines()[-1]

    def create_pod(self, name: str, *podman_args: str) -> str:
        """`podman pod create` without an infra container (no pause image here); the pod's id."""
        labels = [arg for label in self.labels for arg in ("--label", label)]
        result = self.podman(
            "pod", "create", "--infra=false", "--name", name, *labels, *podman_args
        )
        return result.stdout.strip().splitlines()[-1]

    def create_volume(self, name: str) -> str:
        """`podman volume create`, labelled; the volume's name."""
        labels = [arg for label in self.labels for arg in ("--label", label)]
        return self.podman("volume", "create", *labels, name).stdout.strip()

    def remove_containers(self) -> None:
        """Remove every container, pod and volume labelled by this instance, running or not."""
        session = f"label={self.labels[1]}"
        self.podman("rm", "--force", "--time=0", "--filter", session, check=False)
        pods = self.podman("pod", "ps", "--quiet", "--filter", session, check=False).stdout.split()
        if pods:
            self.podman("pod", "rm", "--force", "--time=0", *pods, check=False)
        self.podman("volume", "prune", "--force", "--filter", session, check=False)

    def build_image(self) -> None:
        """Import `image`: a root filesystem of a static busybox and a link per applet.

        No registry is reachable from these machines, so the image is made from the
        busybox-static package; a dynamically linked busybox would not run in it.
        """
        busybox = Path(find_binary(self._busybox)).resolve()
        if _elf_interpreter(busybox):
            raise ServiceError(f"{busybox} is dynamically linked: install busybox-static")
        applets = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for directory, mode in (("bin", 0o755), ("tmp", 0o1777)):
                entry = tarfile.TarInfo(directory)
                entry.type, entry.mode = tarfile.DIRTYPE, mode
                tar.addfile(entry)
            tar.add(busybox, "bin/busybox")
            for applet in applets:
                if applet != "busybox":
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                    tar.addfile(link)
        result = subprocess.run(
            [find_binary(self._binary), "import", "--quiet", "-", self.image],
            input=archive.getvalue(),
            env={**os.environ, **self.env},
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"podman import of {self.image} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )


def _elf_interpreter(path: Path) -> bool:
    """Whether the 64-bit ELF executable at `path` names a dynamic loader (is not static)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        raise ServiceError(f"{path} is not a 64-bit ELF executable")
    order = "<" if data[5] == 1 else ">"
    (table,) = struct.unpack_from(f"{order}Q", data, 0x20)
    entry_size, count = struct.unpack_from(f"{order}HH", data, 0x36)
    return any(
        struct.unpack_from(f"{order}I", data, table + index * entry_size)[0] == _PT_INTERP
        for index in range(count)
    )
