"""Pipeline progress: the watchdog is fed only while every registered stage keeps ticking."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Beat:
    max_gap_s: float
    last: float
    ticks: int = 0


class Progress:
    """Each pipeline stage ticks when it completes work; `stalled()` names the late ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, _Beat] = {}

    def register(self, name: str, max_gap_s: float) -> object:
        """Expect `name` to tick at least every `max_gap_s` seconds from now on.

        Returns a token for `unregister`: a stage that ends after its successor of the same name
        registered must not take the successor's registration with it.
        """
        beat = _Beat(max_gap_s, self._clock())
        self._beats[name] = beat
        return beat

    def unregister(self, name: str, token: object | None = None) -> None:
        """Stop expecting `name`; with a token, only if that registration is still the current."""
        if token is None or self._beats.get(name) is token:
            self._beats.pop(name, None)

    def tick(self, name: str) -> None:
        beat = self._beats.get(name)
        if beat is not None:
            beat.last = self._clock()
            beat.ticks += 1

    def ticks(self, name: str) -> int:
        beat = self._beats.get(name)
        return beat.ticks if beat else 0

    def stalled(self) -> list[str]:
        now = self._clock()
        return sorted(n for n, b in self._beats.items() if now - b.last > b.max_gap_s)
