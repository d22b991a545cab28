"""Start-up time: process start to READY=1 on the notify socket, beside `python -c pass`.

Prints one JSON line: {"ready_s_median": ..., "python_floor_s_median": ..., "runs": N, ...}.
Run it with the project's venv: `.venv/bin/python bench/startup.py [--runs 10]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def time_to_ready(config: Path, work: Path, index: int) -> float:
    notify = work / f"notify-{index}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30.0)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    command = [
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        "--state-dir",
        str(work / f"state-{index}"),
        "--runtime-dir",
        str(work / f"run-{index}"),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        while True:
            message = sock.recv(4096).decode()
            if "READY=1" in message.splitlines():
                return time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        sock.close()


def time_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "agent.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ready = []
        floor = []
        for index in range(args.runs):
            # Interleaved, so that machine noise hits both series alike.
            floor.append(time_floor())
            ready.append(time_to_ready(args.config, Path(tmp), index))
    result = {
        "ready_s_median": round(statistics.median(ready), 4),
        "python_floor_s_median": round(statistics.median(floor), 4),
        "runs": args.runs,
        "ready_s_max": round(max(ready), 4),
        "ready_over_floor": round(statistics.median(ready) / statistics.median(floor), 2),
        "target_ready_s": 1.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
