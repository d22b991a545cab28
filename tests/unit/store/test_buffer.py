from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.model import Record, Severity
from agent.store.buffer import Buffer


def rec(
    key: str,
    value: str = "v",
    *,
    upsert: bool = False,
    severity: Severity = Severity.INFO,
    created_ns: int = 1,
) -> Record:
    return Record(key, value.encode(), "events", severity, upsert, created_ns)


@pytest.fixture
def buffer(tmp_path: Path) -> Buffer:
    buf = Buffer(tmp_path / "buffer.sqlite3", max_bytes=1_000_000)
    buf.open()
    return buf


def keys(buf: Buffer) -> list[str]:
    return [p.record.key for p in buf.take(10_000, 10**9)]


def test_records_come_out_in_order_and_leave_only_when_acked(buffer: Buffer) -> None:
    buffer.put([rec("a"), rec("b")])
    buffer.put([rec("c")])
    batch = buffer.take(2, 10**6)
    assert [p.record.key for p in batch] == ["a", "b"]
    assert keys(buffer) == ["a", "b", "c"], "taking is not removing"
    buffer.ack([p.seq for p in batch])
    assert keys(buffer) == ["c"]
    assert (buffer.stats.depth, buffer.stats.acked) == (1, 2)


def test_latest_value_keys_keep_only_the_newest_pending_value(buffer: Buffer) -> None:
    buffer.put([rec("m", "1", upsert=True), rec("e1"), rec("m", "2", upsert=True)])
    (pending_m,) = [p for p in buffer.take(10, 10**6) if p.record.key == "m"]
    assert pending_m.record.value == b"2"
    buffer.put([rec("m", "3", upsert=True)])
    # Acknowledging the batch that carried "2" must not delete "3", which came meanwhile.
    buffer.ack([pending_m.seq])
    values = {p.record.key: p.record.value for p in buffer.take(10, 10**6)}
    assert values == {"e1": b"v", "m": b"3"}
    assert buffer.stats.depth == 2


def test_appended_records_with_the_same_key_are_all_kept(buffer: Buffer) -> None:
    buffer.put([rec("e"), rec("e")])
    assert keys(buffer) == ["e", "e"]


def test_take_respects_the_byte_limit_but_always_gives_one(buffer: Buffer) -> None:
    buffer.put([rec(f"k{i}", "x" * 100) for i in range(5)])
    assert len(buffer.take(10, 250)) == 2
    assert len(buffer.take(10, 10)) == 1


def test_a_full_buffer_drops_the_oldest_lowest_severity_first(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=100)
    buf.open()
    buf.put([rec("crit1", "x" * 15, severity=Severity.CRITICAL)])  # 20 bytes each
    buf.put([rec("samp1", "x" * 15, severity=Severity.SAMPLE)])
    buf.put([rec("info1", "x" * 15, severity=Severity.INFO)])
    buf.put([rec("samp2", "x" * 15, severity=Severity.SAMPLE)])
    buf.put([rec("info2", "x" * 15, severity=Severity.INFO)])
    assert buf.stats.bytes == 100
    buf.put([rec("crit2", "x" * 15, severity=Severity.CRITICAL)])
    buf.put([rec("crit3", "x" * 15, severity=Severity.CRITICAL)])
    buf.put([rec("crit4", "x" * 15, severity=Severity.CRITICAL)])
    assert keys(buf) == ["crit1", "info2", "crit2", "crit3", "crit4"]
    assert buf.stats.drops == {Severity.SAMPLE: 2, Severity.INFO: 1}
    assert buf.stats.dropped == 3
    assert buf.stats.bytes <= 100


def test_what_of_a_batch_cannot_fit_is_dropped_highest_severity_kept(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=15)
    buf.open()
    dropped = buf.put(
        [rec("big", "x" * 40), rec("a", "x" * 10, severity=Severity.SAMPLE), rec("b", "y" * 10)]
    )
    assert dropped == 2
    assert keys(buf) == ["b"]
    assert buf.stats.drop_reasons == {"buffer_full": 2}
    assert buf.stats.drops == {Severity.INFO: 1, Severity.SAMPLE: 1}
    assert buf.stats.bytes <= 15


def test_behaves_like_a_simple_model_under_random_operations(buffer: Buffer) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible operation sequence, not a secret
    model: dict[int, Record] = {}  # seq -> record, as the buffer should hold them
    for step in range(600):
        action = rng.random()
        if action < 0.6:
            batch = [
                rec(f"m{rng.randrange(5)}", str(step), upsert=True)
                if rng.random() < 0.5
                else rec(f"e{step}-{i}", str(step))
                for i in range(rng.randrange(1, 4))
            ]
            buffer.put(batch)
            newest = {r.key: r for r in batch if r.upsert}
            for seq, record in list(model.items()):
                if record.upsert and record.key in newest:
                    del model[seq]
            # Sequence numbers are the buffer's; the model compares contents in order.
            base = max(model, default=0) + 1000
            written = [r for r in batch if not r.upsert] + list(newest.values())
            for offset, record in enumerate(written):
                model[base + offset] = record
        else:
            taken = buffer.take(rng.randrange(1, 6), 10**6)
            acked = taken[: rng.randrange(len(taken) + 1)]
            buffer.ack([p.seq for p in acked])
            for pending in acked:
                match = next(s for s, r in model.items() if r == pending.record)
                del model[match]
        held = buffer.take(10_000, 10**9)
        assert sorted((p.record.key, p.record.value) for p in held) == sorted(
            (r.key, r.value) for r in model.values()
        )
        assert buffer.stats.depth == len(model)
        assert buffer.stats.bytes == sum(r.size for r in model.values())


def test_records_survive_a_crash_of_the_process_that_wrote_them(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from agent.store.buffer import Buffer
        from agent.model import Record, Severity
        buf = Buffer(Path({str(path)!r}), 10**7)
        buf.open()
        for i in range(50):
            buf.put([Record(f"k{{i}}", b"v", "events", Severity.INFO, False, i)])
        os.kill(os.getpid(), 9)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=Path.cwd())
    assert result.returncode == -9
    buf = Buffer(path, 10**7)
    buf.open()
    assert buf.stats.depth == 50
    assert buf.stats.quarantined == 0


def test_a_corrupt_file_is_quarantined_and_a_fresh_buffer_starts(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    buf = Buffer(path, 10**6)
    buf.open()
    assert buf.stats.quarantined == 1
    (kind, moved), (salvage, salvaged) = buf.quarantine_reports
    assert (kind, salvage) == ("buffer_corrupt", "buffer_salvaged")
    assert "is damaged" in moved
    assert "buffer.sqlite3.corrupt-" in moved
    # Nothing could be read back: counted as lost, and the file does not keep its space.
    assert "0 records and alerts recovered" in salvaged
    assert buf.stats.lost >= 1
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    buf.put([rec("after")])
    assert keys(buf) == ["after"]


def test_a_database_damaged_inside_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = Buffer(path, 10**7)
    buf.open()
    buf.put([rec(f"key-{i}", "x" * 200) for i in range(500)])
    buf.close()
    data = bytearray(path.read_bytes())
    for offset in range(8192, len(data) - 4096, 4096):
        data[offset : offset + 512] = os.urandom(512)
    path.write_bytes(bytes(data))
    again = Buffer(path, 10**7)
    again.open()
    assert again.stats.quarantined == 1
    # Every page is damaged: nothing could be read back, and that is counted, not forgotten.
    assert again.stats.salvaged == 0
    assert again.stats.lost >= 1
    assert again.stats.depth == 0
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_what_a_damaged_file_still_holds_is_salvaged_and_the_rest_counted(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = Buffer(path, 10**7)
    buf.open()
    buf.put([rec(f"key-{i:03}", "x" * 200) for i in range(500)])
    buf.close()
    data = bytearray(path.read_bytes())
    page = len(data) // 4096 // 2 * 4096  # one page in the middle of the table
    data[page : page + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    again = Buffer(path, 10**7)
    again.open()
    assert again.stats.quarantined == 1
    assert 0 < again.stats.salvaged < 500
    assert again.stats.salvaged + again.stats.lost == 500
    assert again.stats.depth == again.stats.salvaged
    assert keys(again) == [f"key-{i:03}" for i in range(again.stats.salvaged)]
    assert "recovered" in again.quarantine_reports[-1][1]


def test_state_survives_reopen_and_full_sync_works(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = Buffer(path, 10**6, sync="full")
    buf.open()
    buf.save_state("rollups", b"{}")
    buf.save_state("rollups", b'{"a": 1}')
    buf.put([rec("k", upsert=True)])
    buf.close()
    again = Buffer(path, 10**6)
    again.open()
    assert again.load_state("rollups") == b'{"a": 1}'
    assert again.load_state("absent") is None
    assert keys(again) == ["k"]
