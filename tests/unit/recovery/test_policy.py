from __future__ import annotations

from agent.config import RecoveryPolicy
from agent.recovery.policy import CrashLoop

POLICY = RecoveryPolicy.model_validate(
    {"enabled": True, "max_restarts": 3, "window": "60s", "backoff": "1s", "backoff_cap": "3s"}
)


def test_the_backoff_doubles_to_its_cap_and_the_loop_gives_up_after_max_restarts() -> None:
    loop = CrashLoop()
    delays = []
    now = 0.0
    for _ in range(3):
        decision = loop.crashed(now, POLICY)
        assert decision.action == "restart"
        delays.append(decision.delay_s)
        now += decision.delay_s
        loop.restarted(now, POLICY)
        now += 1.0
    assert delays == [1.0, 2.0, 3.0]  # doubled, capped at 3 s
    assert loop.crashed(now, POLICY).action == "give_up"
    assert loop.crashed(now + 1, POLICY).action == "give_up"  # it stays given up


def test_a_clean_window_forgives_and_old_restarts_leave_the_window() -> None:
    loop = CrashLoop()
    loop.crashed(0.0, POLICY)
    loop.restarted(1.0, POLICY)
    assert not loop.running(2.0, POLICY)
    assert loop.running(62.0, POLICY)  # ran cleanly for the window
    decision = loop.crashed(70.0, POLICY)
    assert (decision.action, decision.delay_s, decision.attempt) == ("restart", 1.0, 1)
    # Restarts older than the window do not count towards max_restarts.
    old = CrashLoop()
    for t in (0.0, 1.0, 2.0):
        old.crashed(t, POLICY)
        old.restarted(t, POLICY)
    assert old.crashed(100.0, POLICY).action == "restart"


def test_no_restarts_allowed_gives_up_at_once() -> None:
    none = RecoveryPolicy.model_validate({"enabled": True, "max_restarts": 0})
    assert CrashLoop().crashed(0.0, none).action == "give_up"
