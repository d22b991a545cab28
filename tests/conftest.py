"""Fixtures that start real services: etcd, mosquitto, journald, an sd_notify socket, Podman.

A missing program skips the test on a developer's machine and fails it under CI (CI=true), where
`.ci/install-system` installs everything: a CI run never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.support.certs import Pki
from tests.support.services import (
    JOURNALD_BINARY,
    EtcdCluster,
    EtcdServer,
    EtcdTLS,
    Journald,
    MosquittoServer,
    NotifySocket,
    PodmanService,
)

if TYPE_CHECKING:
    from agent.store.etcd import EtcdStore


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test locally; fail it under CI, where every service must be there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: integration tests must not skip)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The path of program `name` (on PATH, or a path); skips locally, fails under CI if absent."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (`make deps` installs it)")
    return path


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary folder for Unix sockets: a socket path has at most 107 bytes, and
    pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="pcl-") as directory:
        yield Path(directory)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A single-member etcd on free ports, data in tmp_path; `etcd.endpoint` is `127.0.0.1:PORT`."""
    require_binary("etcd")
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    """The agent's EtcdStore connected to `etcd`, closed after the test."""
    # Imported here: aetcd and grpc take a quarter of a second to load, and most tests need neither.
    from agent.config import EtcdConnection  # noqa: PLC0415
    from agent.store.etcd import EtcdStore  # noqa: PLC0415

    store = EtcdStore(EtcdConnection(endpoints=(etcd.endpoint,)))
    yield store
    await store.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on free loopback ports forming one cluster (about 1-2 s to start)."""
    require_binary("etcd")
    with EtcdCluster(tmp_path / "cluster", 3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with an etcd server and a client certificate, plus an unrelated CA and client."""
    require_binary("openssl")
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def etcd_tls(tmp_path: Path, pki: Pki) -> Iterator[EtcdServer]:
    """A single-member etcd serving https only, demanding a client certificate from `pki.ca`."""
    require_binary("etcd")
    tls = EtcdTLS(pki.ca.cert, pki.server.cert, pki.server.key, client_cert_auth=True)
    with EtcdServer(tmp_path / "etcd-tls", tls=tls) as server:
        yield server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A mosquitto broker on a free port with persistence in tmp_path."""
    require_binary("mosquitto")
    with MosquittoServer(tmp_path / "mosquitto") as server:
        yield server


@pytest.fixture(scope="session")
def journald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journald]:
    """The running journald, or a standalone one started for this session (needs root)."""
    require_binary("journalctl")
    service = Journald(tmp_path_factory.mktemp("journald") / "journald.log")
    if not service.available():
        require_binary(JOURNALD_BINARY)
        if os.geteuid() != 0:
            unavailable("journald is not running and starting one needs root")
    with service:
        yield service


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A bound NOTIFY_SOCKET; `notify_socket.env` is the environment entry for a child."""
    # pytest's tmp_path can exceed the 107 bytes a Unix socket path may have.
    with (
        tempfile.TemporaryDirectory(prefix="piccolo-notify-") as directory,
        NotifySocket(Path(directory) / "notify.sock") as sock,
    ):
        yield sock


@pytest.fixture(scope="session")
def podman() -> Iterator[PodmanService]:
    """Podman's API on a Unix socket (`podman.socket`) with the busybox test image (`.image`).

    One service for the whole session; `CONTAINERS_CONF` is exported while it runs, so every
    child uses the same configuration. Containers made through `podman.run_container` are
    removed at the end. Needs root: rootless Podman would need subordinate ids and another
    cgroup setup.
    """
    require_binary("podman")
    require_binary("runc")
    busybox = require_binary("busybox")
    if os.geteuid() != 0:
        unavailable("the Podman tests run Podman as root")
    # pytest's tmp_path can exceed the 107 bytes a Unix socket path may have.
    with (
        tempfile.TemporaryDirectory(prefix="piccolo-podman-") as directory,
        PodmanService(Path(directory), busybox=busybox) as service,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in service.env.items():
            patch.setenv(name, value)
        yield service


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a real filesystem of a given size (tmpfs) under tmp_path: `small_fs(8 * 2**20)` is
    its mount point. Unmounted at the end. Needs root (`mount`)."""
    if os.geteuid() != 0:
        unavailable("mounting a small filesystem needs root")
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"fs-{len(mounts)}"
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            check=True,
        )
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)
