from __future__ import annotations

from agent.health import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stalled_names_only_the_late_stages() -> None:
    clock = FakeClock()
    progress = Progress(clock)
    progress.register("node", 5.0)
    progress.register("ingest", 1.0)
    clock.now += 2.0
    progress.tick("node")
    assert progress.stalled() == ["ingest"]
    progress.tick("ingest")
    assert progress.stalled() == []
    clock.now += 5.5
    assert progress.stalled() == ["ingest", "node"]
    progress.unregister("ingest")
    assert progress.stalled() == ["node"]
    assert progress.ticks("node") == 1
    assert progress.ticks("unknown") == 0
