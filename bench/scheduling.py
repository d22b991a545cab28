"""How the agent's scheduling policy decides whether reports reach it under load.

The measurement behind `timing.realtime_priority` (docs/timing-supervision.md): the agent with its
own scheduling switched off (`timing.realtime_priority: 0`) and set from outside to each variant
(SCHED_OTHER nice 0; nice -10; SCHED_FIFO 1 for the event loop's thread only; SCHED_FIFO 1 for
every thread, what the agent does itself), then the four real-time tasks of tests.support.workload
(SCHED_FIFO senders) for `--duration` seconds with a SCHED_OTHER busy loop on every CPU. Per
variant: the reports the kernel refused (the socket's queue was full because the agent was not
reading: `send_failures`), and how long a task's end took to leave it (end to `sendto`, p99 and
max, µs). Prints one JSON line. Root (SCHED_FIFO). From the repo root:
`.venv/bin/python bench/scheduling.py [--duration 10]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.agentproc import AgentProcess
from tests.support.workload import (
    BusyLoad,
    four_task_spec,
    start_workload,
    summarize,
    write_manifests,
)

VARIANTS = ("other", "nice-10", "fifo-loop", "fifo-all")


def _apply(variant: str, pid: int) -> None:
    threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    if variant == "nice-10":
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, -10)
    elif variant.startswith("fifo"):
        for tid in [pid] if variant == "fifo-loop" else threads:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))


def measure(variant: str, duration_s: float, *, load: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pcs-") as tmp:
        work = Path(tmp)
        manifests = write_manifests(work / "manifests", "VisionHPC")
        agent = AgentProcess(
            work / "agent",
            {
                "ingest.socket": str(work / "i.sock"),
                "manifests.paths": [str(manifests)],
                "resource_monitoring.container.socket": str(work / "none.sock"),
                "timing.realtime_priority": 0,
                "mqtt.enabled": False,
            },
        )
        agent.start()
        try:
            agent.wait_for_log("ready in", timeout=30)
            if agent.process is None:
                raise RuntimeError("the agent did not start")
            _apply(variant, agent.process.pid)
            spec = four_task_spec(work / "i.sock", task="sched", duration_s=duration_s)
            with BusyLoad() if load else contextlib.nullcontext():
                logs = start_workload(spec, work / "workload").wait(duration_s + 60)
        finally:
            agent.kill()
    summary = summarize(logs)
    refused = sum(sum((s["send_failures"] or {}).values()) for s in summary.values())
    delays = sorted(
        row["end_sent_ns"] - row["end_ns"]
        for log in logs.values()
        for row in log.rows
        if row.get("end_sent_ns")
    )
    return {
        "refused_reports": refused,
        "activations": sum(s["activations"] for s in summary.values()),
        "end_to_send_us_p99": round(delays[int(len(delays) * 0.99)] / 1e3, 1) if delays else None,
        "end_to_send_us_max": round(delays[-1] / 1e3, 1) if delays else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--no-load", action="store_true", help="without the busy loops")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    result: dict[str, Any] = {"duration_s": args.duration, "load": not args.no_load}
    for variant in args.variants.split(","):
        print(f"measuring {variant}", file=sys.stderr)
        result[variant] = measure(variant, args.duration, load=not args.no_load)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
