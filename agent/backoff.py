"""The one backoff helper: capped exponential delays with full jitter."""

from __future__ import annotations

import random


class Backoff:
    """`next()` gives the delay before the next attempt; `reset()` after a success."""

    def __init__(
        self, base_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0
        # Jitter only spreads retries of many agents over time; it needs no cryptographic quality.
        self._rng = rng or random.Random()  # noqa: S311

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 32)
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempts = 0
