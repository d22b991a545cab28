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
    - The sum of `size` (key plus value bytes) stays at most `max_bytes`, and within what the
      filesystem has free beyond `min_free_bytes` (a reserve, so that SQLite can always write its
      journal, delete and acknowledge). When a write would pass either bound, the oldest records
      of the lowest severity present are dropped first, and what still does not fit of the batch
      itself (its lowest severity first). Each drop is counted by severity and by reason
      (`buffer_full`, `disk_full`, `write_error`, `unavailable`). The file itself is larger than
      the sum by SQLite's page and index overhead (about 1.5-2x for small records; free space is
      divided by `SPACE_OVERHEAD` to bound it). Free space is read (`statvfs`) at every write, so
      when space returns the buffer takes records again by itself.
    - No write raises for want of space or a failing disk: a commit that fails is rolled back,
      its records are counted as dropped (`disk_full` for SQLITE_FULL, else `write_error`), and
      the next write tries again.
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
    database, or that SQLite reports as corrupt later (SQLITE_CORRUPT, SQLITE_NOTADB; never a full
    disk or an I/O error), is moved aside as `<file>.corrupt-<UTC time>` (with its `-wal` and
    `-shm`), counted, returned to the caller to report as an event, and a fresh database is
    started: never a crash loop. Every quarantined file found at open (this one, or one left by an
    earlier run) is then salvaged: the records and outbox messages SQLite can still read go into
    the fresh database (within its bounds), the rest are counted as lost, the report says both,
    and the file is deleted, so that a damaged buffer never holds disk space or records silently.
    A file that cannot be opened for want of space or an I/O error is not quarantined: the buffer
    retries without a shared-memory file (exclusive locking), and failing that it is unavailable
    (writes are dropped and counted as `unavailable`, reads are empty) and tries to open again at
    most every `REOPEN_S` seconds.

Threading
    `Buffer` is synchronous and must be used from one thread. `AsyncBuffer` runs it on a single
    worker thread, so the event loop never waits on SQLite or an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from agent.model import OutboxMessage, Record, Severity

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

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
MIN_FREE_BYTES = 2 * 2**20
"""Default free space left on the filesystem (at most a quarter of the filesystem)."""
SPACE_OVERHEAD = 2
"""File bytes per record byte assumed when free space bounds the buffer (pages, indexes, WAL)."""
REOPEN_S = 1.0
"""How often an unavailable buffer tries to open its file again."""
WAL_PAGES = 256
"""Checkpoint the WAL at this many pages and truncate it to as many bytes (1 MiB of 4 KiB pages):
the journal stays small on a small filesystem."""
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
QUARANTINE = ".corrupt-"


class BufferCorrupt(sqlite3.DatabaseError):
    """The database file is damaged; the buffer quarantines it and starts afresh."""


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_corruption(exc: sqlite3.Error) -> bool:
    """Only what SQLite calls corruption: a full disk or an I/O error leaves an intact file."""
    return isinstance(exc, BufferCorrupt) or _primary_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _write_failure(exc: sqlite3.Error) -> str:
    """The drop reason for a write that failed without corruption."""
    return "disk_full" if _primary_code(exc) == _SQLITE_FULL else "write_error"


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
    drop_reasons: Counter[str] = field(default_factory=Counter)
    """Dropped records by reason (`buffer_full`, `disk_full`, `write_error`, `unavailable`)."""
    quarantined: int = 0
    salvaged: int = 0
    """Records and outbox messages recovered from quarantined files."""
    lost: int = 0
    """Records and outbox messages of quarantined files that could not be read back."""
    unavailable: bool = False
    """The file could not be opened (no space, I/O error): writes are dropped until it can."""
    acked: int = 0
    outbox_depth: int = 0
    outbox_dropped: int = 0
    """Outbox messages dropped because the outbox was full, since start."""

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


def _prepare(db: sqlite3.Connection, sync: str, *, exclusive: bool = False) -> None:
    if exclusive:
        # WAL without the shared-memory file: what a full filesystem still allows.
        db.execute("PRAGMA locking_mode=EXCLUSIVE").fetchone()
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    # 1 MiB of page cache instead of SQLite's 2 MiB: the rows in flight are few and recent, and
    # during a long outage the kernel's page cache holds the file anyway.
    db.execute("PRAGMA cache_size=-1024")
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, FORMAT):
        raise BufferCorrupt(f"unknown buffer format {version} (expected {FORMAT})")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"records", "outbox", "state"} <= tables:
        # Written only when something is missing: an intact file opens without writing.
        db.executescript(_SCHEMA)
    if version != FORMAT:
        db.execute(f"PRAGMA user_version={FORMAT}")


class Buffer:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        sync: Literal["normal", "full"] = "normal",
        *,
        outbox_max: int = OUTBOX_MAX_MESSAGES,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        if outbox_max < 1:
            raise ValueError("outbox_max must be at least 1")
        self.path = path
        self.max_bytes = max_bytes
        self.sync = sync
        self.outbox_max = outbox_max
        self.min_free_bytes = min_free_bytes
        self.stats = BufferStats()
        self.quarantine_reports: list[tuple[str, str]] = []
        """(event type, message): why each quarantined file was moved aside (`buffer_corrupt`),
        and what its salvage recovered and lost (`buffer_salvaged`); the caller reports these."""
        self.exclusive = False
        """Opened without a shared-memory file (the filesystem was full): other processes cannot
        read the buffer until the agent restarts."""
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._last_error = ""

    # opening and recovery ----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; a damaged one is quarantined and replaced, and
        quarantined files are salvaged. Never raises for want of space: see `unavailable`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open_checked()
        except sqlite3.Error as exc:
            self._unavailable(exc)
            return
        self._salvage_quarantined()

    def _open_checked(self) -> None:
        try:
            self._connect()
            self._check()
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                self._quarantine(str(exc))
                self._connect()
            else:
                # An intact file we could not open or write (no space, I/O error): try once more
                # without the shared-memory file, and never take it for corruption.
                self._close_quietly()
                _log.warning("buffer %s: %s; opening it in exclusive mode", self.path, exc)
                self._connect(exclusive=True)
                self._check()
        self._load_totals()
        self.stats.unavailable = False

    def _unavailable(self, exc: sqlite3.Error) -> None:
        self._close_quietly()
        self.stats.unavailable = True
        self._next_open = time.monotonic() + REOPEN_S
        message = f"buffer {self.path} cannot be opened ({exc}): records are dropped until it can"
        if message != self._last_error:
            _log.error("%s", message)
            self._last_error = message

    def _available(self) -> bool:
        """Whether the database is open; an unavailable one is retried every `REOPEN_S`."""
        if self._db is not None:
            return True
        if not self.stats.unavailable or time.monotonic() < self._next_open:
            return False
        try:
            self._open_checked()
        except sqlite3.Error as exc:
            self._unavailable(exc)
            return False
        _log.warning("buffer %s is open again", self.path)
        self._last_error = ""
        self._salvage_quarantined()
        return True

    def _connect(self, *, exclusive: bool = False) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _prepare(db, self.sync, exclusive=exclusive)
        except BaseException:
            db.close()
            raise
        self._db = db
        self.exclusive = exclusive

    def _close_quietly(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _check(self) -> None:
        result = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise BufferCorrupt(f"quick_check: {result}")

    def _quarantine(self, reason: str) -> None:
        self._close_quietly()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}{QUARANTINE}{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        self.stats.quarantined += 1
        _log.error(
            "buffer database %s is damaged (%s); moved aside to %s, starting a fresh buffer",
            self.path,
            reason,
            target,
        )
        self.quarantine_reports.append(
            (
                "buffer_corrupt",
                f"buffer database {self.path} is damaged ({reason}); moved aside to {target}",
            )
        )

    def _salvage_quarantined(self) -> None:
        """Read back what quarantined files still hold, count the rest as lost, delete them."""
        pattern = f"{self.path.name}{QUARANTINE}*"
        for file in sorted(self.path.parent.glob(pattern)):
            if file.name.endswith(("-wal", "-shm")):
                continue
            records, messages, lost = _read_quarantined(file)
            kept = 0
            if records:
                kept += len(records) - self.put(records)
            if messages:
                kept += len(self.outbox_put(messages))
            lost += len(records) + len(messages) - kept
            self.stats.salvaged += kept
            self.stats.lost += lost
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{file}{suffix}").unlink()
            report = (
                f"quarantined buffer {file} salvaged: {kept} records and alerts recovered, "
                f"{lost} lost; file deleted"
            )
            (_log.error if lost else _log.warning)("%s", report)
            self.quarantine_reports.append(("buffer_salvaged", report))

    def _guard(self, exc: sqlite3.Error) -> bool:
        """Quarantine on corruption and carry on with a fresh file (True); False for anything
        else, which the caller counts and survives."""
        if not _is_corruption(exc):
            message = f"buffer {self.path}: {exc}"
            if message != self._last_error:
                _log.warning("%s", message)
                self._last_error = message
            return False
        self._quarantine(str(exc))
        try:
            self._connect()
            self._load_totals()
        except sqlite3.Error as again:
            self._unavailable(again)
        return True

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

    def _drop(self, records: Sequence[Record], reason: str) -> int:
        for record in records:
            self.stats.drops[int(record.severity)] += 1
        self.stats.drop_reasons[reason] += len(records)
        return len(records)

    def limit(self) -> tuple[int, str]:
        """The most record bytes the buffer may hold now, and the reason a drop would have."""
        try:
            st = os.statvfs(self.path.parent)
            page_size, free_pages = (
                self._conn.execute("PRAGMA page_size").fetchone()[0],
                self._conn.execute("PRAGMA freelist_count").fetchone()[0],
            )
        except (OSError, sqlite3.Error):
            return self.max_bytes, "buffer_full"
        free = st.f_bavail * st.f_frsize
        reserve = min(self.min_free_bytes, st.f_blocks * st.f_frsize // 4)
        # The WAL grows to its checkpoint size before it is reused: what it may still take is
        # not room for records; what it holds beyond that size is given back at the next write.
        try:
            wal = Path(f"{self.path}-wal").stat().st_size
        except OSError:
            wal = 0
        wal_growth = WAL_PAGES * page_size - wal
        # Negative once the file has grown into the reserve (pages split by deletes and inserts):
        # then the bound falls below what the buffer holds, and the next write drops more.
        room = (free - reserve - wal_growth + page_size * free_pages) // SPACE_OVERHEAD
        if self.stats.bytes + room < self.max_bytes:
            return max(0, self.stats.bytes + room), "disk_full"
        return self.max_bytes, "buffer_full"

    def put(self, records: Sequence[Record]) -> int:
        """Write `records` in one transaction; returns how many records were dropped (older ones
        to make room, or of these). Never raises for want of space or a failing write."""
        if not records:
            return 0
        reason = "unavailable"
        for _attempt in range(2):  # once more on a fresh file after a quarantine
            if not self._available():
                break
            try:
                return self._put(_newest(records))
            except sqlite3.Error as exc:
                reason = _write_failure(exc)
                if not self._guard(exc):
                    break
                reason = "unavailable"
        return self._drop(records, reason)

    def _put(self, batch: list[Record]) -> int:
        db = self._conn
        limit, reason = self.limit()
        added = sum(record.size for record in batch)
        cut: list[Record] = []
        if added > limit:
            batch, cut = _fit(batch, limit)
            added = sum(record.size for record in batch)
        victims: list[tuple[int, int, int]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            replaced = 0
            freed = 0
            for record in batch:
                if record.upsert:
                    row = db.execute(
                        "DELETE FROM records WHERE key = ? AND upsert = 1 RETURNING size",
                        (record.key,),
                    ).fetchone()
                    if row is not None:
                        replaced += 1
                        freed += row[0]
            if self.stats.bytes - freed + added > limit:
                victims = self._make_room(self.stats.bytes - freed + added - limit)
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
            self._abort()
            raise
        for _seq, size, severity in victims:
            self.stats.drops[severity] += 1
            freed += size
        if victims:
            self.stats.drop_reasons[reason] += len(victims)
        self._drop(cut, reason)
        self.stats.depth += len(batch) - replaced - len(victims)
        self.stats.bytes += added - freed
        if replaced or victims or self.stats.oldest_created_ns is None:
            self._refresh_oldest()
        return len(victims) + len(cut)

    def _abort(self) -> None:
        """Roll back a failed transaction and re-read the totals. A failed COMMIT may have
        rolled back already: only what is still open is rolled back."""
        db = self._conn
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            self._load_totals()

    def _make_room(self, needed: int) -> list[tuple[int, int, int]]:
        """Delete the oldest records of the lowest severity until `needed` bytes are free;
        returns them as (seq, size, severity), to be counted once the transaction commits."""
        db = self._conn
        freed = 0
        victims: list[tuple[int, int, int]] = []
        cursor = db.execute("SELECT seq, size, severity FROM records ORDER BY severity, seq")
        for seq, size, severity in cursor:
            victims.append((seq, size, severity))
            freed += size
            if freed >= needed:
                break
        cursor.close()
        db.executemany("DELETE FROM records WHERE seq = ?", [(v[0],) for v in victims])
        return victims

    def _refresh_oldest(self) -> None:
        # The first record in push order stands for the oldest: an index lookup, not a scan.
        row = self._conn.execute("SELECT created_ns FROM records ORDER BY seq LIMIT 1").fetchone()
        self.stats.oldest_created_ns = None if row is None else row[0]

    # reading and acknowledging ------------------------------------------------------------------

    def take(self, max_records: int, max_bytes: int, after_seq: int = 0) -> list[Pending]:
        """The oldest pending records: at most `max_records` and `max_bytes` (but at least one)."""
        if not self._available():
            return []
        try:
            rows = self._conn.execute(
                "SELECT seq, key, value, retention, severity, upsert, created_ns FROM records "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max_records),
            ).fetchall()
        except sqlite3.Error as exc:
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

    def pending_under(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        """(key, value) of the records waiting under the key `prefix`, oldest first, at most
        `limit`: the read side's answer while etcd is away. A scan of the table (keys of
        appended records are not indexed, to keep writes cheap): rare, and off the loop."""
        if not self._available():
            return []
        try:
            rows = self._conn.execute(
                "SELECT key, value FROM records WHERE key >= ? AND key < ? ORDER BY seq LIMIT ?",
                (prefix, prefix + "\U0010ffff", limit),
            ).fetchall()
        except sqlite3.Error as exc:
            self._guard(exc)
            return []
        return [(str(key), bytes(value)) for key, value in rows]

    def _delete(self, table: str, seqs: Sequence[int], column: str) -> list[int] | None:
        """Delete rows by seq, one transaction per `_IN_CHUNK` (a long acknowledgement must not
        grow the WAL past its size on a small filesystem); the values of `column` removed, or
        None if no write could be made (the rows stay; they are sent again, at least once)."""
        if not self._available():
            return None
        db = self._conn
        removed: list[int] = []
        for start in range(0, len(seqs), _IN_CHUNK):
            chunk = seqs[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            try:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    f"DELETE FROM {table} WHERE seq IN ({marks}) RETURNING {column}",  # noqa: S608
                    tuple(chunk),
                ).fetchall()
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                self._guard(exc)
                return removed or None
            removed += [row[0] for row in rows]
        return removed

    def ack(self, seqs: Sequence[int]) -> None:
        """etcd has these records: delete them (a replaced latest value has another seq)."""
        if not seqs:
            return
        removed = self._delete("records", seqs, "size")
        if removed is None:
            return
        self.stats.acked += len(removed)
        self.stats.depth -= len(removed)
        self.stats.bytes -= sum(removed)
        self._refresh_oldest()

    # the MQTT outbox ----------------------------------------------------------------------------

    def outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]:
        """Append `messages` in one transaction; if full, drop the lowest severity, oldest first.

        Returns their sequence numbers, in order (increasing): what `outbox_ack` takes. Messages
        that cannot be written (no space, a failing disk) are counted in `outbox_dropped`, and
        the result is empty: nothing to acknowledge.
        """
        if not messages:
            return []
        for _attempt in range(2):
            if not self._available():
                break
            try:
                return self._outbox_put(messages)
            except sqlite3.Error as exc:
                if not self._guard(exc):
                    break
        self.stats.outbox_dropped += len(messages)
        return []

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
            self._abort()
            raise
        self.stats.outbox_depth += len(messages) - excess
        self.stats.outbox_dropped += excess
        return seqs

    def outbox_take(self, limit: int) -> list[tuple[int, OutboxMessage]]:
        """Up to `limit` outbox messages with their seqs, oldest first; taking is not removing."""
        if not self._available():
            return []
        try:
            rows = self._conn.execute(
                "SELECT seq, topic, payload, retain, severity, created_ns FROM outbox "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
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
        removed = self._delete("outbox", seqs, "seq")
        if removed is not None:
            self.stats.outbox_depth -= len(removed)

    def outbox_depth(self) -> int:
        """Messages in the outbox now (kept in memory: no database access)."""
        return self.stats.outbox_depth

    # small persistent state ---------------------------------------------------------------------

    def save_state(self, name: str, value: bytes) -> bool:
        """Keep `value` across restarts; False if it could not be written (it is not kept)."""
        if not self._available():
            return False
        try:
            self._conn.execute(
                "INSERT INTO state (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        except sqlite3.Error as exc:
            self._guard(exc)
            return False
        return True

    def load_state(self, name: str) -> bytes | None:
        if not self._available():
            return None
        try:
            row = self._conn.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            self._guard(exc)
            return None
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._close_quietly()


def _newest(records: Sequence[Record]) -> list[Record]:
    """Within one batch too, only the newest value of a latest-value key is kept."""
    incoming: dict[tuple[str, int], Record] = {}
    for record in records:
        incoming[(record.key, -1 if record.upsert else id(record))] = record
    return list(incoming.values())


def _fit(batch: list[Record], limit: int) -> tuple[list[Record], list[Record]]:
    """The records of `batch` that fit in `limit` bytes, highest severity and newest first,
    kept in batch order; and those cut."""
    order = sorted(range(len(batch)), key=lambda i: (-int(batch[i].severity), -i))
    keep: set[int] = set()
    total = 0
    for i in order:
        if total + batch[i].size <= limit:
            keep.add(i)
            total += batch[i].size
    return (
        [r for i, r in enumerate(batch) if i in keep],
        [r for i, r in enumerate(batch) if i not in keep],
    )


def _read_quarantined(file: Path) -> tuple[list[Record], list[OutboxMessage], int]:
    """What a quarantined file still holds: its records, its outbox messages, and how many rows
    could not be read (a table that cannot be read at all counts as one)."""
    records: list[Record] = []
    messages: list[OutboxMessage] = []
    lost = 0
    try:
        db = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    except sqlite3.Error:
        return records, messages, 1
    with contextlib.closing(db):
        for table in ("records", "outbox"):
            try:
                total = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
            except sqlite3.Error:
                total = None
            read = 0
            try:
                if table == "records":
                    for key, value, retention, severity, upsert, created_ns in db.execute(
                        "SELECT key, value, retention, severity, upsert, created_ns FROM records "
                        "ORDER BY seq"
                    ):
                        records.append(
                            Record(
                                key,
                                bytes(value),
                                retention,
                                Severity(severity),
                                bool(upsert),
                                created_ns,
                            )
                        )
                        read += 1
                else:
                    for topic, payload, retain, severity, created_ns in db.execute(
                        "SELECT topic, payload, retain, severity, created_ns FROM outbox "
                        "ORDER BY seq"
                    ):
                        messages.append(
                            OutboxMessage(
                                topic, bytes(payload), bool(retain), Severity(severity), created_ns
                            )
                        )
                        read += 1
            except (sqlite3.Error, ValueError, TypeError):
                # Whatever was read before the damage is kept; the rest is counted below.
                if total is None:
                    total = read + 1
            if total is not None:
                lost += max(0, total - read)
    return records, messages, lost


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
    """Logs drops once when a burst starts and once, with its counts (by reason and by
    severity), when it ends (the first write that drops nothing, or the close), and tells
    `ended(reason, count, message)`."""

    def __init__(self, what: str, ended: Callable[[str, int, str], None] | None = None) -> None:
        self._what = what
        self._dropped: Counter[str] = Counter()
        self._severities: Counter[int] = Counter()
        self._ended = ended

    def note(
        self,
        dropped: Mapping[str, int],
        starting: Callable[[str], str],
        severities: Mapping[int, int] | None = None,
    ) -> None:
        for reason, count in dropped.items():
            if count:
                if not self._dropped[reason]:
                    _log.warning("%s", starting(reason))
                self._dropped[reason] += count
        if severities:
            self._severities.update({k: v for k, v in severities.items() if v})
        if not any(dropped.values()):
            self.end()

    def end(self, *, closing: bool = False) -> None:
        """The burst is over: one line with what it dropped (and an event, unless closing)."""
        by_severity = ", ".join(
            f"{Severity(s).name.lower()} {n}" for s, n in sorted(self._severities.items())
        )
        for reason, count in list(self._dropped.items()):
            if count:
                message = (
                    f"{self._what} stopped dropping ({reason}); {count} were dropped"
                    + (f" ({by_severity})" if by_severity else "")
                    + (" until it closed" if closing else "")
                )
                _log.warning("%s", message)
                if self._ended is not None and not closing:
                    self._ended(reason, count, message)
        self._dropped.clear()
        self._severities.clear()


_WHY = {
    "buffer_full": "buffer full ({max} bytes)",
    "disk_full": "filesystem nearly full (keeping {free} bytes free)",
    "write_error": "writes to the buffer fail",
    "unavailable": "the buffer file cannot be opened",
}


P = ParamSpec("P")
T = TypeVar("T")


class AsyncBuffer:
    """The buffer on its own worker thread.

    `changed` is set whenever records were added, `outbox_changed` whenever outbox messages were;
    each is set after the commit, so a reader woken by it finds what was written.
    """

    def __init__(
        self, buffer: Buffer, *, burst_ended: Callable[[str, int, str], None] | None = None
    ) -> None:
        self.buffer = buffer
        self.changed = asyncio.Event()
        self.outbox_changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._record_drops = _Bursts("buffer", burst_ended)
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
        reasons = self.buffer.stats.drop_reasons
        severities = self.buffer.stats.drops
        before, severities_before = dict(reasons), dict(severities)
        await self._call(self.buffer.put, records)
        buffer = self.buffer

        def starting(reason: str) -> str:
            why = _WHY.get(reason, reason).format(max=buffer.max_bytes, free=buffer.min_free_bytes)
            return f"{why}: dropping the oldest lowest-severity records"

        self._record_drops.note(
            {reason: count - before.get(reason, 0) for reason, count in reasons.items()},
            starting,
            {s: n - severities_before.get(s, 0) for s, n in severities.items()},
        )
        if records:
            self.changed.set()

    async def take(self, max_records: int, max_bytes: int, after_seq: int = 0) -> list[Pending]:
        return await self._call(self.buffer.take, max_records, max_bytes, after_seq)

    async def ack(self, seqs: Sequence[int]) -> None:
        await self._call(self.buffer.ack, seqs)

    async def pending_under(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        return await self._call(self.buffer.pending_under, prefix, limit)

    async def outbox_put(self, messages: Sequence[OutboxMessage]) -> list[int]:
        dropped_before = self.buffer.stats.outbox_dropped
        seqs = await self._call(self.buffer.outbox_put, messages)
        outbox_max = self.buffer.outbox_max
        self._outbox_drops.note(
            {"outbox": self.buffer.stats.outbox_dropped - dropped_before},
            lambda _reason: (
                f"MQTT outbox full ({outbox_max} messages) or not writable: dropping "
                "the oldest lowest-severity alerts"
            ),
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

    async def save_state(self, name: str, value: bytes) -> bool:
        return await self._call(self.buffer.save_state, name, value)

    async def load_state(self, name: str) -> bytes | None:
        return await self._call(self.buffer.load_state, name)

    async def close(self) -> None:
        self._record_drops.end(closing=True)
        self._outbox_drops.end(closing=True)
        await self._call(self.buffer.close)
        self._executor.shutdown(wait=True)
