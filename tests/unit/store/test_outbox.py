"""The MQTT outbox in the buffer: order, acknowledgement, its own bound, crashes, old files."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.model import OutboxMessage, Record, Severity
from agent.store.buffer import AsyncBuffer, Buffer


def msg(name: str, severity: Severity = Severity.WARNING, *, retain: bool = False) -> OutboxMessage:
    return OutboxMessage(f"t/{name}", name.encode(), retain, severity, created_ns=7)


def names(buf: Buffer) -> list[str]:
    return [m.payload.decode() for _, m in buf.outbox_take(100_000)]


@pytest.fixture
def buffer(tmp_path: Path) -> Buffer:
    buf = Buffer(tmp_path / "buffer.sqlite3", max_bytes=1_000_000, outbox_max=5)
    buf.open()
    return buf


def test_messages_come_out_oldest_first_and_leave_only_when_acked(buffer: Buffer) -> None:
    first = buffer.outbox_put([msg("a"), msg("b", retain=True)])
    second = buffer.outbox_put([msg("c")])
    assert first[0] < first[1] < second[0], "sequence numbers follow the order of writing"
    batch = buffer.outbox_take(2)
    assert [seq for seq, _ in batch] == first
    assert batch[1][1] == msg("b", retain=True), "a message comes back as it went in"
    assert names(buffer) == ["a", "b", "c"], "taking is not removing"
    buffer.outbox_ack([seq for seq, _ in batch])
    assert names(buffer) == ["c"]
    assert buffer.outbox_depth() == 1
    buffer.outbox_ack([*first, 999_999])  # acknowledged before, or never there: ignored
    assert buffer.outbox_depth() == 1


def test_a_full_outbox_drops_the_oldest_of_the_lowest_severity_first(buffer: Buffer) -> None:
    buffer.outbox_put([msg("crit1", Severity.CRITICAL), msg("warn1"), msg("info1", Severity.INFO)])
    buffer.outbox_put([msg("warn2"), msg("info2", Severity.INFO)])
    buffer.outbox_put([msg("crit2", Severity.CRITICAL)])
    buffer.outbox_put([msg("crit3", Severity.CRITICAL), msg("crit4", Severity.CRITICAL)])
    assert names(buffer) == ["crit1", "warn2", "crit2", "crit3", "crit4"]
    assert buffer.stats.outbox_dropped == 3
    buffer.outbox_put([msg(f"crit{i}", Severity.CRITICAL) for i in range(5, 12)])
    assert names(buffer) == ["crit7", "crit8", "crit9", "crit10", "crit11"], (
        "with only critical messages left, the oldest go; a batch over the bound keeps its newest"
    )
    assert (buffer.outbox_depth(), buffer.stats.outbox_dropped) == (5, 10)


def test_the_outbox_is_bounded_apart_from_the_records(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=100)
    buf.open()
    buf.outbox_put([msg("x" * 500)])
    sample = [
        Record(f"k{i}", b"v" * 40, "events", Severity.SAMPLE, upsert=False, created_ns=i)
        for i in range(3)
    ]
    buf.put(sample[:2])
    buf.put(sample[2:])
    assert buf.stats.dropped == 1, "the records' own bound dropped one of them"
    assert (buf.stats.bytes, buf.outbox_depth()) == (84, 1), (
        "the alert is neither counted nor dropped"
    )


def test_the_outbox_behaves_like_a_bounded_list(buffer: Buffer) -> None:
    rng = random.Random(11)  # noqa: S311 - a reproducible operation sequence, not a secret
    model: list[tuple[int, OutboxMessage]] = []
    for step in range(400):
        if rng.random() < 0.55:
            batch = [
                msg(f"m{step}-{i}", rng.choice(list(Severity))) for i in range(rng.randrange(1, 4))
            ]
            model += zip(buffer.outbox_put(batch), batch, strict=True)
            while len(model) > buffer.outbox_max:
                victim = min(model, key=lambda item: (item[1].severity, item[0]))
                model.remove(victim)
        else:
            taken = buffer.outbox_take(rng.randrange(1, 5))
            assert taken == model[: len(taken)]
            acked = {seq for seq, _ in taken[: rng.randrange(len(taken) + 1)]}
            buffer.outbox_ack(sorted(acked))
            model = [item for item in model if item[0] not in acked]
        assert buffer.outbox_take(100) == model
        assert buffer.outbox_depth() == len(model)


def test_the_outbox_survives_a_crash_of_the_process_that_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from agent.model import OutboxMessage
        from agent.store.buffer import Buffer
        from agent.model import Severity
        buf = Buffer(Path({str(path)!r}), 10**7)
        buf.open()
        for i in range(30):
            buf.outbox_put([OutboxMessage("t", str(i).encode(), False, Severity.CRITICAL, i)])
        os.kill(os.getpid(), 9)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=Path.cwd())
    assert result.returncode == -9
    buf = Buffer(path, 10**7)
    buf.open()
    assert buf.outbox_depth() == 30
    assert [m.payload for _, m in buf.outbox_take(100)] == [str(i).encode() for i in range(30)]


def test_a_file_from_before_the_outbox_gains_it_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
                value BLOB NOT NULL, retention TEXT, severity INTEGER NOT NULL,
                upsert INTEGER NOT NULL, created_ns INTEGER NOT NULL, size INTEGER NOT NULL);
            CREATE TABLE state (name TEXT PRIMARY KEY, value BLOB NOT NULL);
            INSERT INTO records VALUES (1, 'k', x'76', 'events', 2, 0, 1, 2);
            PRAGMA user_version = 1;
            """
        )
    db.close()
    buf = Buffer(path, 10**6)
    buf.open()
    assert (buf.stats.quarantined, buf.stats.depth, buf.outbox_depth()) == (0, 1, 0)
    buf.outbox_put([msg("a")])
    assert names(buf) == ["a"]


def test_a_corrupt_file_takes_its_outbox_along_into_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    path.write_bytes(b"not sqlite" * 500)
    buf = Buffer(path, 10**6)
    buf.open()
    assert (buf.stats.quarantined, buf.outbox_depth()) == (1, 0)
    buf.outbox_put([msg("after")])
    assert names(buf) == ["after"]


async def test_the_async_outbox_wakes_its_reader_after_the_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = AsyncBuffer(Buffer(tmp_path / "b.sqlite3", 10**6, outbox_max=2))
    await buffer.open()
    try:
        assert await buffer.outbox_put([]) == []
        assert not buffer.outbox_changed.is_set(), "nothing written, nobody woken"
        waiter = asyncio.ensure_future(buffer.outbox_changed.wait())
        seqs = await buffer.outbox_put([msg("a")])
        await asyncio.wait_for(waiter, 1.0)
        assert [seq for seq, _ in await buffer.outbox_take(10)] == seqs
        assert not buffer.changed.is_set(), "the pusher's event is not the outbox's"
        with caplog.at_level(logging.WARNING, logger="agent.store.buffer"):
            for name in "bcd":
                await buffer.outbox_put([msg(name)])
            await buffer.outbox_ack([seq for seq, _ in await buffer.outbox_take(10)])
            await buffer.outbox_put([msg("e", Severity.CRITICAL)])
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2, "one warning when dropping starts, one when it stops"
        assert "MQTT outbox full (2 messages)" in warnings[0]
        assert "2 were dropped" in warnings[1]
        assert buffer.outbox_depth() == 1
    finally:
        await buffer.close()
