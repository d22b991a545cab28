"""Moves records from the local buffer to etcd: batched transactions, shared leases, ack after.

Each round takes the oldest pending records (at most `max_txn_ops`, and under etcd's request size
limit), writes them in one transaction, and only then acknowledges them in the buffer. etcd away:
the records stay, the pusher backs off with jitter and tries again, forever. A batch etcd refuses
for good (too large) is split; a single record it refuses is dropped, counted and logged, so one bad
record never blocks the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.backoff import Backoff
from agent.errors import SinkUnavailable
from agent.store.etcd import LeaseNotFound, Put, StoreRejected
from agent.store.leases import Leases

if TYPE_CHECKING:
    from agent.health import Progress
    from agent.model import RetentionClass
    from agent.store.buffer import AsyncBuffer, Pending
    from agent.store.etcd import EtcdStore

_log = logging.getLogger(__name__)

IDLE_WAKE_S = 30.0
"""With nothing to push, the pusher sleeps until the buffer says records arrived (`changed`);
this is only the safety net of that wait (it was 1 s: a wake and a SQLite read on a worker
thread every second of an idle agent)."""
REQUEST_HEADROOM = 0.8
"""Share of etcd's request size limit that a batch's keys and values may fill."""


@dataclass(slots=True)
class PushStats:
    pushed: int = 0
    transactions: int = 0
    failures: int = 0
    rejected: int = 0
    last_push_ns: int | None = None
    reachable: bool = False


class Pusher:
    name = "pusher"

    def __init__(
        self,
        buffer: AsyncBuffer,
        store: EtcdStore,
        *,
        prefix: str,
        retention_s: dict[RetentionClass, float],
        max_txn_ops: int,
        max_request_bytes: int,
        progress: Progress,
    ) -> None:
        self.stats = PushStats()
        self._buffer = buffer
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._leases = Leases(retention_s, store.grant)
        self._max_ops = max_txn_ops
        self._limit = max_txn_ops
        self._max_bytes = int(max_request_bytes * REQUEST_HEADROOM)
        self._progress = progress
        self._backoff = Backoff()
        self._cursor = 0
        """The highest seq handed to etcd since the last failure: later takes start after it."""
        self._prefetch: asyncio.Future[list[Pending]] | None = None
        self._acks: list[asyncio.Future[None]] = []

    @property
    def leases_granted(self) -> int:
        return self._leases.granted

    async def _puts(self, batch: list[Pending]) -> list[Put]:
        puts = []
        for pending in batch:
            record = pending.record
            lease = await self._leases.lease_for(record.retention) if record.retention else None
            puts.append(Put((self._prefix + record.key).encode(), record.value, lease))
        return puts

    def _take_next(self) -> asyncio.Future[list[Pending]]:
        return asyncio.ensure_future(
            self._buffer.take(self._limit, self._max_bytes, after_seq=self._cursor)
        )

    async def settle(self) -> None:
        """Wait for the acknowledgements still on their way to the buffer."""
        acks, self._acks = self._acks, []
        await asyncio.gather(*acks)

    async def _restart(self) -> None:
        """After a failed round: drop the prefetched batch and take from the oldest record again."""
        if self._prefetch is not None:
            self._prefetch.cancel()
            await asyncio.gather(self._prefetch, return_exceptions=True)
            self._prefetch = None
        await self.settle()
        self._cursor = 0

    async def push_once(self) -> int:
        """Push one batch; returns its size (0: nothing pending). Raises `SinkUnavailable`.

        The next batch is read from the buffer while etcd commits this one, and this one's
        acknowledgement is written while etcd commits the next: the buffer's single worker runs
        them in order, and `after_seq` keeps a batch in flight from being taken twice. Only one
        transaction is in flight at a time, so a newer value never lands before an older one.
        """
        batch = await (self._prefetch or self._take_next())
        self._prefetch = None
        if not batch:
            return 0
        self._cursor = batch[-1].seq
        self._prefetch = self._take_next()
        try:
            await self._store.put_many(await self._puts(batch))
        except LeaseNotFound:
            await self._restart()
            _log.info("etcd no longer knows a retention lease; granting new ones")
            self._leases.forget()
            return await self.push_once()
        except StoreRejected as exc:
            await self._restart()
            return await self._rejected(batch, exc)
        except BaseException:
            await self._restart()
            raise
        self._acks = [a for a in self._acks if not a.done()]
        self._acks.append(asyncio.ensure_future(self._buffer.ack([p.seq for p in batch])))
        self._limit = min(self._max_ops, self._limit * 2)
        self.stats.pushed += len(batch)
        self.stats.transactions += 1
        self.stats.last_push_ns = time.time_ns()
        return len(batch)

    async def _rejected(self, batch: list[Pending], exc: StoreRejected) -> int:
        if len(batch) > 1:
            self._limit = max(1, len(batch) // 2)
            _log.warning("etcd refused a batch of %d (%s); splitting it", len(batch), exc)
            return await self.push_once()
        (pending,) = batch
        self.stats.rejected += 1
        _log.error("etcd refused record %s for good (%s); dropping it", pending.record.key, exc)
        await self._buffer.ack([pending.seq])
        return 1

    async def run(self) -> None:
        self._progress.register(self.name, IDLE_WAKE_S * 3 + self._backoff.cap_s + 30.0)
        try:
            while True:
                self._progress.tick(self.name)
                try:
                    pushed = await self.push_once()
                except SinkUnavailable as exc:
                    self._unreachable(exc)
                    await asyncio.sleep(self._backoff.next())
                    continue
                self._reachable()
                if pushed == 0:
                    self._buffer.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_WAKE_S):
                            await self._buffer.changed.wait()
        finally:
            self._progress.unregister(self.name)

    def _unreachable(self, exc: SinkUnavailable) -> None:
        self.stats.failures += 1
        if self.stats.reachable or self.stats.failures == 1:
            _log.warning("etcd unreachable, buffering locally: %s", exc)
        self.stats.reachable = False

    def _reachable(self) -> None:
        if not self.stats.reachable:
            if self.stats.failures:
                _log.info("etcd reachable again; pushing the buffer")
            self.stats.reachable = True
        self._backoff.reset()

    async def flush(self) -> None:
        """Push until the buffer is empty or etcd is away (the caller bounds the time)."""
        try:
            while await self.push_once():
                pass
        except SinkUnavailable as exc:
            _log.warning("final push stopped, etcd unreachable: %s", exc)
        finally:
            await self._restart()
