"""The agent on a full disk: its state directory on a small real filesystem (tmpfs), etcd away.

Runs `tests.support.diskfull.disk_full_scenario`: N state reports (each a transition, an
append-only record) into an agent whose buffer fills the filesystem to its reserve; a stop; a
restart with the filesystem filled to the last byte by another file; the file removed (space
returns) and etcd started. Prints one JSON line: reports sent, transitions that reached etcd,
records dropped by severity (from the agent's own burst lines), free space left at full, whether
the restart quarantined anything, seconds until the agent wrote again after space returned, and
seconds until etcd had the backlog. Needs root (mount). Run from the repo root:
`.venv/bin/python bench/diskfull.py [--size-mib 8] [--reports 30000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.diskfull import disk_full_scenario
from tests.support.services import EtcdServer


def main(size_mib: int, reports: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pcl-") as short, tempfile.TemporaryDirectory() as t:
        work = Path(t)
        fs = work / "fs"
        fs.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(fs)], check=True
        )
        try:
            with EtcdServer(work / "etcd") as etcd:
                overrides = {
                    "data_storage.configuration.endpoints": [etcd.endpoint],
                    "mqtt.enabled": False,
                    "ingest.socket": f"{short}/ingest.sock",
                    "resource_monitoring.container.socket": f"{short}/no-podman.sock",
                }
                run = asyncio.run(disk_full_scenario(work, fs, etcd, overrides, reports))
        finally:
            subprocess.run(["umount", "-l", str(fs)], check=False)
    result = asdict(run)
    result["dropped"] = dict(run.dropped)
    result["filesystem_mib"] = size_mib
    result["unaccounted"] = max(
        0, run.reports - run.transitions_arrived - run.dropped.get("info", 0)
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--reports", type=int, default=30_000)
    args = parser.parse_args()
    print(json.dumps(main(args.size_mib, args.reports)))
