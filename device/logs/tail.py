"""Following log files like ``tail -F``: globs, rotation, truncation, resumable offsets.

How a file is followed
----------------------
Files are polled (every ``poll_interval_s``), which works on every filesystem, NFS and
overlay included, and costs a few ``fstat`` calls a second. A file is identified by its
device and inode, plus a fingerprint of its first bytes (up to 256), so a reused inode
number is not mistaken for the file it replaced.

* **Rename rotation** (logrotate's default, ``create``): the old file keeps its inode and
  the follower keeps its descriptor. It is read to its end and kept open until it has not
  grown for ``rotate_wait_s``, because the writing program goes on writing to it until it
  reopens its log (after logrotate's ``postrotate`` signal); the new file under the name is
  read from its first byte. Nothing is lost or repeated.
* **copytruncate**: the file shrinks below the read offset (or its first bytes change).
  The follower looks next to it for the copy (a name that starts with the file's name and
  whose first bytes are the fingerprint), reads the copy from the offset it had reached
  to the copy's end, and restarts the file at offset 0. Lines the writer adds between
  logrotate's copy and its truncation are in neither file: every tail implementation loses
  them, because they no longer exist anywhere. Without a findable copy (another folder,
  compressed at once), lines the follower had not yet read when the file was truncated are
  lost too.
* **Deleted** files are read to their end through the open descriptor, then closed.
* **New files** matching a pattern are read from their first byte.
* **start_at** ("end" or "beginning") applies only to the files found by the very first
  scan when there is no saved state; with saved state, unknown files are new and read
  from the beginning. "end" starts after the last complete line, so a line being written
  at that moment is read whole.

Positions and delivery guarantees
---------------------------------
A line's offsets travel with it (``LogLine.offset``/``next_offset``/``file_key``). The
consumer calls ``ack(line)`` once it has processed the line; the state file records,
per file, the offset after the last acknowledged line (plus path, device, inode and
fingerprint), written atomically every ``checkpoint_interval_s`` and on ``close()``.

* A clean stop (``close()`` after the consumer acknowledged what it processed) and a
  restart continue exactly after the last acknowledged line: exactly once.
* After a crash (SIGKILL, power cut), the lines acknowledged since the last checkpoint
  are read again: at least once, with at most ``checkpoint_interval_s`` worth of
  duplicates. Exactly once across a crash would need the consumer's own output and the
  position committed in one transaction, which an MQTT publish cannot join.
* A file rotated while the daemon was down is found again by inode next to its old name
  (``app.log.1``) and finished from its saved offset.

Bad content is never fatal: invalid UTF-8 becomes U+FFFD (counted), a line over
``max_line_bytes`` is cut and the rest skipped up to its newline without holding it
(counted), an unterminated last line is held until its newline arrives, or handed out
flagged ``partial`` after ``partial_line_timeout_s`` without growth (None: wait for
ever) or when its file is finished. I/O errors close the file (counted, logged once);
the next scan opens it again at the position reached.

Threads: ``FileFollower`` is synchronous (``poll()`` from one thread; ``ack()`` and
``stats()`` from any). ``TailSource`` runs one in its own thread and hands lines to the
consumer through a bounded queue; when the consumer falls behind the follower simply
reads later (the file is the buffer), so nothing is dropped.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from device.logs.linequeue import LineQueue
from device.logs.lines import LineSplitter, decode_line
from device.logs.record import LogLine
from device.logs.statefile import StateFile

log = logging.getLogger(__name__)

StartAt = Literal["beginning", "end"]
SourceStatus = Literal["starting", "running", "stopped", "failed"]

#: Bytes at the start of a file that identify it beside its inode.
FINGERPRINT_BYTES = 256
#: Names next to a file that are searched for its rotated copy (bounds a huge folder).
MAX_SIBLINGS = 200


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True)
class TailOptions:
    """How files are followed; see the module docstring for what each rule means."""

    start_at: StartAt = "end"
    poll_interval_s: float = 0.25
    #: A rotated or deleted file is closed once it has not grown for this long.
    rotate_wait_s: float = 2.0
    max_line_bytes: int = 16_384
    read_chunk_bytes: int = 65_536
    #: Lines one ``poll()`` returns at most (across files, taken in turn).
    max_batch_lines: int = 1_000
    #: Hand out an unterminated last line after this long without growth (None: never).
    partial_line_timeout_s: float | None = None
    checkpoint_interval_s: float = 1.0
    #: Files followed at once; further matches are ignored with a warning.
    max_files: int = 128
    fsync: bool = True
    #: The hand-over queue of ``TailSource``.
    queue_lines: int = 10_000
    queue_chars: int = 4_000_000

    def __post_init__(self) -> None:
        if self.start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', got {self.start_at!r}")
        if self.poll_interval_s <= 0 or self.rotate_wait_s < 0:
            raise ValueError("poll_interval_s must be > 0 and rotate_wait_s >= 0")
        if min(self.max_line_bytes, self.read_chunk_bytes, self.max_batch_lines) < 1:
            raise ValueError("max_line_bytes, read_chunk_bytes, max_batch_lines must be >= 1")
        if self.partial_line_timeout_s is not None and self.partial_line_timeout_s < 0:
            raise ValueError("partial_line_timeout_s must be >= 0 or None")
        if self.checkpoint_interval_s < 0 or self.max_files < 1:
            raise ValueError("checkpoint_interval_s must be >= 0 and max_files >= 1")


class FilePosition(BaseModel):
    """A followed file's position as saved in the state file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    dev: int = Field(ge=0)
    inode: int = Field(ge=0)
    offset: int = Field(ge=0)
    #: Hex of the file's first bytes when the position was saved (up to 256 bytes).
    fingerprint: str = Field(pattern=r"^([0-9a-f]{2})*$", max_length=2 * FINGERPRINT_BYTES)


class TailState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    files: list[FilePosition] = Field(default_factory=list)


@dataclass(frozen=True)
class TailStats:
    """Counters since the follower started (a consistent snapshot)."""

    lines: int
    bytes: int
    files_open: int
    #: Files renamed away from the patterns (rotation by rename).
    rotations: int
    #: Files that shrank below the read offset or whose first bytes changed.
    truncations: int
    #: copytruncate copies found and finished from the offset reached.
    copies_adopted: int
    #: Files deleted while followed (read to their end, then closed).
    deletions: int
    invalid_utf8_lines: int
    #: Lines cut at ``max_line_bytes``, and the bytes skipped after the cut.
    truncated_lines: int
    skipped_bytes: int
    #: Unterminated lines handed out flagged ``partial``.
    partial_lines: int
    #: Bytes of unfinished lines dropped because their file was truncated under them.
    dropped_partial_bytes: int
    open_errors: int
    read_errors: int
    checkpoints: int
    checkpoint_errors: int
    queue_depth: int = 0
    status: SourceStatus = "running"


class _Followed:
    """One open file; mutated only by the polling thread (``committed`` under the lock)."""

    __slots__ = (
        "aliases",
        "closed",
        "committed",
        "deleted",
        "dev",
        "fd",
        "fingerprint",
        "generation",
        "ino",
        "key",
        "last_growth",
        "path",
        "read_pos",
        "rotated",
        "splitter",
    )

    def __init__(self, path: str, dev: int, ino: int, fd: int, max_line: int) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino
        self.fd: int | None = fd
        self.read_pos = 0
        self.generation = 0
        self.key = f"{dev}:{ino}:0"
        self.splitter = LineSplitter(max_line)
        self.fingerprint = b""
        self.rotated = False
        self.deleted = False
        self.closed = False
        self.last_growth = 0.0
        self.committed = 0
        #: Keys of an earlier file whose lines this one continues (a copytruncate copy).
        self.aliases: list[str] = []

    @property
    def ident(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def line_pos(self) -> int:
        """Offset where the next line to hand out starts."""
        return self.read_pos - self.splitter.pending_size


class FileFollower:
    """Follows the files matching ``patterns``; see the module docstring.

    ``patterns`` are glob patterns (or plain paths); ``state_path`` is where positions are
    saved (None: nothing is saved, every start follows ``start_at``).
    """

    def __init__(
        self,
        name: str,
        patterns: Sequence[str | Path],
        state_path: Path | None,
        options: TailOptions | None = None,
        clock: Clock = time,
    ) -> None:
        if not patterns:
            raise ValueError(f"log source {name}: no file patterns given")
        self.name = name
        self.patterns = tuple(str(p) for p in patterns)
        self.options = options or TailOptions()
        self._clock = clock
        self._state = StateFile(state_path, self.options.fsync) if state_path else None
        self._files: dict[tuple[int, int], _Followed] = {}
        self._by_key: dict[str, _Followed] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._next_checkpoint = 0.0
        self._next_scan = 0.0
        self._scanned = False
        self._turn = 0
        self._warned: set[str] = set()
        self._resume: dict[tuple[int, int], FilePosition] = {}
        self._had_state = False
        self._closed = False
        self._c = dict.fromkeys(
            (
                "lines",
                "bytes",
                "rotations",
                "truncations",
                "copies_adopted",
                "deletions",
                "invalid_utf8_lines",
                "truncated_lines",
                "skipped_bytes",
                "partial_lines",
                "dropped_partial_bytes",
                "open_errors",
                "read_errors",
            ),
            0,
        )
        if self._state is not None:
            saved = self._state.load(TailState)
            if saved is not None:
                self._had_state = True
                self._resume = {(p.dev, p.inode): p for p in saved.files}

    # -- public ---------------------------------------------------------------------------

    def poll(self, max_lines: int | None = None) -> list[LogLine]:
        """Read what the files gained since the last call: at most ``max_lines`` lines."""
        if self._closed:
            return []
        budget = max_lines if max_lines is not None else self.options.max_batch_lines
        self.discover()
        now = self._clock.monotonic()
        out: list[LogLine] = []
        followed = list(self._files.values())
        if followed:
            self._turn = (self._turn + 1) % len(followed)
            followed = followed[self._turn :] + followed[: self._turn]
        for item in followed:
            if item.closed:
                continue
            if len(out) >= budget:
                break
            self._service(item, budget, out, now)
        self._forget_finished()
        return out

    def discover(self) -> None:
        """Look for new and rotated files now (if the scan interval passed), reading nothing.

        ``TailSource`` calls this while the consumer is behind, so that a file created and
        rotated away meanwhile is opened (and so kept), and a copytruncate is connected to
        its copy, even though nothing is read yet. A file that lives under its name for
        less than one poll interval can still be missed; a pattern that also matches the
        rotated names (``app.log*``) closes that gap for rename rotation.
        """
        if self._closed:
            return
        now = self._clock.monotonic()
        if now >= self._next_scan:
            self._scan(now)
            for item in list(self._files.values()):
                if not item.closed:
                    self._check(item, now)
            self._next_scan = now + self.options.poll_interval_s

    def ack(self, lines: LogLine | Sequence[LogLine]) -> None:
        """Mark lines as processed: a restart resumes after them. Any thread."""
        if isinstance(lines, LogLine):
            lines = (lines,)
        with self._lock:
            by_key = self._by_key
            for line in lines:
                key = line.file_key
                if key is None or line.next_offset is None:
                    continue
                item = by_key.get(key)
                if item is not None and line.next_offset > item.committed:
                    item.committed = line.next_offset
                    self._dirty = True

    def checkpoint(self, force: bool = False) -> None:
        """Save positions if something changed and the interval passed (or ``force``)."""
        if self._state is None:
            return
        now = self._clock.monotonic()
        if not force and (not self._dirty or now < self._next_checkpoint):
            return
        with self._lock:
            positions = [
                FilePosition(
                    path=item.path,
                    dev=item.dev,
                    inode=item.ino,
                    offset=item.committed,
                    fingerprint=item.fingerprint.hex(),
                )
                for item in self._files.values()
                if not item.deleted
            ]
            self._dirty = False
        self._next_checkpoint = now + self.options.checkpoint_interval_s
        self._state.save(TailState(files=positions))

    def close(self) -> None:
        """Save the acknowledged positions and close every file."""
        if self._closed:
            return
        self.checkpoint(force=True)
        for item in self._files.values():
            self._close_fd(item)
        self._closed = True

    def stats(self) -> TailStats:
        with self._lock:
            counters = dict(self._c)
            files_open = sum(1 for item in self._files.values() if item.fd is not None)
        return TailStats(
            files_open=files_open,
            checkpoints=self._state.writes if self._state else 0,
            checkpoint_errors=self._state.write_errors if self._state else 0,
            lines=counters["lines"],
            bytes=counters["bytes"],
            rotations=counters["rotations"],
            truncations=counters["truncations"],
            copies_adopted=counters["copies_adopted"],
            deletions=counters["deletions"],
            invalid_utf8_lines=counters["invalid_utf8_lines"],
            truncated_lines=counters["truncated_lines"],
            skipped_bytes=counters["skipped_bytes"],
            partial_lines=counters["partial_lines"],
            dropped_partial_bytes=counters["dropped_partial_bytes"],
            open_errors=counters["open_errors"],
            read_errors=counters["read_errors"],
        )

    def positions(self) -> dict[str, int]:
        """Path → offset after the last acknowledged line, for every followed file."""
        with self._lock:
            return {item.path: item.committed for item in self._files.values()}

    # -- discovering files ---------------------------------------------------------------

    def _scan(self, now: float) -> None:
        seen: set[tuple[int, int]] = set()
        for pattern in self.patterns:
            magic = any(char in pattern for char in "*?[")
            paths = sorted(glob.glob(pattern)) if magic else [pattern]
            for path in paths:
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                ident = (info.st_dev, info.st_ino)
                if ident in seen:
                    continue
                seen.add(ident)
                item = self._files.get(ident)
                if item is None:
                    self._open_new(path, now)
                    continue
                if item.path != path and not item.closed:
                    item.path = path
                    self._dirty = True
                if item.rotated and not item.closed and not item.deleted:
                    item.rotated = False  # back under a matching name
        for item in self._files.values():
            if not (item.closed or item.rotated or item.ident in seen):
                self._mark_gone(item, now)
        if not self._scanned:
            self._scanned = True
            self._adopt_rotated_after_restart(now)
            self._resume.clear()

    def _open_new(self, path: str, now: float, rotated: bool = False) -> _Followed | None:
        if sum(1 for item in self._files.values() if not item.closed) >= self.options.max_files:
            self._warn_once(
                f"max:{path}",
                "log source %s: already following %d files; %s is ignored (raise max_files)",
                self.name,
                self.options.max_files,
                path,
            )
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            with self._lock:
                self._c["open_errors"] += 1
            self._warn_once(
                f"open:{path}",
                "log source %s: cannot open %s (%s); retrying at every scan",
                self.name,
                path,
                exc,
            )
            return None
        try:
            info = os.fstat(fd)
            ident = (info.st_dev, info.st_ino)
            if ident in self._files:
                os.close(fd)
                return None
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
        except OSError as exc:
            os.close(fd)
            with self._lock:
                self._c["open_errors"] += 1
            self._warn_once(
                f"open:{path}", "log source %s: cannot read %s (%s)", self.name, path, exc
            )
            return None
        item = _Followed(path, info.st_dev, info.st_ino, fd, self.options.max_line_bytes)
        item.fingerprint = head
        item.last_growth = now
        item.rotated = rotated
        start, why = self._start_offset(item, head, info.st_size)
        item.read_pos = start
        item.committed = start
        log.info("log source %s: following %s from offset %d (%s)", self.name, path, start, why)
        with self._lock:
            self._files[ident] = item
            self._by_key[item.key] = item
            self._dirty = True
        return item

    def _start_offset(self, item: _Followed, head: bytes, size: int) -> tuple[int, str]:
        saved = self._resume.pop(item.ident, None)
        if saved is not None:
            fingerprint = bytes.fromhex(saved.fingerprint)
            if head[: len(fingerprint)] == fingerprint and len(head) >= len(fingerprint):
                if saved.offset <= size:
                    return saved.offset, "saved position"
                with self._lock:
                    self._c["truncations"] += 1
                return 0, "saved position is past its end: truncated while stopped"
            return 0, "inode reused by another file since the saved position"
        if not self._scanned and not self._had_state and self.options.start_at == "end":
            return self._aligned_end(item, size), "start_at = end"
        return 0, "new file"

    def _aligned_end(self, item: _Followed, size: int) -> int:
        """After the last complete line, so that a line being written is read whole."""
        assert item.fd is not None
        if size == 0:
            return 0
        window = min(size, self.options.max_line_bytes)
        tail = os.pread(item.fd, window, size - window)
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return size - window + newline + 1
        if window == size:
            return 0
        item.splitter.discard_until_newline()
        return size

    def _adopt_rotated_after_restart(self, now: float) -> None:
        """Finish files that were rotated while the daemon was down, from their offset."""
        for saved in list(self._resume.values()):
            folder, base = os.path.split(saved.path)
            for candidate in [saved.path, *_siblings(folder or ".", base)]:
                try:
                    info = os.stat(candidate)
                except OSError:
                    continue
                if (info.st_dev, info.st_ino) != (saved.dev, saved.inode):
                    continue
                item = self._open_new(candidate, now, rotated=True)
                if item is not None:
                    with self._lock:
                        self._c["rotations"] += 1
                    log.info(
                        "log source %s: %s was rotated to %s while stopped; finishing it",
                        self.name,
                        saved.path,
                        candidate,
                    )
                break

    # -- reading --------------------------------------------------------------------------

    def _service(self, item: _Followed, budget: int, out: list[LogLine], now: float) -> None:
        for target in self._check(item, now):
            if len(out) >= budget:
                return
            at_end = self._read(target, budget, out, now)
            if not at_end:
                return
            timeout = self.options.partial_line_timeout_s
            idle = now - target.last_growth
            if target.splitter.pending_size and timeout is not None and idle >= timeout:
                self._flush_partial(target, out)
            if target.rotated and idle >= self.options.rotate_wait_s:
                self._flush_partial(target, out)
                self._finish(target)

    def _check(self, item: _Followed, now: float) -> list[_Followed]:
        """Notice truncation, replacement and deletion; extend the fingerprint.

        Returns what to read, in order: nothing (the file failed), the file, or the
        copytruncate copy that was adopted followed by the file.
        """
        fd = item.fd
        if fd is None:
            return []
        try:
            info = os.fstat(fd)
            restart = info.st_size < item.read_pos
            if not restart and item.fingerprint:
                restart = os.pread(fd, len(item.fingerprint), 0) != item.fingerprint
        except OSError as exc:
            self._read_failed(item, exc)
            return []
        copy = self._restart(item, now) if restart else None
        if info.st_nlink == 0 and not item.rotated:
            self._mark_gone(item, now)
        if len(item.fingerprint) < FINGERPRINT_BYTES and info.st_size > len(item.fingerprint):
            try:
                head = os.pread(fd, FINGERPRINT_BYTES, 0)
            except OSError as exc:
                self._read_failed(item, exc)
                return []
            # Extend, never replace: a different head means the file changed under us,
            # which the next check must see. Recording the head of content not read yet
            # is what lets a later truncation find this content's copy.
            if head[: len(item.fingerprint)] == item.fingerprint:
                item.fingerprint = head
        return [item] if copy is None else [copy, item]

    def _mark_gone(self, item: _Followed, now: float) -> None:
        """The name no longer leads to the file: it was renamed away or deleted."""
        try:
            deleted = item.fd is not None and os.fstat(item.fd).st_nlink == 0
        except OSError:
            deleted = False
        item.rotated = True
        item.deleted = deleted
        item.last_growth = now
        with self._lock:
            self._c["deletions" if deleted else "rotations"] += 1
        log.info(
            "log source %s: %s was %s; reading it to its end",
            self.name,
            item.path,
            "deleted" if deleted else "rotated",
        )

    def _read(self, item: _Followed, budget: int, out: list[LogLine], now: float) -> bool:
        """Read lines into ``out`` up to the budget; True when the file's end was reached."""
        fd = item.fd
        assert fd is not None
        chunk = self.options.read_chunk_bytes
        name, path, key = self.name, item.path, item.key
        wall = self._clock.time()
        lines = 0
        size = 0
        invalid = 0
        cut = 0
        skipped = 0
        append = out.append
        at_end = True
        while len(out) < budget:
            try:
                data = os.pread(fd, chunk, item.read_pos)
                # A truncation between the check in _service and this read, followed by
                # fast rewriting, would hand us the new content from the middle: check
                # the first bytes again and let the next poll restart the file.
                fingerprint = item.fingerprint
                if data and fingerprint and os.pread(fd, len(fingerprint), 0) != fingerprint:
                    at_end = False
                    break
            except OSError as exc:
                self._read_failed(item, exc)
                return False
            if not data:
                break
            pos = item.line_pos
            raws, consumed = item.splitter.feed(data, budget - len(out))
            item.read_pos += consumed
            item.last_growth = now
            size += consumed
            for payload, used, truncated in raws:
                start = pos
                pos += used
                bad = False
                if truncated:
                    cut += 1
                    skipped += used - 1 - len(payload)
                    decoded = decode_line(payload, True)
                    text, bad = decoded.text, decoded.invalid_utf8
                else:
                    try:
                        text = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        text = payload.decode("utf-8", "replace")
                        bad = True
                    if text and text[-1] == "\r":
                        text = text[:-1]
                if bad:
                    invalid += 1
                append(LogLine(name, path, text, wall, start, pos, key, None, truncated, bad))
            lines += len(raws)
            if consumed < len(data):
                at_end = False
                break
            if len(data) < chunk:
                break
        else:
            at_end = False
        if size:
            with self._lock:
                c = self._c
                c["lines"] += lines
                c["bytes"] += size
                c["invalid_utf8_lines"] += invalid
                c["truncated_lines"] += cut
                c["skipped_bytes"] += skipped
        return at_end

    def _flush_partial(self, item: _Followed, out: list[LogLine]) -> None:
        start = item.line_pos
        raw = item.splitter.flush()
        if raw is None:
            return
        payload, used, truncated = raw
        decoded = decode_line(payload, truncated)
        out.append(
            LogLine(
                self.name,
                item.path,
                decoded.text,
                self._clock.time(),
                offset=start,
                next_offset=start + used,
                file_key=item.key,
                truncated=truncated,
                invalid_utf8=decoded.invalid_utf8,
                partial=True,
            )
        )
        with self._lock:
            self._c["lines"] += 1
            self._c["partial_lines"] += 1
            self._c["invalid_utf8_lines"] += int(decoded.invalid_utf8)
            self._c["truncated_lines"] += int(truncated)

    def _restart(self, item: _Followed, now: float) -> _Followed | None:
        """The file was truncated or rewritten: finish its copy if there is one, go to 0.

        Returns the adopted copy, which continues from the offset the file had reached
        and with its unfinished line, so the caller reads it before the file's new content.
        """
        copy = None if item.rotated else self._find_copy(item, now)
        dropped = item.splitter.pending_size
        with self._lock:
            self._c["truncations"] += 1
            if copy is not None:
                self._c["copies_adopted"] += 1
                # The copy continues where the file was: same offset, same unfinished line.
                copy.read_pos = item.read_pos
                copy.splitter = item.splitter
                copy.committed = item.committed
                item.splitter = LineSplitter(self.options.max_line_bytes)
                # Lines handed out before the truncation are acknowledged on the copy.
                copy.aliases.append(item.key)
                self._by_key[item.key] = copy
            else:
                self._c["dropped_partial_bytes"] += dropped
                item.splitter.reset()
            if copy is None:
                del self._by_key[item.key]
            item.generation += 1
            item.key = f"{item.dev}:{item.ino}:{item.generation}"
            self._by_key[item.key] = item
            item.read_pos = 0
            item.committed = 0
            item.fingerprint = b""
            self._dirty = True
        if copy is not None:
            log.info(
                "log source %s: %s was truncated (copytruncate); finishing its copy %s "
                "from offset %d",
                self.name,
                item.path,
                copy.path,
                copy.read_pos,
            )
        else:
            log.info(
                "log source %s: %s was truncated or replaced; reading it from the start",
                self.name,
                item.path,
            )
        return copy

    def _find_copy(self, item: _Followed, now: float) -> _Followed | None:
        if not item.fingerprint:
            return None
        folder, base = os.path.split(item.path)
        for candidate in _siblings(folder or ".", base):
            try:
                info = os.stat(candidate)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in self._files or info.st_size < item.read_pos:
                continue
            try:
                with open(candidate, "rb") as handle:
                    head = handle.read(len(item.fingerprint))
            except OSError:
                continue
            if head != item.fingerprint:
                continue
            copy = self._open_new(candidate, now, rotated=True)
            if copy is not None and copy.fingerprint[: len(head)] == head:
                return copy
        return None

    def _finish(self, item: _Followed) -> None:
        self._close_fd(item)
        item.closed = True
        self._dirty = True
        log.info(
            "log source %s: finished %s (%s)",
            self.name,
            item.path,
            "deleted" if item.deleted else "rotated",
        )

    def _forget_finished(self) -> None:
        """Drop closed files once their lines are acknowledged (deleted ones at once)."""
        done = [
            item
            for item in self._files.values()
            if item.closed and (item.deleted or item.committed >= item.line_pos)
        ]
        if not done:
            return
        with self._lock:
            for item in done:
                self._files.pop(item.ident, None)
                for key in (item.key, *item.aliases):
                    self._by_key.pop(key, None)
            self._dirty = True

    def _read_failed(self, item: _Followed, exc: OSError) -> None:
        with self._lock:
            self._c["read_errors"] += 1
        self._warn_once(
            f"read:{item.path}",
            "log source %s: cannot read %s (%s); it is closed and opened again at the next scan",
            self.name,
            item.path,
            exc,
        )
        # Reopening continues at the line that was being read; nothing acknowledged is lost.
        self._resume[item.ident] = FilePosition(
            path=item.path,
            dev=item.dev,
            inode=item.ino,
            offset=item.line_pos,
            fingerprint=item.fingerprint.hex(),
        )
        self._close_fd(item)
        with self._lock:
            self._files.pop(item.ident, None)
            for key in (item.key, *item.aliases):
                self._by_key.pop(key, None)

    def _close_fd(self, item: _Followed) -> None:
        if item.fd is not None:
            with contextlib.suppress(OSError):
                os.close(item.fd)
            item.fd = None

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned or len(self._warned) > 1000:
            return
        self._warned.add(key)
        log.warning(message, *args)


def _siblings(folder: str, base: str) -> list[str]:
    """Names in ``folder`` that start with ``base`` (rotated copies), newest first."""
    try:
        with os.scandir(folder) as entries:
            found = [
                entry
                for entry in entries
                if entry.name != base and entry.name.startswith(base) and entry.is_file()
            ]
    except OSError:
        return []
    found = found[:MAX_SIBLINGS]
    found.sort(key=_mtime, reverse=True)
    return [entry.path for entry in found]


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


class TailSource:
    """A ``FileFollower`` in its own thread, behind a bounded queue (a ``LogSource``)."""

    def __init__(
        self,
        name: str,
        patterns: Sequence[str | Path],
        state_path: Path | None,
        options: TailOptions | None = None,
        clock: Clock = time,
    ) -> None:
        self.name = name
        self.options = options or TailOptions()
        self.follower = FileFollower(name, patterns, state_path, self.options, clock)
        self._queue = LineQueue(self.options.queue_lines, self.options.queue_chars)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: SourceStatus = "starting"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"log source {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"tail-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading, save the acknowledged positions, close the files."""
        self._stop.set()
        self._queue.close(discard=True)
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning(
                    "log source %s: reader thread did not stop in %.1f s", self.name, timeout_s
                )
                return
        self.follower.close()
        if self._status != "failed":
            self._status = "stopped"

    def get(self, timeout: float | None = None) -> LogLine | None:
        return self._queue.get(timeout)

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[LogLine]:
        return self._queue.get_batch(max_lines, timeout)

    def ack(self, lines: LogLine | Sequence[LogLine]) -> None:
        self.follower.ack(lines)

    def stats(self) -> TailStats:
        return replace(self.follower.stats(), queue_depth=len(self._queue), status=self._status)

    def _run(self) -> None:
        self._status = "running"
        interval = self.options.poll_interval_s
        try:
            while not self._stop.is_set():
                lines = self.follower.poll()
                # While the consumer is behind, keep discovering files (see discover()).
                while lines and not self._queue.put_wait(lines, self._stop, interval):
                    if self._stop.is_set() or self._queue.closed:
                        return
                    self.follower.discover()
                    self.follower.checkpoint()
                self.follower.checkpoint()
                if len(lines) < self.options.max_batch_lines:
                    self._stop.wait(interval)
        except Exception:
            log.exception("log source %s: the reader thread failed", self.name)
            self._status = "failed"
