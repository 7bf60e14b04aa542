"""The durable event outbox: every event is on disk before it goes to the broker.

A detection must survive whatever happens between the pipeline and the subscriber: a
broker that restarts, a Wi-Fi link that drops for an hour, the daemon itself killed by
the OOM killer or a watchdog. So events are not handed to the MQTT client directly; they
are committed to one SQLite table, read back in id order by the publisher's sender
thread and deleted only when the broker has acknowledged them (PUBACK).

What survives what
------------------
SQLite runs in WAL mode: a commit appends to ``outbox.sqlite-wal`` and never rewrites
the main file in place, so a torn write cannot damage rows already committed.

- ``synchronous = "normal"`` (the default): :meth:`Outbox.put` returns after the row is
  in the WAL file, i.e. in the kernel's page cache. A crash of the *process* (SIGKILL,
  OOM, a segfault in a native library) loses nothing that ``put`` returned for. A power
  cut or kernel panic can lose the events committed since the last checkpoint's fsync
  (SQLite syncs the WAL at each checkpoint, about every 1,000 pages); the database stays
  consistent, it is only shorter.
- ``synchronous = "full"``: the WAL is fsynced at every commit, so a power cut loses
  nothing that ``put`` returned for either. On an SD card that costs milliseconds per
  event and wears the card, hence not the default.

Acknowledged rows are deleted in batches (every ``ACK_BATCH`` acknowledgements or
``ACK_DELAY_S`` seconds, whichever first): one transaction per batch instead of one per
event. A crash can therefore re-send up to a batch of already-delivered events after the
restart; subscribers drop those by ``seq`` (device/mqtt/subscriber.py, ``SeqTracker``).

Bounds and drops
----------------
``max_events``, ``max_mb`` and ``max_age_s`` bound the spool; ``when_full`` chooses what
goes when a size bound is reached (the oldest row, or the new event). Expired rows are
removed from the oldest end. Every discarded event is counted by reason (``full``,
``expired``, ``unwritable``, ``corrupt``) and logged at most once every
``DROP_LOG_EVERY_S`` seconds.

When the disk fails
-------------------
A write that fails (disk full, read-only file system, I/O error) never raises to the
caller: the event is kept in a bounded in-memory queue (``memory_events``, same
``when_full`` policy) and written to the database, ahead of newer events, as soon as a
write succeeds again (tried at most once every ``RETRY_WRITE_S``, since a retry rewrites
them all). The sender reads those in-memory events too, so with the broker up
and the disk full events still flow; only a process crash in that state loses them. A
database that SQLite reports as corrupt (at open, by ``PRAGMA quick_check``, or later)
is moved aside as ``outbox.sqlite.corrupt-<ms>`` and a fresh one started, with an error
in the log; the rows it held are counted as dropped (``corrupt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from device.config import OutboxSection

log = logging.getLogger(__name__)

#: The file's name inside ``[device] state_dir``.
OUTBOX_FILE = "outbox.sqlite"
#: Acknowledged rows deleted in one transaction at most this many at a time...
ACK_BATCH = 256
#: ...or at the latest this long after the first acknowledgement of a batch.
ACK_DELAY_S = 0.5
#: Age expiry runs at most this often (it is a range scan from the oldest row).
EXPIRE_EVERY_S = 1.0
#: How often a database that could not be opened is tried again.
REOPEN_EVERY_S = 30.0
#: After a failed write, new events go straight to memory for this long (each retry
#: rewrites every in-memory event, so retrying on every put would cost O(n) per event).
RETRY_WRITE_S = 1.0
DROP_LOG_EVERY_S = 30.0
#: Ids per DELETE statement (well under SQLite's bound-parameter limit).
DELETE_CHUNK = 500
#: The WAL file is truncated to this size after checkpoints (it is reused, not regrown).
WAL_SIZE_LIMIT = 4 * 1024 * 1024
SCHEMA_VERSION = 1

DropReason = Literal["full", "expired", "unwritable", "corrupt"]
_Outcome = Literal["written", "refused", "failed"]
DROP_REASONS: tuple[DropReason, ...] = ("full", "expired", "unwritable", "corrupt")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
)
"""
#: What a row costs against ``max_mb``: the same measure in SQL and in Python.
_SIZE_SQL = "length(topic) + length(payload)"


@dataclass(frozen=True)
class SpooledMessage:
    """One spooled message; ``id`` orders them (oldest first)."""

    id: int
    topic: str
    payload: bytes
    #: Unix time at which it was spooled.
    created_at: float

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload)


@dataclass(frozen=True)
class OutboxStats:
    """The spool's figures; ``dropped`` is the sum of the per-reason counters."""

    #: Events spooled and not yet acknowledged (on disk and in memory).
    depth: int
    #: Their topic and payload bytes (what ``max_mb`` bounds).
    bytes: int
    #: Of ``depth``, those held in memory because the database could not be written.
    in_memory: int
    dropped: int
    dropped_full: int
    dropped_expired: int
    dropped_unwritable: int
    dropped_corrupt: int
    #: Age of the oldest spooled event; None when the spool is empty.
    oldest_age_s: float | None
    #: False while writes to the database fail (events then wait in memory).
    writable: bool


class _CorruptDatabaseError(Exception):
    """``PRAGMA quick_check`` found damage SQLite did not raise for by itself."""


class Outbox:
    """A bounded, ordered, durable spool of (topic, payload) messages; thread-safe.

    ``put`` is called by the pipelines' threads, ``read``/``ack`` by the publisher's
    sender. Call ``close()`` at shutdown: it deletes acknowledged rows and writes any
    in-memory events; unsent rows stay for the next start.
    """

    def __init__(
        self,
        path: Path,
        settings: OutboxSection | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.settings = settings or OutboxSection()
        self._max_bytes = int(self.settings.max_mb * 1024 * 1024)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._next_id = 1
        self._db_count = 0
        self._db_bytes = 0
        self._memory: OrderedDict[int, SpooledMessage] = OrderedDict()
        self._memory_bytes = 0
        self._pending_acks: set[int] = set()
        self._first_pending_at = 0.0
        self._dropped: Counter[str] = Counter()
        self._drops_unlogged = 0
        self._drop_logged_at = -float("inf")
        self._last_expire = -float("inf")
        self._last_open_try = -float("inf")
        self._writable = True
        self._write_failed_at = -float("inf")
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._open()
        if self._db_count:
            log.info(
                "outbox %s holds %d event(s) from before; they are sent first",
                self.path,
                self._db_count,
            )

    # -- public -------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int | None:
        """Spool one message; its id once committed, None if it was dropped.

        Returns only after the row is committed (see the module docstring for what that
        guarantees at each ``synchronous`` level) or, when the database cannot be
        written, kept in memory. Never raises for a disk problem.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"outbox {self.path} is closed")
            now = self._clock()
            message = SpooledMessage(self._next_id, topic, bytes(payload), now)
            if message.size > self._max_bytes:
                self._count_drop("full", 1)
                return None
            self._next_id += 1
            self._expire_if_due(now)
            self._reopen_if_due()
            retry = self._writable or time.monotonic() - self._write_failed_at >= RETRY_WRITE_S
            outcome = self._write(message) if self._conn is not None and retry else "failed"
            if outcome == "failed" and self._conn is not None and self._writable:
                outcome = self._write(message)  # a corrupt file was replaced: try the new one
            if outcome == "written":
                return message.id
            if outcome == "refused":
                return None  # the when_full policy said no (counted)
            return message.id if self._keep_in_memory(message) else None

    def read(self, after_id: int, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` unacknowledged messages with ids above ``after_id``, in order."""
        with self._lock:
            if self._closed or limit <= 0:
                return []
            self._expire_if_due(self._clock())
            if any(row_id > after_id for row_id in self._pending_acks):
                self._flush_acks()
            rows: list[SpooledMessage] = []
            if self._conn is not None:
                try:
                    cursor = self._conn.execute(
                        "SELECT id, topic, payload, created_at FROM outbox "
                        "WHERE id > ? ORDER BY id LIMIT ?",
                        (after_id, limit),
                    )
                    rows = [SpooledMessage(r[0], r[1], bytes(r[2]), r[3]) for r in cursor]
                except sqlite3.DatabaseError as exc:
                    # Nothing rather than newer in-memory events ahead of older rows.
                    self._database_error(exc, "read")
                    return []
            # In-memory events are always newer than every row on disk.
            for row_id, message in self._memory.items():
                if len(rows) >= limit:
                    break
                if row_id > after_id:
                    rows.append(message)
            return rows

    def ack(self, ids: Iterable[int]) -> None:
        """The broker has these: delete them (in batches; see ``ACK_BATCH``)."""
        with self._lock:
            if self._closed:
                return
            for row_id in ids:
                kept = self._memory.pop(row_id, None)
                if kept is not None:
                    self._memory_bytes -= kept.size
                    continue
                if not self._pending_acks:
                    self._first_pending_at = time.monotonic()
                self._pending_acks.add(row_id)
            if len(self._pending_acks) >= ACK_BATCH or (
                self._pending_acks and time.monotonic() - self._first_pending_at >= ACK_DELAY_S
            ):
                self._flush_acks()

    def flush(self) -> None:
        """Delete acknowledged rows, write in-memory events, expire old ones: now."""
        self._maintain(force=True)

    def maintain(self) -> None:
        """What :meth:`flush` does, but each part only when due: for an idle tick.

        Acknowledged rows are deleted; in-memory events are written again at most every
        ``RETRY_WRITE_S`` after a failure; expiry runs at most every ``EXPIRE_EVERY_S``.
        """
        self._maintain(force=False)

    def _maintain(self, force: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._expire_if_due(self._clock(), force=force)
            self._reopen_if_due()
            self._flush_acks()
            due = force or time.monotonic() - self._write_failed_at >= RETRY_WRITE_S
            if self._memory and self._conn is not None and due:
                self._write(None)

    def depth(self) -> int:
        """Events not yet acknowledged; cheap (no query)."""
        with self._lock:
            return self._depth()

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest: float | None = None
            if not self._closed:
                now = self._clock()
                self._expire_if_due(now, force=True)
                self._flush_acks()
                oldest = self._oldest_created_at()
                if oldest is not None:
                    oldest = round(max(0.0, now - oldest), 3)
            return OutboxStats(
                depth=self._depth(),
                bytes=self._db_bytes + self._memory_bytes,
                in_memory=len(self._memory),
                dropped=sum(self._dropped.values()),
                dropped_full=self._dropped["full"],
                dropped_expired=self._dropped["expired"],
                dropped_unwritable=self._dropped["unwritable"],
                dropped_corrupt=self._dropped["corrupt"],
                oldest_age_s=oldest,
                writable=self._writable and self._conn is not None,
            )

    def close(self) -> None:
        """Delete acknowledged rows, write in-memory events, close the database."""
        with self._lock:
            if self._closed:
                return
            self._flush_acks()
            if self._memory and self._conn is not None:
                self._write(None)
            if self._memory:
                log.error(
                    "outbox %s closed with %d event(s) that could not be written to disk; "
                    "they are lost",
                    self.path,
                    len(self._memory),
                )
                self._count_drop("unwritable", len(self._memory))
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.close()
                except sqlite3.Error as exc:
                    log.warning("closing outbox %s: %s", self.path, exc)
                self._conn = None
            log.info("outbox %s closed; %d event(s) left for the next start", self.path,
                     self._db_count)  # fmt: skip

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        """Open (or create) the database; move a corrupt one aside; never raise."""
        self._last_open_try = time.monotonic()
        try:
            self._conn = self._connect()
        except (sqlite3.DatabaseError, _CorruptDatabaseError) as exc:
            if not _is_corruption(exc):
                self._conn = None
                self._writable = False
                log.error(
                    "cannot open outbox %s (%s); events are kept in memory (at most %d) "
                    "until it can be opened. Check free space and permissions of the "
                    "state folder",
                    self.path,
                    exc,
                    self.settings.memory_events,
                )
                return
            self._set_aside(str(exc))
            try:
                self._conn = self._connect()
            except (sqlite3.DatabaseError, _CorruptDatabaseError) as again:
                self._conn = None
                self._writable = False
                log.error("cannot create a fresh outbox %s (%s)", self.path, again)
                return
        if not self._writable:
            log.info("outbox %s is open again", self.path)
        self._writable = True

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("outbox %s: SQLite refused WAL mode (%s)", self.path, mode)
            conn.execute(f"PRAGMA synchronous={self.settings.synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _CorruptDatabaseError("; ".join(str(p) for p in problems[:3]))
            count, size, max_id = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM({_SIZE_SQL}), 0), COALESCE(MAX(id), 0) "
                "FROM outbox"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        self._db_count, self._db_bytes = int(count), int(size)
        # Ids keep increasing within a process even across a fresh file, so the sender's
        # position stays meaningful; in-memory rows always sort after disk rows.
        self._next_id = max(self._next_id, int(max_id) + 1)
        for message in self._memory.values():
            self._next_id = max(self._next_id, message.id + 1)
        return conn

    def _set_aside(self, problem: str) -> None:
        """Keep a corrupt database for inspection and start again empty."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        lost = self._db_count
        stamp = time.time_ns() // 1_000_000
        kept = []
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            try:
                if suffix == "-shm":
                    part.unlink(missing_ok=True)  # an index of the WAL, rebuilt on open
                elif part.exists():
                    aside = part.with_name(f"{part.name}.corrupt-{stamp}")
                    os.replace(part, aside)
                    kept.append(aside.name)
            except OSError as exc:
                log.error("could not move %s aside (%s)", part, exc)
        self._db_count = self._db_bytes = 0
        self._pending_acks.clear()
        log.error(
            "outbox %s is corrupt (%s); kept as %s and started empty: %s",
            self.path,
            problem,
            ", ".join(kept) or "nothing",
            f"{lost} spooled event(s) in it are lost" if lost else "whatever it held is lost",
        )
        if lost:
            self._count_drop("corrupt", lost)

    def _reopen_if_due(self) -> None:
        if self._conn is None and time.monotonic() - self._last_open_try >= REOPEN_EVERY_S:
            self._open()

    # -- writing ----------------------------------------------------------------------

    def _write(self, message: SpooledMessage | None) -> _Outcome:
        """In one transaction: the in-memory events (oldest first), then ``message``.

        "refused": ``message`` was not written because of ``when_full`` (counted);
        "failed": nothing changed on disk (the error is logged, ``_writable`` is False
        unless a corrupt file was replaced).
        """
        assert self._conn is not None
        pending = [*self._memory.values(), *([message] if message is not None else [])]
        count, size = self._db_count, self._db_bytes
        written: list[SpooledMessage] = []
        drops = 0
        acks_flushed = False
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for item in pending:
                over = count + 1 > self.settings.max_events or size + item.size > self._max_bytes
                if over and self._pending_acks and not acks_flushed:
                    freed_count, freed_size = self._delete(sorted(self._pending_acks))
                    count, size = count - freed_count, size - freed_size
                    acks_flushed = True
                    over = (
                        count + 1 > self.settings.max_events
                        or size + item.size > self._max_bytes
                    )
                if over:
                    if self.settings.when_full == "drop-newest":
                        drops += 1
                        continue
                    freed_count, freed_size = self._drop_oldest(count, size, item.size)
                    count, size = count - freed_count, size - freed_size
                    drops += freed_count
                self._conn.execute(
                    "INSERT INTO outbox (id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                    (item.id, item.topic, item.payload, item.created_at),
                )
                count, size = count + 1, size + item.size
                written.append(item)
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self._database_error(exc, "write")
            return "failed"
        self._db_count, self._db_bytes = count, size
        if acks_flushed:
            self._pending_acks.clear()
        if self._memory:
            log.info("outbox %s: wrote %d event(s) kept in memory", self.path, len(self._memory))
            self._memory.clear()
            self._memory_bytes = 0
        if not self._writable:
            log.info("outbox %s is writable again", self.path)
            self._writable = True
        if drops:
            self._count_drop("full", drops)
        return "written" if message is None or message in written else "refused"

    def _drop_oldest(self, count: int, size: int, incoming: int) -> tuple[int, int]:
        """Delete the oldest rows until one of ``incoming`` bytes fits (in a transaction)."""
        assert self._conn is not None
        need_count = count + 1 - self.settings.max_events
        need_size = size + incoming - self._max_bytes
        freed_count = freed_size = 0
        last_id = None
        cursor = self._conn.execute(f"SELECT id, {_SIZE_SQL} FROM outbox ORDER BY id")
        for row_id, row_size in cursor:
            if freed_count >= need_count and freed_size >= need_size:
                break
            freed_count += 1
            freed_size += int(row_size)
            last_id = int(row_id)
        cursor.close()
        if last_id is not None:
            self._conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        return freed_count, freed_size

    def _keep_in_memory(self, message: SpooledMessage) -> bool:
        limit = self.settings.memory_events
        if len(self._memory) >= limit:
            if limit == 0 or self.settings.when_full == "drop-newest":
                self._count_drop("unwritable", 1)
                return False
            _, oldest = self._memory.popitem(last=False)
            self._memory_bytes -= oldest.size
            self._count_drop("unwritable", 1)
        self._memory[message.id] = message
        self._memory_bytes += message.size
        return True

    # -- deleting ---------------------------------------------------------------------

    def _flush_acks(self) -> None:
        if not self._pending_acks or self._conn is None:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            freed_count, freed_size = self._delete(sorted(self._pending_acks))
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self._database_error(exc, "delete acknowledged rows from")
            return
        self._db_count -= freed_count
        self._db_bytes -= freed_size
        self._pending_acks.clear()

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        """Delete rows by id (inside a transaction); how many and their bytes."""
        assert self._conn is not None
        freed_count = freed_size = 0
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start : start + DELETE_CHUNK]
            marks = ",".join("?" * len(chunk))
            sizes = self._conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING {_SIZE_SQL}", chunk
            ).fetchall()
            freed_count += len(sizes)
            freed_size += sum(int(s[0]) for s in sizes)
        return freed_count, freed_size

    def _expire_if_due(self, now: float, force: bool = False) -> None:
        max_age = self.settings.max_age_s
        if max_age <= 0:
            return
        tick = time.monotonic()
        if not force and tick - self._last_expire < EXPIRE_EVERY_S:
            return
        self._last_expire = tick
        cutoff = now - max_age
        expired = 0
        while self._memory:
            first = next(iter(self._memory.values()))
            if first.created_at >= cutoff:
                break
            self._memory.popitem(last=False)
            self._memory_bytes -= first.size
            expired += 1
        if self._conn is not None:
            expired += self._expire_rows(cutoff)
        if expired:
            self._count_drop("expired", expired)

    def _expire_rows(self, cutoff: float) -> int:
        """Delete rows older than ``cutoff`` from the oldest end; how many were unsent."""
        assert self._conn is not None
        try:
            first = self._conn.execute(
                "SELECT created_at FROM outbox ORDER BY id LIMIT 1"
            ).fetchone()
            if first is None or float(first[0]) >= cutoff:
                return 0
            young = self._conn.execute(
                "SELECT id FROM outbox WHERE created_at >= ? ORDER BY id LIMIT 1", (cutoff,)
            ).fetchone()
            bound = int(young[0]) if young is not None else self._next_id
            self._conn.execute("BEGIN IMMEDIATE")
            sizes = self._conn.execute(
                f"DELETE FROM outbox WHERE id < ? RETURNING id, {_SIZE_SQL}", (bound,)
            ).fetchall()
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self._database_error(exc, "expire rows in")
            return 0
        self._db_count -= len(sizes)
        self._db_bytes -= sum(int(s[1]) for s in sizes)
        acknowledged = {int(s[0]) for s in sizes} & self._pending_acks
        self._pending_acks -= acknowledged
        return len(sizes) - len(acknowledged)

    # -- figures and failures ---------------------------------------------------------

    def _depth(self) -> int:
        # An acknowledgement can name a row already dropped or expired while in flight;
        # it leaves the pending set at the next flush.
        return max(0, self._db_count - len(self._pending_acks)) + len(self._memory)

    def _oldest_created_at(self) -> float | None:
        if self._conn is not None:
            try:
                row = self._conn.execute(
                    "SELECT created_at FROM outbox ORDER BY id LIMIT 1"
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                self._database_error(exc, "read")
                row = None
            if row is not None:
                return float(row[0])
        for message in self._memory.values():
            return message.created_at
        return None

    def _rollback(self) -> None:
        if self._conn is None or not self._conn.in_transaction:
            return
        with contextlib.suppress(sqlite3.DatabaseError):
            self._conn.execute("ROLLBACK")

    def _database_error(self, exc: sqlite3.DatabaseError, doing: str) -> None:
        if _is_corruption(exc):
            self._set_aside(str(exc))
            self._open()
            return
        self._write_failed_at = time.monotonic()
        if self._writable:
            log.error(
                "cannot %s outbox %s (%s); events are kept in memory (at most %d) until it "
                "works again. Check free space and permissions of the state folder",
                doing,
                self.path,
                exc,
                self.settings.memory_events,
            )
        self._writable = False

    def _count_drop(self, reason: DropReason, count: int) -> None:
        self._dropped[reason] += count
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._drop_logged_at < DROP_LOG_EVERY_S:
            return
        self._drop_logged_at = now
        unlogged, self._drops_unlogged = self._drops_unlogged, 0
        log.warning(
            "outbox %s dropped %d event(s) (%s); totals: %s. See [outbox] in "
            "docs/configuration.md for the bounds and the when_full policy",
            self.path,
            unlogged,
            reason,
            ", ".join(f"{r} {self._dropped[r]}" for r in DROP_REASONS if self._dropped[r]),
        )


def _is_corruption(exc: BaseException) -> bool:
    """SQLite's own verdict: the file is damaged or is not a database at all."""
    if isinstance(exc, _CorruptDatabaseError):
        return True
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text
