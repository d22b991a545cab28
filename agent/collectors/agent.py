"""The agent's own health as node metrics: buffer, drops, push lag, etcd reachability, footprint.

This is data the agent exports (STYLE lesson 11), not log noise: a fleet operator sees in etcd
which agents are buffering, dropping, or cut off from the store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psutil

from agent.model import BUFFER_DROP_REASONS, ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent.recorder import RecorderStats
    from agent.store.buffer import BufferStats
    from agent.store.pusher import PushStats


class AgentCollector:
    def __init__(
        self,
        node: str,
        buffer: Callable[[], BufferStats],
        push: Callable[[], PushStats],
        recorder: Callable[[], RecorderStats],
        *,
        extra: Callable[[], list[tuple[str, float | int | bool | str, str]]] | None = None,
    ) -> None:
        self._node = node
        self._buffer = buffer
        self._push = push
        self._recorder = recorder
        self._process = psutil.Process()
        self._extra = extra or list

    def readings(self) -> list[tuple[str, float | int | bool | str, str]]:
        buffer, push, recorder = self._buffer(), self._push(), self._recorder()
        now = time.time_ns()
        oldest = buffer.oldest_created_ns
        lag = 0.0 if oldest is None else max(0.0, (now - oldest) / 1e9)
        since_push = -1.0 if push.last_push_ns is None else (now - push.last_push_ns) / 1e9
        cpu = self._process.cpu_times()
        return [
            ("agent_buffer_depth", buffer.depth, "records"),
            ("agent_buffer_bytes", buffer.bytes, "B"),
            ("agent_buffer_dropped", buffer.dropped, "records"),
            ("agent_buffer_quarantined", buffer.quarantined, "files"),
            ("agent_buffer_salvaged", buffer.salvaged, "records"),
            ("agent_buffer_lost", buffer.lost, "records"),
            ("agent_buffer_unavailable", buffer.unavailable, ""),
            *(
                (f"agent_buffer_dropped_{reason}", buffer.drop_reasons[reason], "records")
                for reason in BUFFER_DROP_REASONS
            ),
            ("agent_push_lag", round(lag, 3), "s"),
            ("agent_since_last_push", round(since_push, 3), "s"),
            ("agent_records_pushed", push.pushed, "records"),
            ("agent_records_rejected", push.rejected, "records"),
            ("agent_etcd_reachable", push.reachable, ""),
            ("agent_recorder_overflow", recorder.overflow, "records"),
            ("agent_rss", round(self._process.memory_info().rss / 2**20, 2), "MB"),
            ("agent_cpu_time", round(cpu.user + cpu.system, 3), "s"),
            *self._extra(),
        ]

    async def collect(self) -> Sequence[Sample]:
        now = time.time_ns()
        return [
            Sample(ResourceType.NODE, self._node, name, value, unit, now)
            for name, value, unit in self.readings()
        ]
