"""The restart policy of one model, as a crash loop is handled by Kubernetes: pure, no I/O.

A crash asks for a restart after the current backoff (`backoff`, doubled after each restart up
to `backoff_cap`); more than `max_restarts` restarts within `window` and the policy gives up.
A model that ran cleanly for `window` since its last start gets its backoff reset and its
restart count cleared (its alert episode ends then).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.config import RecoveryPolicy


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["restart", "give_up"]
    delay_s: float = 0.0
    attempt: int = 0
    """The number of this restart within the window (1 for the first)."""


@dataclass(slots=True)
class CrashLoop:
    """What the policy remembers of one model."""

    restarts: list[float] = field(default_factory=list)
    """When it was restarted (monotonic seconds), within the window."""
    delay_s: float | None = None
    """The next backoff; None: the first."""
    running_since: float | None = None
    given_up: bool = False

    def crashed(self, now: float, policy: RecoveryPolicy) -> Decision:
        """The model failed at `now`: restart it (after a delay) or give up."""
        self.running_since = None
        self.restarts = [t for t in self.restarts if now - t < policy.window]
        if self.given_up or len(self.restarts) >= policy.max_restarts:
            self.given_up = True
            return Decision("give_up", attempt=len(self.restarts))
        delay = policy.backoff if self.delay_s is None else self.delay_s
        return Decision("restart", delay, len(self.restarts) + 1)

    def restarted(self, now: float, policy: RecoveryPolicy) -> None:
        self.restarts.append(now)
        current = policy.backoff if self.delay_s is None else self.delay_s
        self.delay_s = min(current * 2, policy.backoff_cap)

    def running(self, now: float, policy: RecoveryPolicy) -> bool:
        """The model runs at `now`; True once it ran cleanly for a window (all is forgiven)."""
        if self.running_since is None:
            self.running_since = now
        if now - self.running_since >= policy.window and (self.restarts or self.given_up):
            self.restarts.clear()
            self.delay_s = None
            self.given_up = False
            return True
        return False
