"""The etcd v3 adapter: the only module that imports aetcd and grpc.

Contract:

- **Timeouts.** Every call is bounded by `dial_timeout` per endpoint tried: connecting,
  authenticating and the request itself together (an asyncio deadline around the attempt, and the
  same value as the gRPC deadline, so etcd abandons the work too).
- **Failover.** Endpoints are tried round-robin, starting with the current one, each at most once
  per call. An endpoint fails over on a connection failure, a timeout, "no leader" and the other
  transient gRPC statuses; its client is then closed and a fresh one is made the next time it is
  tried (a gRPC channel that saw its server go away backs off for up to two minutes before it
  reconnects on its own; a fresh channel connects at once). The endpoint that answers becomes
  current. When none answers, `agent.errors.SinkUnavailable` lists every endpoint with its error.
  A write that timed out may still have been applied; keys are deterministic, so the caller's
  replay overwrites (ARCHITECTURE.md), and `create_if_absent` may then report False for a key it
  created itself.
- **Errors.** An error etcd answers with is not retried (but for an expired auth token). By gRPC
  status and etcd's message:

  - UNAVAILABLE (connection refused or lost, TLS handshake failed, "no leader"),
    DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL, ABORTED, DATA_LOSS, "too many requests":
    the next endpoint; SinkUnavailable when every endpoint failed.
  - "database space exceeded" (the NOSPACE alarm, cluster-wide): SinkUnavailable at once.
  - NOT_FOUND "requested lease not found": LeaseNotFound, carrying the leases the request used
    (etcd does not say which one it missed).
  - "too many operations in txn request", "request is too large", RESOURCE_EXHAUSTED "received
    message larger than max": StoreRejected.
  - "authentication failed" and any other UNAUTHENTICATED: StoreRejected "authentication failed
    for user X"; "user name is empty": StoreRejected "requires authentication";
    PERMISSION_DENIED: StoreRejected "permission denied for user X".
  - UNAUTHENTICATED "invalid auth token", "revision of auth store is old": authenticate again
    once on the same endpoint (simple tokens expire after `--auth-token-ttl` idle seconds).
  - Anything else (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, ...):
    StoreRejected.

  More than `max_txn_ops` puts or a request over `max_request_bytes` is refused with
  StoreRejected before anything is sent. An unreadable TLS or password file is a StoreRejected
  naming the file. Messages name the endpoint; failures of a TLS connection say "TLS".
- **TLS.** aetcd 1.0.0 has no TLS option: `Client.connect()` hard-codes
  `grpc.aio.insecure_channel`. `_Client.connect()` re-implements it with
  `grpc.aio.secure_channel` and sets the same private attributes, which is why pyproject pins
  `aetcd==1.0.0`; the integration tests run it against etcd with `--client-cert-auth`. Files are
  read whenever a client is made, so rotated certificates are picked up on the next reconnect.
  `tls.enabled` makes every endpoint TLS; an `https://` endpoint is TLS even without it (system CA
  roots unless `ca_file` is given).
- **Resources.** One client (one gRPC channel) per endpoint in use, reused by every call; a failed
  endpoint's client is closed, so normally exactly one exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

# gRPC core writes its own log lines to stderr (handshake failures, fork notices). Every failure
# reaches us as a status with details and is reported from here, so its logging only duplicates
# them outside the journald fields; GRPC_VERBOSITY=debug in the environment still turns it on.
# It must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc

from agent.config import EtcdConnection
from agent.errors import SinkUnavailable

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_Code = grpc.StatusCode

# Statuses after which another member may well answer: the connection or the member is the
# problem, not the request.
_TRANSIENT: Final = frozenset(
    {
        _Code.UNAVAILABLE,
        _Code.DEADLINE_EXCEEDED,
        _Code.CANCELLED,
        _Code.UNKNOWN,
        _Code.INTERNAL,
        _Code.ABORTED,
        _Code.DATA_LOSS,
    }
)

# aetcd raises these (with the gRPC error as __cause__ when it has one); without a cause the
# class is all there is to go by.
_AETCD_CODES: Final[tuple[tuple[type[Exception], grpc.StatusCode], ...]] = (
    (aetcd.exceptions.ConnectionFailedError, _Code.UNAVAILABLE),
    (aetcd.exceptions.ConnectionTimeoutError, _Code.DEADLINE_EXCEEDED),
    (aetcd.exceptions.InvalidArgumentError, _Code.INVALID_ARGUMENT),
    (aetcd.exceptions.UnauthenticatedError, _Code.UNAUTHENTICATED),
    (aetcd.exceptions.PreconditionFailedError, _Code.FAILED_PRECONDITION),
    (aetcd.exceptions.RevisionCompactedError, _Code.OUT_OF_RANGE),
    (aetcd.exceptions.InternalError, _Code.INTERNAL),
)

_LEASE_NOT_FOUND = "requested lease not found"
_COMPACTED = "required revision has been compacted"
_AUTH_NOT_ENABLED = "authentication is not enabled"
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")
_TLS_MARKERS = ("ssl", "tls", "tsi_", "handshake", "certificate", "unwrap failed")
# gRPC's default limit on received messages is 4 MiB; a large get_prefix answer may exceed it.
# etcd's own Go client lifts it the same way.
_MAX_RECEIVE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Put:
    """One key to write; `lease` attaches it to a lease (the key goes when the lease does)."""

    key: bytes
    value: bytes
    lease: int | None = None


class StoreRejected(Exception):  # noqa: N818 - named for the condition, like SinkUnavailable
    """etcd (or the configuration behind the request) refuses it; repeating it cannot help."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class LeaseNotFound(Exception):  # noqa: N818
    """A lease the request used has expired or was revoked; grant a new one and write again.

    etcd does not say which lease it missed: `leases` holds every lease the request used.
    """

    def __init__(self, message: str, leases: Iterable[int], endpoint: str | None = None) -> None:
        super().__init__(message)
        self.leases = frozenset(leases)
        self.endpoint = endpoint


class _ClientClosedError(Exception):
    """A client was used after another task closed it (after its own failure)."""


# What a call may raise that _status() understands. UsageError: the channel was closed under us.
_RPC_ERRORS: Final = (
    grpc.aio.AioRpcError,
    grpc.aio.UsageError,
    aetcd.exceptions.ClientError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    configured: str  # as written in the configuration; what messages show
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str, *, tls_enabled: bool) -> _Endpoint:
        scheme, _, hostport = text.rpartition("://")
        host, _, port = hostport.rpartition(":")
        return cls(text, host, int(port), tls_enabled or scheme.lower() == "https")

    @property
    def transport(self) -> str:
        return "TLS" if self.tls else "plaintext"


@dataclass(frozen=True, slots=True)
class _Credentials:
    """What a client needs to connect, read from the configured files."""

    tls: grpc.ChannelCredentials | None
    username: str | None
    password: str | None


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd has no type information
    """aetcd's client with an optional TLS channel.

    connect() mirrors aetcd 1.0.0's `Client.connect()` (channel, token, stubs, watcher) with three
    changes: a secure channel when credentials are given; a lock instead of aetcd's
    `_is_connecting` flag, so a failed connect wakes every waiter at once; and an etcd without
    auth enabled is accepted when credentials are configured (as etcd's Go client does), so
    credentials can be deployed before auth is switched on. The private attributes it sets are
    those of aetcd 1.0.0, which pyproject pins.
    """

    def __init__(
        self,
        endpoint: _Endpoint,
        credentials: _Credentials,
        timeout: float,
        options: dict[str, Any],
    ) -> None:
        super().__init__(
            host=endpoint.host,
            port=endpoint.port,
            username=credentials.username,
            password=credentials.password,
            timeout=timeout,
            options=options,
        )
        self._tls_credentials = credentials.tls
        self._connect_lock = asyncio.Lock()
        self._closed = False

    async def close(self) -> None:
        # For good: a task still holding this client must not open a channel nobody closes.
        self._closed = True
        await super().close()

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if self._closed:
                raise _ClientClosedError("the connection was closed after another call failed")
            if self._connected.is_set():
                return
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            if self._tls_credentials is None:
                self.channel = grpc.aio.insecure_channel(target, options=options)
            else:
                self.channel = grpc.aio.secure_channel(
                    target, self._tls_credentials, options=options
                )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except grpc.aio.AioRpcError as error:
                    if _AUTH_NOT_ENABLED not in (error.details() or ""):
                        await self._drop_channel()
                        raise
                else:
                    self.metadata = (("token", response.token),)
                if self._closed:  # closed by another task while this one authenticated
                    raise _ClientClosedError("the connection was closed after another call failed")
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()

    async def _drop_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self._init_channel_attrs()


class EtcdStore:
    """Calls to an etcd cluster with timeouts, failover across endpoints and typed errors.

    Safe for concurrent use by several tasks of one event loop.
    """

    def __init__(self, connection: EtcdConnection) -> None:
        self._connection = connection
        self._endpoints = [
            _Endpoint.parse(text, tls_enabled=connection.tls.enabled)
            for text in connection.endpoints
        ]
        self._timeout = float(connection.dial_timeout)
        self._current = 0
        self._clients: dict[int, _Client] = {}
        self._reachable = False
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint in use now (as configured): the last one that answered, else the first."""
        return self._endpoints[self._current].configured

    @property
    def reachable(self) -> bool:
        """Whether etcd answered the last call (False before the first call)."""
        return self._reachable

    async def close(self) -> None:
        """Close every connection; calls made afterwards raise SinkUnavailable."""
        self._closed = True
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()

    async def put_many(self, puts: Sequence[Put]) -> int:
        """Write every put in one transaction; the revision it created.

        Refused with StoreRejected, before anything is sent, above `max_txn_ops` puts or
        `max_request_bytes`.
        """
        limit = self._connection.max_txn_ops
        if len(puts) > limit:
            raise StoreRejected(
                f"a transaction of {len(puts)} puts exceeds max_txn_ops ({limit}); "
                f"not sent to {self.endpoint}",
                self.endpoint,
            )
        request = rpc.TxnRequest(success=[rpc.RequestOp(request_put=_put(p)) for p in puts])
        self._check_size(request, f"a transaction of {len(puts)} puts")

        async def call(client: _Client) -> int:
            response = await client.kvstub.Txn(request, **self._call_args(client))
            return int(response.header.revision)

        return await self._call("put_many", call, leases=(p.lease for p in puts))

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> int:
        """Write one key; the revision it created."""
        request = _put(Put(key, value, lease))
        self._check_size(request, f"a put of {key!r}")

        async def call(client: _Client) -> int:
            response = await client.kvstub.Put(request, **self._call_args(client))
            return int(response.header.revision)

        return await self._call("put", call, leases=(lease,))

    async def get(self, key: bytes) -> bytes | None:
        request = rpc.RangeRequest(key=key)

        async def call(client: _Client) -> bytes | None:
            response = await client.kvstub.Range(request, **self._call_args(client))
            return bytes(response.kvs[0].value) if response.kvs else None

        return await self._call("get", call)

    async def get_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every key under `prefix` with its value, sorted by key."""
        request = rpc.RangeRequest(
            key=prefix or b"\0",
            range_end=prefix_range_end(prefix),
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )

        async def call(client: _Client) -> list[tuple[bytes, bytes]]:
            response = await client.kvstub.Range(request, **self._call_args(client))
            return [(bytes(kv.key), bytes(kv.value)) for kv in response.kvs]

        return await self._call("get_prefix", call)

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int | None = None,
        limit: int = 0,
        newest_first: bool = False,
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """(revision read at, the keys in [key, range_end) with their values), in key order or,
        with `newest_first`, reversed; at most `limit` (0: all). With `revision`, read as of that
        revision (one consistent view across several reads); StoreRejected when it is compacted."""
        request = rpc.RangeRequest(
            key=key or b"\0",
            range_end=range_end or b"",
            revision=revision or 0,
            limit=limit,
            sort_order=rpc.RangeRequest.DESCEND if newest_first else rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )

        async def call(client: _Client) -> tuple[int, list[tuple[bytes, bytes]]]:
            response = await client.kvstub.Range(request, **self._call_args(client))
            kvs = [(bytes(kv.key), bytes(kv.value)) for kv in response.kvs]
            return int(response.header.revision), kvs

        return await self._call("range", call)

    async def count_prefix(self, prefix: bytes) -> int:
        request = rpc.RangeRequest(
            key=prefix or b"\0", range_end=prefix_range_end(prefix), count_only=True
        )

        async def call(client: _Client) -> int:
            response = await client.kvstub.Range(request, **self._call_args(client))
            return int(response.count)

        return await self._call("count_prefix", call)

    async def delete(self, key: bytes) -> bool:
        """Delete one key; whether it existed."""
        request = rpc.DeleteRangeRequest(key=key)

        async def call(client: _Client) -> bool:
            response = await client.kvstub.DeleteRange(request, **self._call_args(client))
            return int(response.deleted) > 0

        return await self._call("delete", call)

    async def create_if_absent(self, key: bytes, value: bytes, lease: int | None = None) -> bool:
        """Write the key unless it exists (create_revision == 0); whether it was written."""
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=key,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.CREATE,
                    create_revision=0,
                )
            ],
            success=[rpc.RequestOp(request_put=_put(Put(key, value, lease)))],
        )
        self._check_size(request, f"a create of {key!r}")

        async def call(client: _Client) -> bool:
            response = await client.kvstub.Txn(request, **self._call_args(client))
            return bool(response.succeeded)

        return await self._call("create_if_absent", call, leases=(lease,))

    async def grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds; its id."""
        request = rpc.LeaseGrantRequest(TTL=ttl_s, ID=0)

        async def call(client: _Client) -> int:
            response = await client.leasestub.LeaseGrant(request, **self._call_args(client))
            return int(response.ID)

        return await self._call("grant", call)

    async def refresh(self, lease: int) -> int:
        """One keep-alive; the TTL the lease has again. LeaseNotFound when it is gone."""

        async def call(client: _Client) -> int:
            stream = client.leasestub.LeaseKeepAlive(**self._call_args(client))
            try:
                await stream.write(rpc.LeaseKeepAliveRequest(ID=lease))
                await stream.done_writing()
                response = await stream.read()
            finally:
                stream.cancel()
            if response is grpc.aio.EOF:
                raise grpc.aio.AioRpcError(
                    _Code.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="the keep-alive stream ended without an answer",
                )
            return int(response.TTL)

        ttl = await self._call("refresh", call, leases=(lease,))
        # etcd answers a keep-alive for an unknown lease with TTL 0 rather than an error.
        if ttl <= 0:
            raise LeaseNotFound(
                f"lease {lease:x} is not known to etcd at {self.endpoint} (expired or revoked)",
                (lease,),
                self.endpoint,
            )
        return ttl

    async def revoke(self, lease: int) -> None:
        """Revoke a lease, deleting its keys; a lease that is gone already is fine."""
        request = rpc.LeaseRevokeRequest(ID=lease)

        async def call(client: _Client) -> None:
            try:
                await client.leasestub.LeaseRevoke(request, **self._call_args(client))
            except grpc.aio.AioRpcError as error:
                if _LEASE_NOT_FOUND not in (error.details() or ""):
                    raise

        await self._call("revoke", call)

    async def lease_info(self, lease: int) -> tuple[int, int] | None:
        """(granted TTL, remaining TTL) in seconds, or None when the lease is gone."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease, keys=False)

        async def call(client: _Client) -> tuple[int, int] | None:
            response = await client.leasestub.LeaseTimeToLive(request, **self._call_args(client))
            # etcd answers -1 for a lease it does not know.
            if int(response.TTL) < 0:
                return None
            return int(response.grantedTTL), int(response.TTL)

        return await self._call("lease_info", call)

    async def key_lease(self, key: bytes) -> int | None:
        """The lease the key is attached to; None when it has none or does not exist."""
        request = rpc.RangeRequest(key=key, keys_only=True)

        async def call(client: _Client) -> int | None:
            response = await client.kvstub.Range(request, **self._call_args(client))
            lease = int(response.kvs[0].lease) if response.kvs else 0
            return lease or None

        return await self._call("key_lease", call)

    async def revision(self) -> int:
        """The store's current revision, as the member answering knows it."""

        async def call(client: _Client) -> int:
            response = await client.maintenancestub.Status(
                rpc.StatusRequest(), **self._call_args(client)
            )
            return int(response.header.revision)

        return await self._call("revision", call)

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision`; already compacted that far is fine."""
        request = rpc.CompactionRequest(revision=revision, physical=False)

        async def call(client: _Client) -> None:
            try:
                await client.kvstub.Compact(request, **self._call_args(client))
            except grpc.aio.AioRpcError as error:
                if _COMPACTED not in (error.details() or ""):
                    raise

        await self._call("compact", call)

    # --- the machinery -----------------------------------------------------------------------

    def _call_args(self, client: _Client) -> dict[str, Any]:
        return {"timeout": self._timeout, "metadata": client.metadata}

    def _check_size(self, request: Any, what: str) -> None:
        size = int(request.ByteSize())
        limit = int(self._connection.max_request_bytes)
        if size > limit:
            raise StoreRejected(
                f"{what} is {size} bytes, over max_request_bytes ({limit}); "
                f"not sent to {self.endpoint}",
                self.endpoint,
            )

    async def _call(
        self,
        what: str,
        call: Callable[[_Client], Awaitable[_T]],
        *,
        leases: Iterable[int | None] = (),
    ) -> _T:
        """Run `call` on the current endpoint, failing over as the module docstring says."""
        count = len(self._endpoints)
        start = self._current
        failures: list[str] = []
        for step in range(count):
            index = (start + step) % count
            endpoint = self._endpoints[index]
            retried = False
            while True:
                client = self._client(index)
                try:
                    result = await self._attempt(client, call)
                except (_ClientClosedError, *_RPC_ERRORS) as error:
                    code, details = _status(error)
                    stale_token = _stale_token(code, details)
                    if code in _TRANSIENT or stale_token or _auth_failed(code, details):
                        # The connection, or its token or credentials, are no good: the next try
                        # on this endpoint makes a fresh client, reading the files again.
                        await self._discard(index, client)
                    if not retried and (stale_token or isinstance(error, _ClientClosedError)):
                        # A token expired (etcd's --auth-token-ttl) or auth changed, or another
                        # task closed this client after its own failure: a fresh client goes on.
                        if stale_token:
                            _log.info(
                                "etcd at %s: %s; authenticating again", endpoint.configured, details
                            )
                        retried = True
                        continue
                    if code in _TRANSIENT or "too many requests" in details:
                        failures.append(self._describe_failure(endpoint, code, details))
                        break
                    self._set_reachable(reachable=True, index=index)
                    raise self._rejection(what, endpoint, code, details, leases) from error
                self._set_reachable(reachable=True, index=index)
                await self._keep_only(index)
                return result
        self._set_reachable(reachable=False, index=self._current)
        raise SinkUnavailable(
            f"no etcd endpoint answered {what} (each tried once, {self._timeout:g} s each): "
            + "; ".join(failures)
        )

    async def _keep_only(self, index: int) -> None:
        """Concurrent failovers can land on different endpoints: keep only the one in use.

        A call still running on another client retries on a fresh one (`_ClientClosedError`).
        """
        if len(self._clients) < 2 or index != self._current:
            return
        for other, stale in list(self._clients.items()):
            if other != index:
                await self._discard(other, stale)

    async def _attempt(self, client: _Client, call: Callable[[_Client], Awaitable[_T]]) -> _T:
        try:
            async with asyncio.timeout(self._timeout):
                await client.connect()
                return await call(client)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # Not this task's cancellation: grpc.aio raises CancelledError (not an RpcError) in
            # calls whose channel was closed, here by another task after its call failed.
            raise _ClientClosedError(
                "the connection was closed after another call failed"
            ) from None

    def _client(self, index: int) -> _Client:
        if self._closed:
            raise SinkUnavailable("the etcd store is closed")
        client = self._clients.get(index)
        if client is None:
            endpoint = self._endpoints[index]
            client = _Client(
                endpoint,
                self._read_credentials(endpoint),
                self._timeout,
                {"grpc.max_receive_message_length": _MAX_RECEIVE},
            )
            self._clients[index] = client
        return client

    async def _discard(self, index: int, client: _Client) -> None:
        """Close a client that failed, unless another task has replaced it already."""
        if self._clients.get(index) is client:
            del self._clients[index]
        await client.close()

    def _set_reachable(self, *, reachable: bool, index: int) -> None:
        if index != self._current:
            _log.warning(
                "etcd endpoint %s failed; now using %s",
                self._endpoints[self._current].configured,
                self._endpoints[index].configured,
            )
            self._current = index
        if reachable and not self._reachable:
            _log.info("etcd reachable at %s", self._endpoints[index].configured)
        self._reachable = reachable

    def _read_credentials(self, endpoint: _Endpoint) -> _Credentials:
        """Read the TLS and password files now, so that rotated files are used on reconnect."""
        connection = self._connection
        username = connection.username
        password = connection.password
        if password is None and connection.password_file is not None:
            password = _read_file(connection.password_file, "password_file", endpoint).decode(
                errors="replace"
            )
            password = password.strip()
        if (username is None) != (password is None):
            missing = "password or password_file" if password is None else "username"
            raise StoreRejected(
                f"etcd credentials for {endpoint.configured} are incomplete: {missing} missing",
                endpoint.configured,
            )
        tls = None
        if endpoint.tls:
            files = connection.tls
            ca = None if files.ca_file is None else _read_file(files.ca_file, "ca_file", endpoint)
            cert = key = None
            if files.cert_file is not None and files.key_file is not None:
                cert = _read_file(files.cert_file, "cert_file", endpoint)
                key = _read_file(files.key_file, "key_file", endpoint)
            tls = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        return _Credentials(tls, username, password)

    def _describe_failure(self, endpoint: _Endpoint, code: grpc.StatusCode, details: str) -> str:
        text = f"{endpoint.configured} ({endpoint.transport}): {code.name}: {details}"
        lowered = details.lower()
        if endpoint.tls and any(marker in lowered for marker in _TLS_MARKERS):
            files = self._connection.tls
            text += (
                " [TLS handshake failed: a certificate was refused (the server's by our"
                " ca_file, or ours by the server) or the server does not speak TLS;"
                f" ca_file={files.ca_file}, cert_file={files.cert_file}]"
            )
        elif not endpoint.tls and "socket closed" in lowered:
            text += " [the server closed a plaintext connection: does it require TLS?]"
        return text

    def _rejection(  # noqa: PLR0911 - one return per row of the error table
        self,
        what: str,
        endpoint: _Endpoint,
        code: grpc.StatusCode,
        details: str,
        leases: Iterable[int | None],
    ) -> Exception:
        where = endpoint.configured
        user = self._connection.username
        if _LEASE_NOT_FOUND in details:
            used = sorted({lease for lease in leases if lease})
            return LeaseNotFound(
                f"{what} at {where}: a lease it uses is gone ({details}); "
                f"leases used: {', '.join(f'{lease:x}' for lease in used) or 'none'}",
                used,
                where,
            )
        if "database space exceeded" in details:
            # The NOSPACE alarm stops writes on every member until an operator compacts and
            # defragments: the caller keeps its data and retries later.
            return SinkUnavailable(f"etcd at {where} refused {what}: {details} (NOSPACE alarm)")
        if _auth_failed(code, details):
            return StoreRejected(
                f"etcd at {where}: authentication failed for user {user!r}: {details}", where
            )
        if "user name is empty" in details:
            return StoreRejected(
                f"etcd at {where} requires authentication, and no username is configured "
                f"({details})",
                where,
            )
        if code == _Code.PERMISSION_DENIED:
            return StoreRejected(
                f"etcd at {where}: permission denied for user {user!r} on {what}: {details}",
                where,
            )
        if code == _Code.RESOURCE_EXHAUSTED and "larger than max" in details:
            return StoreRejected(f"etcd at {where}: {what} request is too large: {details}", where)
        return StoreRejected(f"etcd at {where} rejected {what}: {code.name}: {details}", where)


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) every key starting with `prefix` (etcd's rule)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    # Empty, or all 0xff: every key from `prefix` on.
    return b"\0"


def _put(put: Put) -> Any:
    return rpc.PutRequest(key=put.key, value=put.value, lease=put.lease or 0)


def _status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details behind an error from grpc or aetcd."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or ""
    if isinstance(error, TimeoutError):
        return _Code.DEADLINE_EXCEEDED, "no answer in time"
    if isinstance(error, _ClientClosedError | grpc.aio.UsageError):
        return _Code.CANCELLED, str(error)
    cause = error.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.code(), cause.details() or ""
    for kind, code in _AETCD_CODES:
        if isinstance(error, kind):
            return code, str(error)
    return _Code.UNKNOWN, str(error) or type(error).__name__


def _auth_failed(code: grpc.StatusCode, details: str) -> bool:
    return code == _Code.UNAUTHENTICATED or "authentication failed" in details


def _stale_token(code: grpc.StatusCode, details: str) -> bool:
    return code in {_Code.UNAUTHENTICATED, _Code.INVALID_ARGUMENT} and any(
        text in details for text in _STALE_TOKEN
    )


def _read_file(path: Path, setting: str, endpoint: _Endpoint) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise StoreRejected(
            f"cannot read {setting} {path} for etcd at {endpoint.configured}: "
            f"{error.strerror or error}",
            endpoint.configured,
        ) from error
