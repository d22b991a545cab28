"""Pipeline progress: the watchdog is fed only while every registered stage keeps ticking."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger(__name__)


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
        self.ready = False
        """Set once start-up is done (systemd was told READY)."""

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


async def feed_watchdog(
    progress: Progress,
    timeout_s: float | None,
    pet: Callable[[], object],
    status: Callable[[str], object],
    status_line: Callable[[], str],
) -> None:
    """Feed systemd's watchdog at half its timeout, but only while the pipeline progresses.

    A blocked event loop cannot run this task, so no pet is sent; a stalled stage (a runner that
    stopped ticking) withholds the pet on purpose, so systemd restarts the agent. The status line
    goes out whenever it changes.
    """
    period = timeout_s / 2 if timeout_s else 5.0
    withheld = False
    last_status = ""
    while True:
        await asyncio.sleep(period)
        stalled = progress.stalled()
        if stalled:
            if not withheld:
                _log.error("pipeline stalled (%s): withholding watchdog", ", ".join(stalled))
            withheld = True
        else:
            if withheld:
                _log.info("pipeline progressing again: feeding watchdog")
            withheld = False
            if timeout_s:
                pet()
        line = status_line()
        if line != last_status:
            status(line)
            last_status = line
