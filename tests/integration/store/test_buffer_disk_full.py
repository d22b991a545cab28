"""The buffer on a real, small filesystem (tmpfs): a full disk is a state, not a crash."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.model import Record, Severity
from agent.store.buffer import Buffer
from tests.support.diskfull import fill

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MiB = 2**20


def records(start: int, count: int, severity: Severity = Severity.SAMPLE) -> list[Record]:
    return [
        Record(f"/k/{i:07}", b"x" * 200, "metrics", severity, upsert=False, created_ns=i)
        for i in range(start, start + count)
    ]


def test_the_buffer_fills_the_disk_only_to_its_reserve_and_counts_every_drop(
    small_fs: Callable[[int], Path],
) -> None:
    fs = small_fs(4 * MiB)
    buf = Buffer(fs / "buffer.sqlite3", max_bytes=10**9, min_free_bytes=512 * 1024)
    buf.open()
    produced = 0
    for batch in range(200):
        buf.put(records(produced, 100, Severity.SAMPLE if batch % 10 else Severity.WARNING))
        produced += 100
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    assert free >= 64 * 1024, "the disk was filled"
    # The reserve is kept as free space on the filesystem or free pages inside the file (which
    # SQLite writes into without growing it).
    pages = buf._conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert free + pages * 4096 >= 0.9 * 512 * 1024, "the reserve was not kept"
    assert buf.stats.drop_reasons["disk_full"] > 0
    assert set(buf.stats.drop_reasons) == {"disk_full"}
    assert buf.stats.depth + buf.stats.dropped == produced
    # The same severity rule as a full buffer: samples go first, warnings stay.
    kept = buf.take(100_000, 10**9)
    assert len(kept) == buf.stats.depth
    assert sum(p.record.severity == Severity.WARNING for p in kept) == 2000
    # Acknowledging still works on the full disk, and frees room for new records.
    buf.ack([p.seq for p in kept[:5000]])
    before = dict(buf.stats.drop_reasons)
    dropped = buf.put(records(produced, 100))
    assert dropped == 0, (before, buf.stats.drop_reasons, buf.limit(), os.statvfs(fs))
    buf.close()


def test_a_disk_filled_by_someone_else_drops_writes_until_space_returns(
    small_fs: Callable[[int], Path],
) -> None:
    fs = small_fs(4 * MiB)
    buf = Buffer(fs / "buffer.sqlite3", max_bytes=10**9, min_free_bytes=64 * 1024)
    buf.open()
    buf.put(records(0, 100))
    filler = fill(fs)
    produced = 100
    for _ in range(20):
        buf.put(records(produced, 100))  # never raises
        produced += 100
    buf.outbox_put([])  # nothing to do: fine
    assert buf.stats.depth + buf.stats.dropped == produced
    assert buf.stats.drop_reasons["disk_full"] + buf.stats.drop_reasons["write_error"] >= 1900
    filler.unlink()
    assert buf.put(records(produced, 100)) == 0
    assert buf.stats.depth == 200
    buf.close()


def test_a_restart_on_a_full_disk_keeps_the_intact_buffer(small_fs: Callable[[int], Path]) -> None:
    fs = small_fs(4 * MiB)
    path = fs / "buffer.sqlite3"
    buf = Buffer(path, max_bytes=10**9, min_free_bytes=64 * 1024)
    buf.open()
    buf.put(records(0, 1000))
    buf.close()
    filler = fill(fs)
    again = Buffer(path, max_bytes=10**9, min_free_bytes=64 * 1024)
    again.open()
    assert again.stats.quarantined == 0
    assert not [p for p in fs.iterdir() if ".corrupt-" in p.name]
    assert len(again.take(10_000, 10**9)) == 1000
    again.put(records(1000, 10))  # dropped and counted, not raised
    filler.unlink()
    again.put(records(2000, 10))
    assert again.stats.depth + again.stats.dropped == 1020
    assert again.stats.depth >= 1010
    again.close()
