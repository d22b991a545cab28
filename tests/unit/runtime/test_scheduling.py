"""The event loop thread's scheduling, tried in a child process (the test runner stays as it is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.seed import REPO

CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from agent.runtime.scheduling import raise_loop_priority
    if len(sys.argv) > 2 and os.geteuid() == 0:
        os.setuid(65534)  # nobody: no CAP_SYS_NICE
    result = raise_loop_priority(int(sys.argv[1]))
    seen = {}
    def worker():
        seen["thread"] = os.sched_getscheduler(0)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    print(json.dumps({"policy": result.policy, "priority": result.priority,
                      "changed": result.changed, "main": os.sched_getscheduler(0),
                      "thread": seen["thread"]}))
    """
)


def child(priority: int, *, unprivileged: bool = False) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(priority), *(["drop"] if unprivileged else [])],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=30,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
def test_the_loop_thread_goes_fifo_and_the_threads_it_starts_inherit_it() -> None:
    result = child(1)
    assert result["changed"] is True
    assert result["policy"] == "fifo"
    assert result["priority"] == 1
    assert result["main"] == os.SCHED_FIFO
    assert result["thread"] == os.SCHED_FIFO


def test_priority_zero_leaves_the_scheduling_alone() -> None:
    result = child(0)
    assert result["changed"] is False
    assert result["main"] == os.SCHED_OTHER


def test_without_the_privilege_it_says_so_and_runs_on() -> None:
    result = child(1, unprivileged=True)
    assert result["changed"] is False
    assert result["main"] == os.SCHED_OTHER
