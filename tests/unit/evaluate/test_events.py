from __future__ import annotations

from agent.evaluate.events import RECENT, EventLog
from agent.model import ResourceType
from agent.store.keys import KeyMaker

S = 1_000_000_000


def test_the_log_counts_each_resources_events_and_keeps_the_newest() -> None:
    keys = KeyMaker("n1")
    log = EventLog()
    records = [
        keys.event(
            ResourceType.SCENARIO,
            "s1",
            event_type="state_changed",
            severity="info",
            message=f"change {i}",
            ts_ns=(i + 1) * S,
        )
        for i in range(RECENT + 2)
    ]
    records.append(
        keys.event(ResourceType.MODEL, "s1", event_type="oom", severity="warning", message="m")
    )
    records.append(keys.status(ResourceType.SCENARIO, "s1", {"currentState": "x"}))
    log.observe(records)
    total, recent = log.of("scenario", "s1")
    assert total == RECENT + 2
    assert [e.message for e in recent] == [f"change {i}" for i in range(RECENT + 1, 1, -1)]
    assert recent[0].at == "1970-01-01T00:00:07.000000000Z"
    assert log.of("model", "s1")[0] == 1
    assert log.of("package", "s1") == (0, ())
