"""EtcdStore against real etcd: transactions, leases, failover, outages, mutual TLS and auth."""

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import EtcdConnection
from agent.errors import SinkUnavailable
from agent.store.etcd import EtcdStore, LeaseNotFound, Put, StoreRejected, prefix_range_end
from tests.conftest import require_binary
from tests.support.certs import Pki
from tests.support.services import EtcdCluster, EtcdServer, free_port

pytestmark = pytest.mark.integration

MakeStore = Callable[..., EtcdStore]
DIAL_TIMEOUT = 1.0
# The test etcd's users (see etcd_auth).
ROOT_PASSWORD = "rootpw"  # noqa: S105
READER_PASSWORD = "readpw"  # noqa: S105
WRONG_PASSWORD = "wrong"  # noqa: S105


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    """make_store(*endpoints, **settings): an EtcdStore with dial_timeout 1 s, closed afterwards."""
    stores: list[EtcdStore] = []

    def make(*endpoints: str, **settings: Any) -> EtcdStore:
        settings.setdefault("dial_timeout", f"{DIAL_TIMEOUT:g}s")
        connection = EtcdConnection.model_validate({"endpoints": endpoints, **settings})
        stores.append(EtcdStore(connection))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()


def etcdctl(endpoint: str, *args: str) -> str:
    result = subprocess.run(
        [require_binary("etcdctl"), f"--endpoints={endpoint}", "--dial-timeout=2s", *args],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, f"etcdctl {args}: {result.stderr}"
    return result.stdout


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts: the TCP connect succeeds, then nothing answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# --- transactions ------------------------------------------------------------------------------


async def test_put_many_writes_128_puts_in_one_revision(
    etcd: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(etcd.endpoint)
    before = await store.revision()
    puts = [Put(b"/t/batch/%03d" % i, b"v%d" % i) for i in range(128)]

    revision = await store.put_many(puts)

    assert revision == before + 1 == await store.revision()
    assert await store.count_prefix(b"/t/batch/") == 128
    stored = await store.get_prefix(b"/t/batch/")
    assert stored == [(p.key, p.value) for p in puts]
    assert store.reachable
    assert store.endpoint == etcd.endpoint


async def test_129_puts_are_refused_without_contacting_etcd(make_store: MakeStore) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = make_store(dead)
    puts = [Put(b"/t/k%d" % i, b"v") for i in range(129)]

    started = time.monotonic()
    with pytest.raises(StoreRejected) as caught:
        await store.put_many(puts)

    assert time.monotonic() - started < 0.1
    assert str(caught.value) == (
        f"a transaction of 129 puts exceeds max_txn_ops (128); not sent to {dead}"
    )
    assert not store.reachable


async def test_etcd_refusals_are_store_rejected(etcd: EtcdServer, make_store: MakeStore) -> None:
    # The limits configured above etcd's own (128 ops, 1.5 MiB + 512 KiB for gRPC), so the
    # requests reach etcd and etcd's answers are mapped.
    store = make_store(etcd.endpoint, max_txn_ops=1000, max_request_bytes=10_000_000)

    with pytest.raises(StoreRejected, match="too many operations in txn request") as too_many:
        await store.put_many([Put(b"/t/k%d" % i, b"v") for i in range(129)])
    assert etcd.endpoint in str(too_many.value)

    with pytest.raises(StoreRejected, match="request is too large"):
        await store.put(b"/t/large", b"x" * 1_700_000)
    with pytest.raises(StoreRejected, match="too large: grpc: received message larger than max"):
        await store.put(b"/t/huge", b"x" * 2_200_000)
    with pytest.raises(StoreRejected, match="key is not provided"):
        await store.put(b"", b"x")

    assert await store.get(b"/t/large") is None
    assert store.reachable  # etcd answered every time


async def test_requests_over_max_request_bytes_are_not_sent(make_store: MakeStore) -> None:
    store = make_store(f"127.0.0.1:{free_port()}", max_request_bytes=1000)

    with pytest.raises(StoreRejected, match=r"over max_request_bytes \(1000\); not sent"):
        await store.put_many([Put(b"/t/a", b"x" * 600), Put(b"/t/b", b"x" * 600)])
    with pytest.raises(StoreRejected, match="not sent"):
        await store.put(b"/t/a", b"x" * 1001)
    with pytest.raises(StoreRejected, match="not sent"):
        await store.create_if_absent(b"/t/a", b"x" * 1001)


async def test_get_put_delete_and_create_if_absent(etcd: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd.endpoint)

    assert await store.get(b"/t/absent") is None
    assert await store.create_if_absent(b"/t/leader", b"node-a")
    assert not await store.create_if_absent(b"/t/leader", b"node-b")
    assert await store.get(b"/t/leader") == b"node-a"

    revision = await store.put(b"/t/leader", b"node-c")
    assert revision == await store.revision()
    assert await store.get(b"/t/leader") == b"node-c"
    assert await store.delete(b"/t/leader")
    assert not await store.delete(b"/t/leader")
    assert await store.create_if_absent(b"/t/leader", b"node-b")


async def test_prefix_reads_are_sorted_and_bounded(etcd: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd.endpoint)
    await store.put_many([Put(key, b"1") for key in (b"/t/p/b", b"/t/p/a", b"/t/p0", b"/t/q")])

    assert [key for key, _ in await store.get_prefix(b"/t/p/")] == [b"/t/p/a", b"/t/p/b"]
    assert await store.count_prefix(b"/t/p") == 3
    assert await store.count_prefix(b"") == 4
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


async def test_compact(etcd: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd.endpoint)
    for value in (b"1", b"2", b"3"):
        await store.put(b"/t/c", value)
    revision = await store.revision()

    await store.compact(revision)
    await store.compact(revision - 1)  # compacted that far already: fine
    with pytest.raises(StoreRejected, match="future revision"):
        await store.compact(revision + 100)


# --- leases ------------------------------------------------------------------------------------


async def test_leases_are_shared_refreshed_and_revoked(
    etcd: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(etcd.endpoint)
    lease = await store.grant(60)
    other = await store.grant(60)

    await store.put_many([Put(b"/t/l/%d" % i, b"v", lease) for i in range(3)])
    await store.put(b"/t/other", b"v", other)
    await store.put(b"/t/none", b"v")

    assert {await store.key_lease(b"/t/l/%d" % i) for i in range(3)} == {lease}
    assert await store.key_lease(b"/t/other") == other
    assert await store.key_lease(b"/t/none") is None
    assert await store.key_lease(b"/t/absent") is None

    info = await store.lease_info(lease)
    assert info is not None
    granted, remaining = info
    assert granted == 60
    assert 55 <= remaining <= 60
    assert 55 <= await store.refresh(lease) <= 60

    await store.revoke(lease)
    await store.revoke(lease)  # gone already: fine
    assert await store.count_prefix(b"/t/l/") == 0
    assert await store.get(b"/t/other") == b"v"
    assert await store.lease_info(lease) is None

    with pytest.raises(LeaseNotFound) as on_put:
        await store.put_many([Put(b"/t/l/again", b"v", lease), Put(b"/t/o", b"v", other)])
    assert on_put.value.leases == {lease, other}
    assert "requested lease not found" in str(on_put.value)
    with pytest.raises(LeaseNotFound) as on_refresh:
        await store.refresh(lease)
    assert on_refresh.value.leases == {lease}
    with pytest.raises(LeaseNotFound):
        await store.create_if_absent(b"/t/l/again", b"v", lease)
    assert await store.count_prefix(b"/t/l/") == 0


async def test_a_lease_expires_with_its_keys(etcd: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd.endpoint)
    lease = await store.grant(1)
    await store.put(b"/t/short", b"v", lease)

    deadline = time.monotonic() + 5
    while await store.get(b"/t/short") is not None:
        assert time.monotonic() < deadline, "the key outlived its 1 s lease"
        await asyncio.sleep(0.1)
    with pytest.raises(LeaseNotFound):
        await store.refresh(lease)


# --- failover and outages ----------------------------------------------------------------------


async def test_failover_when_the_member_in_use_dies(
    etcd_cluster: EtcdCluster, make_store: MakeStore
) -> None:
    store = make_store(*etcd_cluster.endpoints, dial_timeout="2s")
    await store.put(b"/t/before", b"1")
    used = store.endpoint
    assert used == etcd_cluster.endpoints[0]

    next(m for m in etcd_cluster.members if m.endpoint == used).kill()
    killed = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            await store.put(b"/t/after", b"2")
            break
        except SinkUnavailable as error:  # an election may be under way
            errors.append(str(error))
            assert time.monotonic() - killed < 6, errors
            await asyncio.sleep(0.1)

    assert time.monotonic() - killed < 6
    assert store.endpoint != used
    assert store.reachable
    assert await store.get(b"/t/before") == b"1"
    assert await store.get(b"/t/after") == b"2"


async def test_concurrent_calls_share_one_connection_and_fail_over(
    etcd_cluster: EtcdCluster, make_store: MakeStore
) -> None:
    store = make_store(*etcd_cluster.endpoints, dial_timeout="2s")
    await store.put_many([Put(b"/t/c/%02d" % i, b"0") for i in range(40)])
    assert len(store._clients) == 1

    async def write(i: int) -> None:
        deadline = time.monotonic() + 6
        while True:
            try:
                await store.put(b"/t/c/%02d" % i, b"1")
            except SinkUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            else:
                return

    writers = asyncio.gather(*(write(i) for i in range(40)))
    await asyncio.sleep(0)  # the writers are under way when the member dies
    used = store.endpoint
    next(m for m in etcd_cluster.members if m.endpoint == used).kill()
    await writers

    assert store.endpoint != used
    assert [v for _, v in await store.get_prefix(b"/t/c/")] == [b"1"] * 40
    # Failed clients were closed: one connection, to the endpoint in use.
    assert list(store._clients) == [etcd_cluster.endpoints.index(store.endpoint)]


async def test_a_dead_first_endpoint_is_skipped(etcd: EtcdServer, make_store: MakeStore) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = make_store(dead, f"http://{etcd.endpoint}")

    assert store.endpoint == dead
    await store.put(b"/t/k", b"v")
    assert store.endpoint == f"http://{etcd.endpoint}"
    assert await store.get(b"/t/k") == b"v"


async def test_no_endpoint_answers(make_store: MakeStore, silent_port: int) -> None:
    refused = f"127.0.0.1:{free_port()}"
    silent = f"127.0.0.1:{silent_port}"
    store = make_store(refused, silent)

    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        await store.put(b"/t/k", b"v")
    elapsed = time.monotonic() - started

    # The refused port fails at once; the silent one takes its whole dial_timeout.
    assert DIAL_TIMEOUT * 0.9 <= elapsed <= 2 * DIAL_TIMEOUT + 0.5
    message = str(caught.value)
    assert message.startswith("no etcd endpoint answered put")
    assert f"{refused} (plaintext): UNAVAILABLE" in message
    assert "Connection refused" in message
    assert f"{silent} (plaintext): DEADLINE_EXCEEDED" in message
    assert not store.reachable


async def test_same_store_reconnects_after_an_outage(
    etcd: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(etcd.endpoint)
    lease = await store.grant(60)
    await store.put(b"/t/k", b"1", lease)

    etcd.stop()
    with pytest.raises(SinkUnavailable, match=etcd.endpoint):
        await store.put(b"/t/k", b"2")
    with pytest.raises(SinkUnavailable):
        await store.refresh(lease)
    assert not store.reachable

    etcd.start()
    assert await store.get(b"/t/k") == b"1"
    assert store.reachable
    await store.put(b"/t/k", b"3", lease)
    assert await store.refresh(lease) > 0
    assert await store.get(b"/t/k") == b"3"


async def test_a_closed_store_is_unavailable(etcd: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd.endpoint)
    await store.put(b"/t/k", b"v")
    await store.close()
    with pytest.raises(SinkUnavailable, match="closed"):
        await store.get(b"/t/k")


# --- mutual TLS --------------------------------------------------------------------------------


def tls_settings(ca: Path, cert: Path | None, key: Path | None) -> dict[str, Any]:
    return {"tls": {"enabled": True, "ca_file": ca, "cert_file": cert, "key_file": key}}


async def test_mutual_tls(etcd_tls: EtcdServer, pki: Pki, make_store: MakeStore) -> None:
    store = make_store(
        etcd_tls.endpoint, **tls_settings(pki.ca.cert, pki.client.cert, pki.client.key)
    )
    await store.put_many([Put(b"/t/tls/%d" % i, b"v") for i in range(10)])
    assert await store.count_prefix(b"/t/tls/") == 10

    # An https:// endpoint is TLS by itself; the files still come from the tls section.
    url = make_store(
        etcd_tls.client_url, **tls_settings(pki.ca.cert, pki.client.cert, pki.client.key)
    )
    assert await url.get(b"/t/tls/0") == b"v"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("server cert from an unknown CA", "CERTIFICATE_VERIFY_FAILED"),
        ("client cert from an unknown CA", "TLS handshake failed"),
        ("no client cert", "TLS handshake failed"),
    ],
)
async def test_mutual_tls_refusals(
    etcd_tls: EtcdServer, pki: Pki, make_store: MakeStore, case: str, expected: str
) -> None:
    files = {
        "server cert from an unknown CA": (pki.other_ca.cert, pki.client.cert, pki.client.key),
        "client cert from an unknown CA": (
            pki.ca.cert,
            pki.other_client.cert,
            pki.other_client.key,
        ),
        "no client cert": (pki.ca.cert, None, None),
    }[case]
    store = make_store(etcd_tls.endpoint, **tls_settings(*files))

    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        await store.put(b"/t/k", b"v")

    assert time.monotonic() - started < DIAL_TIMEOUT + 0.5
    message = str(caught.value)
    assert f"{etcd_tls.endpoint} (TLS)" in message
    assert expected in message
    assert "TLS handshake failed" in message


async def test_plaintext_against_tls_etcd(etcd_tls: EtcdServer, make_store: MakeStore) -> None:
    store = make_store(etcd_tls.endpoint)
    with pytest.raises(SinkUnavailable) as caught:
        await store.get(b"/t/k")
    message = str(caught.value)
    assert f"{etcd_tls.endpoint} (plaintext)" in message
    assert "does it require TLS?" in message


async def test_unreadable_tls_file(pki: Pki, tmp_path: Path, make_store: MakeStore) -> None:
    missing = tmp_path / "missing.pem"
    store = make_store(
        f"127.0.0.1:{free_port()}", **tls_settings(pki.ca.cert, missing, pki.client.key)
    )
    with pytest.raises(StoreRejected) as caught:
        await store.get(b"/t/k")
    assert str(caught.value).startswith(f"cannot read cert_file {missing} for etcd at 127.0.0.1:")
    assert "No such file or directory" in str(caught.value)


# --- authentication ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """etcd with auth enabled: root:rootpw, and reader:readpw who may only read.

    Tokens live 1 s (`--auth-token-ttl 1`), so the tests also meet expired tokens.
    """
    require_binary("etcd")
    data = tmp_path_factory.mktemp("auth") / "etcd"
    with EtcdServer(data, extra_args=("--auth-token-ttl", "1")) as server:
        for args in (
            ("user", "add", f"root:{ROOT_PASSWORD}"),
            ("user", "grant-role", "root", "root"),
            ("user", "add", f"reader:{READER_PASSWORD}"),
            ("role", "add", "reader"),
            ("role", "grant-permission", "--prefix=true", "reader", "read", "/"),
            ("user", "grant-role", "reader", "reader"),
            ("auth", "enable"),
        ):
            etcdctl(server.endpoint, *args)
        yield server


async def test_auth_with_password_and_password_file(
    etcd_auth: EtcdServer, tmp_path: Path, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(etcd_auth.endpoint, username="root", password=ROOT_PASSWORD)
    await store.put(b"/t/auth", b"1")

    password_file = tmp_path / "password"
    password_file.write_text(f"{ROOT_PASSWORD}\n")
    from_file = make_store(etcd_auth.endpoint, username="root", password_file=password_file)
    assert await from_file.get(b"/t/auth") == b"1"

    # The token expires after 1 idle second; the store authenticates again by itself.
    await asyncio.sleep(2.2)
    with caplog.at_level(logging.INFO, logger="agent.store.etcd"):
        await store.put(b"/t/auth", b"2")
    assert f"etcd at {etcd_auth.endpoint}: etcdserver: invalid auth token" in caplog.text
    assert await from_file.get(b"/t/auth") == b"2"


async def test_auth_refusals(etcd_auth: EtcdServer, make_store: MakeStore) -> None:
    wrong = make_store(etcd_auth.endpoint, username="root", password=WRONG_PASSWORD)
    with pytest.raises(StoreRejected) as caught:
        await wrong.put(b"/t/auth", b"x")
    assert str(caught.value) == (
        f"etcd at {etcd_auth.endpoint}: authentication failed for user 'root': "
        "etcdserver: authentication failed, invalid user ID or password"
    )
    assert wrong.reachable

    anonymous = make_store(etcd_auth.endpoint)
    with pytest.raises(StoreRejected, match="requires authentication, and no username"):
        await anonymous.get(b"/t/auth")

    reader = make_store(etcd_auth.endpoint, username="reader", password=READER_PASSWORD)
    await reader.get(b"/t/auth")
    with pytest.raises(StoreRejected, match="permission denied for user 'reader' on put"):
        await reader.put(b"/t/auth", b"x")

    incomplete = make_store(etcd_auth.endpoint, username="root")
    with pytest.raises(StoreRejected, match="password or password_file missing"):
        await incomplete.get(b"/t/auth")


async def test_credentials_are_accepted_before_auth_is_enabled(
    etcd: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(etcd.endpoint, username="root", password=ROOT_PASSWORD)
    await store.put(b"/t/k", b"v")
    assert await store.get(b"/t/k") == b"v"


async def test_tls_against_plaintext_etcd(
    etcd: EtcdServer, pki: Pki, make_store: MakeStore
) -> None:
    store = make_store(etcd.endpoint, **tls_settings(pki.ca.cert, pki.client.cert, pki.client.key))
    with pytest.raises(SinkUnavailable) as caught:
        await store.get(b"/t/k")
    assert f"{etcd.endpoint} (TLS)" in str(caught.value)
    assert "TLS handshake failed" in str(caught.value)
