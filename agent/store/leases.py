"""Shared retention leases: one lease per retention class per time window, never one per key.

A class with retention R is cut into windows of W = clamp(R / 10, 1 s, 1 h). The lease of a window
is granted when its first key is written, with TTL = R + W, and reused by every key of that class
written in the window; it is never refreshed. So every key lives at least R and at most R + W, and a
30-day class costs about 720 leases over its retention instead of one per key (the Kubernetes API
server keeps events the same way). A lease etcd no longer knows (`LeaseNotFound`) is forgotten and
re-granted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.model import RetentionClass

MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 3600.0


def window_s(retention_s: float) -> float:
    return min(MAX_WINDOW_S, max(MIN_WINDOW_S, retention_s / 10))


def ttl_s(retention_s: float) -> int:
    return math.ceil(retention_s + window_s(retention_s))


@dataclass(frozen=True, slots=True)
class _Lease:
    id: int
    window_end: float


class Leases:
    def __init__(
        self,
        retention_s: dict[RetentionClass, float],
        grant: Callable[[int], Awaitable[int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retention = retention_s
        self._grant = grant
        self._clock = clock
        self._current: dict[RetentionClass, _Lease] = {}
        self.granted = 0

    async def lease_for(self, retention: RetentionClass) -> int:
        now = self._clock()
        current = self._current.get(retention)
        if current is not None and now < current.window_end:
            return current.id
        seconds = self._retention[retention]
        lease = _Lease(await self._grant(ttl_s(seconds)), now + window_s(seconds))
        self._current[retention] = lease
        self.granted += 1
        return lease.id

    def forget(self) -> None:
        """etcd lost a lease (restore, or an expired one): grant new ones on next use."""
        self._current.clear()
