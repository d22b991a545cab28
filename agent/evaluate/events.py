"""Events per resource, as this agent wrote them: a scenario's totalEvents, lastEventTime and
recentEvents (seed 7.1).

The recorder hands every batch it accepted to `EventLog.observe`; the log keeps, per resource,
the number of events since the agent started, the time of the newest, and the newest few. It is
memory only: after a restart the counts start again (the events themselves are in etcd).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agent.model import Record

RECENT = 5
"""Events kept per resource for `recentEvents`."""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    type: str
    at: str
    """RFC 3339, as the event says."""
    message: str


@dataclass(slots=True)
class _Tally:
    total: int = 0
    recent: deque[LoggedEvent] = field(default_factory=lambda: deque(maxlen=RECENT))


class EventLog:
    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def observe(self, records: Iterable[Record]) -> None:
        """Count the event records among `records` (keys `{type}/{id}/events/{suffix}`)."""
        for record in records:
            if record.retention != "events":
                continue
            parts = record.key.split("/", 3)
            if len(parts) != 4 or parts[2] != "events":
                continue
            try:
                document = json.loads(record.value)
            except ValueError:
                continue
            if not isinstance(document, dict):
                continue
            tally = self._tallies.setdefault((parts[0], parts[1]), _Tally())
            tally.total += 1
            tally.recent.append(
                LoggedEvent(
                    str(document.get("type", "")),
                    str(document.get("at", "")),
                    str(document.get("message", "")),
                )
            )

    def of(self, resource_type: str, resource_id: str) -> tuple[int, tuple[LoggedEvent, ...]]:
        """(events written since start, the newest first) of one resource."""
        tally = self._tallies.get((resource_type, resource_id))
        if tally is None:
            return 0, ()
        return tally.total, tuple(reversed(tally.recent))
