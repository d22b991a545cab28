"""The whole agent with its state directory on an 8 MiB filesystem and etcd away: it stays up,
counts what it drops, survives a restart on a full disk, and continues by itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.agentproc import live_overrides
from tests.support.diskfull import disk_full_scenario
from tests.support.services import EtcdServer

pytestmark = pytest.mark.integration

MiB = 2**20


async def test_a_full_disk_is_survived_counted_and_left_behind_by_itself(
    tmp_path: Path, small_fs: Callable[[int], Path], etcd: EtcdServer, socket_dir: Path
) -> None:
    fs = small_fs(8 * MiB)
    overrides = live_overrides(etcd.endpoint, socket_dir)
    run = await disk_full_scenario(tmp_path, fs, etcd, overrides, reports=30_000)
    assert run.first_exit == 0, "the agent stayed up on the full disk and stopped cleanly"
    assert not run.restart_quarantined, "an intact buffer on a full disk is not corruption"
    assert run.free_bytes_at_full > 0, "the buffer left its reserve"
    assert run.continue_s is not None
    assert run.continue_s < 5
    # Nothing lost uncounted: every transition arrived or was counted among the dropped
    # records of its severity (info; other info records count there too), none invented.
    assert run.transitions_arrived <= run.reports
    assert run.transitions_arrived + run.dropped["info"] >= run.reports
    # The buffer was really full: samples went first, and some transitions had to go too.
    assert run.dropped["sample"] > 0
