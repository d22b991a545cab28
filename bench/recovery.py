"""Recovery: time from a container's death to running again, beside `podman start` alone.

Prints one JSON line. `.venv/bin/python bench/recovery.py [--crashes 20]` (root: it runs its own
Podman, etcd and agent in a temp dir). A model's container crashes on its own (exit 3, after a
random 1-2 s so that deaths do not line up with the agent's collections); the agent restarts it
after a 0.2 s backoff (its policy: `max_restarts` high enough, the window short). The time is
from podman's FinishedAt of each run to the next StartedAt, both as podman recorded them;
`podman_start_s` is the same container started by `podman start` alone in the same run (the
floor: what any restart costs here). The backoff is reported with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.clock import parse_rfc3339  # noqa: E402
from tests.support.agentproc import AgentProcess, live_overrides  # noqa: E402
from tests.support.services import EtcdServer, PodmanService, find_binary  # noqa: E402

BACKOFF_S = 0.2


def times(podman: PodmanService, name: str) -> tuple[float, float]:
    """(StartedAt, FinishedAt) of the container's latest run, in seconds."""
    state = json.loads(podman.podman("inspect", "--format", "{{json .State}}", name).stdout)
    return parse_rfc3339(state["StartedAt"]) / 1e9, parse_rfc3339(state["FinishedAt"]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=20)
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-recovery-")))
        podman = stack.enter_context(PodmanService(tmp / "p", busybox=find_binary("busybox")))
        etcd = stack.enter_context(EtcdServer(tmp / "etcd"))
        policy = {"max_restarts": 1000, "window": "1h", "backoff": f"{BACKOFF_S}s"}
        overrides = live_overrides(
            etcd.endpoint,
            tmp,
            resource_monitoring__container__socket=str(podman.socket),
            resource_monitoring__container__collection_interval="250ms",
            recovery={
                "enabled": True,
                **policy,
                "backoff_cap": f"{BACKOFF_S}s",
                "models": [{"model": "vision-system", "allow_asil": True, "enabled": True, **policy,
                            "backoff_cap": f"{BACKOFF_S}s"}],
            },
        )  # fmt: skip
        agent = AgentProcess(tmp / "agent", overrides).start()
        stack.callback(agent.kill)
        agent.wait_for_log("ready in", timeout=30)
        name = "bench-vision"
        podman.run_container(
            name,
            "--label=piccolo.io/model=vision-system",
            command=["sh", "-c", "sleep 1.$((RANDOM % 9)); exit 3"],
        )
        gaps: list[float] = []
        seen = 0
        deadline = time.monotonic() + args.crashes * 10
        last_finished = 0.0
        while len(gaps) < args.crashes and time.monotonic() < deadline:
            time.sleep(0.2)
            started, finished = times(podman, name)
            if finished > last_finished and started > finished:
                gaps.append(started - finished)
                last_finished = finished
            seen += 1
        agent.kill()
        floors = []
        podman.podman("rm", "-f", name)
        podman.run_container("bench-floor", command=["sh", "-c", "exit 0"])
        for _ in range(args.crashes):
            time.sleep(0.3)
            began = time.monotonic()
            podman.podman("start", "bench-floor")
            floors.append(time.monotonic() - began)
    gaps.sort()
    print(
        json.dumps(
            {
                "crashes": len(gaps),
                "backoff_s": BACKOFF_S,
                "restart_s_p50": round(statistics.median(gaps), 3) if gaps else None,
                "restart_s_max": round(max(gaps), 3) if gaps else None,
                "podman_start_s_p50": round(statistics.median(floors), 3),
                "podman_start_s_max": round(max(floors), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
