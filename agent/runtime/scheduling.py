"""The agent's CPU scheduling: above the node's ordinary work, below the RT tasks it supervises.

The agent's event loop thread reads the ingest socket, supervises, and hands alerts to MQTT. At
SCHED_OTHER it shares a busy core with every ordinary process, and on the 2-core test machines a
SCHED_OTHER busy loop per core kept it from reading the socket for up to 200 ms at a time: the
socket queue (`net.unix.max_dgram_qlen` + 1 datagrams) overflowed, senders dropped reports, and
every dropped `end` became a hang-up (bench/timing.py, `supervision.loaded`). Measured there:

    agent scheduling                          ends refused by the socket, 10 s, 4 tasks, loaded
    SCHED_OTHER, nice 0                       690
    SCHED_OTHER, nice -10                     21
    SCHED_FIFO 1, event loop thread only      0-3 per run (GIL: a worker thread holding it was
                                              preempted by a busy loop, and the loop waited)
    SCHED_FIFO 1, every thread                0 in 5 runs

A shorter GIL switch interval (0.5 ms) made it worse for alert latency (loaded p99 21-32 ms
against 7-10 ms): more hand-overs to threads that ordinary work could preempt. In the full bench
(four SCHED_FIFO tasks, qlen 10) the agent at SCHED_OTHER counted 4 false misses quiet and 18-19
loaded (every one an end the full socket refused); at SCHED_FIFO 1, none. The price: with 1,000
background reports a second, the alert path's p50 rose from 1.9-2.2 to 2.6-3.1 ms (the broker and
the subscriber, ordinary processes, wait while the agent works), its p99 stayed 4.5-5.5 ms.

So the whole agent runs at SCHED_FIFO, priority `timing.realtime_priority` (default 1: above every
SCHED_OTHER process, below any real-time task it supervises, which the seed gives priorities such
as 90); its threads inherit it. What it does at that priority is bounded work (about 3 % of a core
idle, 10 % supervising four tasks at 370 activations a second), and the kernel's RT throttling
(`kernel.sched_rt_runtime_us`, 95 % by default) bounds what a runaway loop could take.

Under systemd the unit sets the same policy (`CPUSchedulingPolicy=fifo`,
`CPUSchedulingPriority=1`), since the agent itself holds no capability there; run by hand as root
the agent sets it itself; without the privilege it says so and runs as it is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

_log = logging.getLogger(__name__)

_REALTIME = frozenset({os.SCHED_FIFO, os.SCHED_RR})


@dataclass(frozen=True, slots=True)
class Scheduling:
    policy: str
    priority: int
    changed: bool


def _describe(policy: int) -> str:
    base = policy & ~os.SCHED_RESET_ON_FORK
    name = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}.get(base, str(base))
    return f"{name}+reset-on-fork" if policy & os.SCHED_RESET_ON_FORK else name


def raise_loop_priority(priority: int) -> Scheduling:
    """Put the calling thread at SCHED_FIFO `priority`, unless it already runs at a real-time
    policy (set by systemd) or `priority` is 0. Call it before any thread starts: threads inherit
    the policy of the thread that starts them."""
    current = os.sched_getscheduler(0)
    current_priority = os.sched_getparam(0).sched_priority
    if priority == 0 or (current & ~os.SCHED_RESET_ON_FORK) in _REALTIME:
        return Scheduling(_describe(current), current_priority, changed=False)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        _log.warning(
            "the event loop runs at normal priority (SCHED_FIFO %d refused: %s): busy cores can "
            "delay supervision and fill the ingest socket; run under the unit "
            "(CPUSchedulingPolicy=fifo) or grant CAP_SYS_NICE",
            priority,
            exc.strerror,
        )
        return Scheduling(_describe(current), current_priority, changed=False)
    return Scheduling(_describe(os.sched_getscheduler(0)), priority, changed=True)
