"""The durable local buffer: every record waits here until etcd has acknowledged it, and every
MQTT alert until the broker has acknowledged it.

Format
    One SQLite database (`buffer.file` in the state directory, `PRAGMA user_version` = FORMAT) in
    WAL mode, with three tables:

    - `records(seq INTEGER PRIMARY KEY AUTOINCREMENT, key, value, retention, severity, upsert,
      created_ns, size)`: the pending writes, in the order they were made. A partial unique index
      on `key WHERE upsert = 1` keeps one pending record per latest-value key; an index on
      `(severity, seq)` gives the drop order.
    - `outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, topic, payload, retain, severity,
      created_ns)`: MQTT messages waiting for the broker's PUBACK, in the order they were made;
      an index on `(severity, seq)` gives the drop order. The table came after format 1 was
      fixed; `CREATE TABLE IF NOT EXISTS` adds it to an older file, and an older agent ignores
      it, so the format number did not change.
    - `state(name PRIMARY KEY, value)`: small agent state kept across restarts (open rollups).

Invariants
    - A record leaves the buffer only when etcd acknowledged it (`ack`) or when a full buffer drops
      it; every drop is counted. Delivery is at-least-once; keys are deterministic, so a replayed
      record overwrites itself in etcd.
    - A latest-value key has at most one pending record, the newest. An upsert gives the record a
      new `seq`, so acknowledging an older batch never deletes a newer value that came meanwhile.
    - The sum of `size` (key plus value bytes) stays at most `max_bytes`. When a write would pass
      it, the oldest records of the lowest severity present are dropped first. The file itself is
      larger than the sum by SQLite's page and index overhead (about 1.5-2x for small records).
    - The outbox is separate from `records`: it is not counted in `max_bytes`, and a full records
      table never drops an alert. It holds at most `outbox_max` messages (10,000 by default, a
      few MB of alert JSON); a write that would pass that drops the oldest messages of the lowest
      severity present first (critical ones last), counted in `stats.outbox_dropped`.
    - An outbox message leaves only when the broker acknowledged it (`outbox_ack`, after PUBACK)
      or when a full outbox drops it. `outbox_take` gives messages oldest first, so a publisher
      that sends them one at a time keeps their order; a message sent but not yet acknowledged
      is sent again after a restart (MQTT QoS 1: at least once). Sequence numbers only grow
      (AUTOINCREMENT, never reused): a later commit has higher ones, which the publisher uses to
      tell what it has already sent.

Durability (`buffer.sync`)
    - `normal`: `synchronous=NORMAL` in WAL mode. A commit survives a crash of the agent (SIGKILL,
      OOM kill); after a power loss the last commits may be missing, but the file is consistent.
    - `full`: `synchronous=FULL`. Each commit is fsynced before `put` returns; survives power loss.
    The outbox is written under the same policy: `outbox_put` returns after the commit, so an
    alert that was enqueued survives a crash of the agent (and with `full`, a power loss).

Recovery
    On open the database is checked (`PRAGMA quick_check`). A file that fails the check, is not a
    database, or reports corruption later, is moved aside as `<file>.corrupt-<UTC time>` (with its
    `-wal` and `-shm`), counted, returned to the caller to report as an event, and a fresh database
    is started: never a crash loop.

Threading
    `Buffer` is synchronous and must be used from one thread. `AsyncBuffer` runs it on a single
    worker thread, so the event loop never waits on SQLite or an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from agent.model import OutboxMessage, Record, Severity

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

FORMAT = 1
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    retention TEXT,
    severity INTEGER NOT NULL,
    upsert INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_latest ON records(key) WHERE upsert = 1;
CREATE INDEX IF NOT EXISTS records_drop_order ON records(severity, seq);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox(severity, seq);
"""
OUTBOX_MAX_MESSAGES = 10_000
"""Default bound of the outbox, in messages."""
_IN_CHUNK = 500
"""Sequence numbers per `IN (...)` list, well under SQLite's bound-parameter limit."""
_CORRUPT_HINTS = ("malformed", "not a database", "corrupt", "disk i/o error")


class BufferCorrupt(Exception):  # noqa: N818 - names the condition, as the policy table does
    """The database file is damaged; the buffer quarantines it and starts afresh."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A record as stored, with the sequence number that acknowledges it."""

    seq: int
    record: Record


@dataclass(slots=True)
class BufferStats:
    depth: int = 0
    bytes: int = 0
    oldest_created_ns: int | None = None
    drops: Counter[int] = field(default_factory=Counter)
    """Dropped records by severity, since start."""
    quarantined: int = 0
    acked: int = 0
    outbox_depth: int = 0
    outbox_dropped: int = 0
    """Outbox messages dropped because the outbox was full, since start."""

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


def _prepare(db: sqlite3.Connection, sync: str) -> None:
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    # 1 MiB of page cache instead of SQLite's 2 MiB: the rows in flight are few and recent, and
    # during a long outage the kernel's page cache holds the file anyway.
    db.execute("PRAGMA cache_size=-1024")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, FORMAT):
        raise sqlite3.DatabaseError(f"unknown buffer format {version} (expected {FORMAT})")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version={FORMAT}")


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return any(hint in text for hint in _CORRUPT_HINTS)


class Buffer:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        sync: Literal["normal", "full"] = "normal",
        *,
        outbox_max: int = OUTBOX_MAX_MESSAGES,
    ) -> None:
        if outbox_max < 1:
            raise ValueError("outbox_max must be at least 1")
        self.path = path
        self.max_bytes = max_bytes
        self.sync = sync
        self.outbox_max = outbox_max
        self.stats = BufferStats()
        self.quarantine_reports: list[str] = []
        """Why each quarantined file was moved aside, and where to; the caller reports these."""
        self._db: sqlite3.Connection | None = None

    # opening and recovery ----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; a damaged one is quarantined and replaced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connect()
            self._check()
        except sqlite3.DatabaseError as exc:
            self._quarantine(str(exc))
            self._connect()
        self._load_totals()

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _prepare(db, self.sync)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _check(self) -> None:
        result = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")

    def _quarantine(self, reason: str) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        self.stats.quarantined += 1
        report = f"buffer database {self.path} is damaged ({reason}); moved aside to {target}"
        self.quarantine_reports.append(report)
        _log.error("%s; starting a fresh buffer", report)

    def _guard(self, exc: sqlite3.DatabaseError) -> None:
        """Quarantine on corruption (and carry on with a fresh file); re-raise anything else."""
        if not _is_corruption(exc):
            raise exc
        self._quarantine(str(exc))
        self._connect()
        self._load_totals()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the buffer is not open")
        return self._db

    def _load_totals(self) -> None:
        depth, size = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records"
        ).fetchone()
        self.stats.depth, self.stats.bytes = depth, size
        self.stats.outbox_depth = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._refresh_oldest()

    # writing ------------------------------------------------------------------------------------

    def put(self, records: Sequence[Record]) -> int:
        """Write `records` in one transaction; returns how many older records were dropped."""
        if not records:
            return 0
        try:
            return self._put(records)
        except sqlite3.DatabaseError as exc:
            self._guard(exc)
            return self._put(records)

    def _put(self, records: Sequence[Record]) -> int:
        db = self._conn
        incoming = {}
        for record in records:
            # Within one batch too, only the newest value of a latest-value key is kept.
            incoming[(record.key, record.upsert) if record.upsert else (record.key, id(record))] = (
                record
            )
        batch = list(incoming.values())
        added = sum(record.size for record in batch)
        if added > self.max_bytes:
            raise ValueError(f"a batch of {added} bytes cannot fit a {self.max_bytes}-byte buffer")
        dropped = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            replaced = 0
            for record in batch:
                if record.upsert:
                    row = db.execute(
                        "DELETE FROM records WHERE key = ? AND upsert = 1 RETURNING size",
                        (record.key,),
                    ).fetchone()
                    if row is not None:
                        replaced += 1
                        self.stats.bytes -= row[0]
                        self.stats.depth -= 1
            if self.stats.bytes + added > self.max_bytes:
                dropped = self._make_room(self.stats.bytes + added - self.max_bytes)
            db.executemany(
                "INSERT INTO records (key, value, retention, severity, upsert, created_ns, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.key,
                        r.value,
                        r.retention,
                        int(r.severity),
                        int(r.upsert),
                        r.created_ns,
                        r.size,
                    )
                    for r in batch
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load_totals()
            raise
        self.stats.depth += len(batch)
        self.stats.bytes += added
        if replaced or dropped or self.stats.oldest_created_ns is None:
            self._refresh_oldest()
        return dropped

    def _make_room(self, needed: int) -> int:
        """Delete the oldest records of the lowest severity until `needed` bytes are free."""
        db = self._conn
        freed = 0
        victims: list[int] = []
        cursor = db.execute("SELECT seq, size, severity FROM records ORDER BY severity, seq")
        for seq, size, severity in cursor:
            victims.append(seq)
            freed += size
            self.stats.drops[severity] += 1
            if freed >= needed:
                break
        cursor.close()
        db.executemany("DELETE FROM records WHERE seq = ?", [(seq,) for seq in victims])
        self.stats.depth -= len(victims)
        self.stats.bytes -= freed
        return len(victims)

    def _refresh_oldest(self) -> None:
        # The first record in push order stands for the oldest: an index lookup, not a scan.
        row = self._conn.execute("SELECT created_ns FROM records ORDER BY seq LIMIT 1").fetchone()
        self.stats.oldest_created_ns = None if row is None else row[0]

    # reading and acknowledging ------------------------------------------------------------------

    def take(self, max_records: int, max_bytes: int, after_seq: int = 0) -> list[Pending]:
        """The oldest pending records: at most `max_records` and `max_bytes` (but at least one)."""
        try:
            rows = self._conn.execute(
                "SELECT seq, key, value, retention, severity, upsert, created_ns FROM records "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max_records),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            self._guard(exc)
            return []
        batch: list[Pending] = []
        total = 0
        for seq, key, value, retention, severity, upsert, created_ns in rows:
            record = Record(key, value, retention, Severity(severity), bool(upsert), created_ns)
            if batch and total + record.size > max_bytes:
                break
            total += record.size
            batch.append(Pending(seq, record))
        return batch

    def ack(self, seqs: Sequence[int]) -> None:
        """etcd has these records: delete them (a replaced latest value has another seq)."""
        if not seqs:
            return
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
            removed: list[int] = []
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += [
                    row[0]
                    for row in db.execute(
                        f"DELETE FROM records WHERE seq IN ({marks}) RETURNING size",  # noqa: S608
                        tuple(chunk),
                    )
                ]
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._guard(exc)
            return
        self.stats.acked += len(removed)
        self.stats.depth -= len(removed)
        self.stats.bytes -= sum(removed)
        self._refresh_oldest()

    # the MQTT outbox ----------------------------------------------------------------------------

    def outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]:
        """Append `messages` in one transaction; if full, drop the lowest severity, oldest first.

        Returns their sequence numbers, in order (increasing): what `outbox_ack` takes.
        """
        if not messages:
            return []
        try:
            return self._outbox_put(messages)
        except sqlite3.DatabaseError as exc:
            self._guard(exc)
            return self._outbox_put(messages)

    def _outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]:
        db = self._conn
        excess = max(0, self.stats.outbox_depth + len(messages) - self.outbox_max)
        db.execute("BEGIN IMMEDIATE")
        try:
            seqs = [
                db.execute(
                    "INSERT INTO outbox (topic, payload, retain, severity, created_ns) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING seq",
                    (m.topic, m.payload, int(m.retain), int(m.severity), m.created_ns),
                ).fetchone()[0]
                for m in messages
            ]
            if excess:
                db.execute(
                    "DELETE FROM outbox WHERE seq IN "
                    "(SELECT seq FROM outbox ORDER BY severity, seq LIMIT ?)",
                    (excess,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load_totals()
            raise
        self.stats.outbox_depth += len(messages) - excess
        self.stats.outbox_dropped += excess
        return seqs

    def outbox_take(self, limit: int) -> list[tuple[int, OutboxMessage]]:
        """Up to `limit` outbox messages with their seqs, oldest first; taking is not removing."""
        try:
            rows = self._conn.execute(
                "SELECT seq, topic, payload, retain, severity, created_ns FROM outbox "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            self._guard(exc)
            return []
        return [
            (seq, OutboxMessage(topic, bytes(payload), bool(retain), Severity(severity), created))
            for seq, topic, payload, retain, severity, created in rows
        ]

    def outbox_ack(self, seqs: Sequence[int]) -> None:
        """The broker has these messages (PUBACK): delete them. Unknown seqs are ignored."""
        if not seqs:
            return
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
            removed = 0
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += db.execute(
                    f"DELETE FROM outbox WHERE seq IN ({marks})",  # noqa: S608
                    tuple(chunk),
                ).rowcount
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._guard(exc)
            return
        self.stats.outbox_depth -= removed

    def outbox_depth(self) -> int:
        """Messages in the outbox now (kept in memory: no database access)."""
        return self.stats.outbox_depth

    # small persistent state ---------------------------------------------------------------------

    def save_state(self, name: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO state (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def load_state(self, name: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None


def read_pending(path: Path, keys: Sequence[str]) -> dict[str, bytes]:
    """The newest value waiting in the buffer at `path` for each of `keys` (absent: not waiting).

    Opens the file read-only (another process, the running agent, may own it) and never creates
    it: for `piccolo-agent status` while etcd is away.
    """
    found: dict[str, bytes] = {}
    if not path.exists():
        return found
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for key in keys:
            row = db.execute(
                "SELECT value FROM records WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
            ).fetchone()
            if row is not None:
                found[key] = bytes(row[0])
    return found


class _Bursts:
    """Logs drops once when a burst starts and once, with its count, when it ends."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._dropped = 0

    def note(self, dropped: int, starting: str) -> None:
        if dropped:
            if not self._dropped:
                _log.warning("%s", starting)
            self._dropped += dropped
        elif self._dropped:
            _log.warning("%s stopped dropping; %d were dropped", self._what, self._dropped)
            self._dropped = 0


P = ParamSpec("P")
T = TypeVar("T")


class AsyncBuffer:
    """The buffer on its own worker thread.

    `changed` is set whenever records were added, `outbox_changed` whenever outbox messages were;
    each is set after the commit, so a reader woken by it finds what was written.
    """

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.changed = asyncio.Event()
        self.outbox_changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._record_drops = _Bursts("buffer")
        self._outbox_drops = _Bursts("MQTT outbox")

    @property
    def stats(self) -> BufferStats:
        return self.buffer.stats

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        await self._call(self.buffer.open)

    async def put(self, records: Sequence[Record]) -> None:
        dropped = await self._call(self.buffer.put, records)
        self._record_drops.note(
            dropped,
            f"buffer full ({self.buffer.max_bytes} bytes): dropping the oldest lowest-severity "
            "records",
        )
        if records:
            self.changed.set()

    async def take(self, max_records: int, max_bytes: int, after_seq: int = 0) -> list[Pending]:
        return await self._call(self.buffer.take, max_records, max_bytes, after_seq)

    async def ack(self, seqs: Sequence[int]) -> None:
        await self._call(self.buffer.ack, seqs)

    async def outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]:
        dropped_before = self.buffer.stats.outbox_dropped
        seqs = await self._call(self.buffer.outbox_put, messages)
        self._outbox_drops.note(
            self.buffer.stats.outbox_dropped - dropped_before,
            f"MQTT outbox full ({self.buffer.outbox_max} messages): dropping the oldest "
            "lowest-severity alerts",
        )
        if messages:
            self.outbox_changed.set()
        return seqs

    async def outbox_take(self, limit: int) -> list[tuple[int, OutboxMessage]]:
        return await self._call(self.buffer.outbox_take, limit)

    async def outbox_ack(self, seqs: Sequence[int]) -> None:
        await self._call(self.buffer.outbox_ack, seqs)

    def outbox_depth(self) -> int:
        """Messages in the outbox now; reads the worker's counter without waiting for it."""
        return self.buffer.outbox_depth()

    async def save_state(self, name: str, value: bytes) -> None:
        await self._call(self.buffer.save_state, name, value)

    async def load_state(self, name: str) -> bytes | None:
        return await self._call(self.buffer.load_state, name)

    async def close(self) -> None:
        await self._call(self.buffer.close)
        self._executor.shutdown(wait=True)
