"""The systemd journal, read through ``journalctl -f -o json`` in a child process.

Why a child process and not libsystemd bindings: ``journalctl`` is on every systemd
device, knows every journal format version, and needs no compiled Python package on the
Pi; its JSON output is stable and documented. The price is one process and JSON
parsing, which is small beside what the lines cost later.

Positions: each entry carries its ``__CURSOR``. The consumer acknowledges lines after
processing them; the cursor of the last acknowledged entry is saved atomically (every
``checkpoint_interval_s`` and at ``stop()``) and the next start runs
``journalctl --after-cursor=CURSOR``. So a clean restart continues exactly after the last
acknowledged entry, and a crash repeats at most one checkpoint interval of entries (at
least once). Without a saved cursor, ``start_at`` chooses ``--lines=0`` (only new
entries) or ``--lines=all`` (the whole journal).

When journalctl exits (journald restarted, the process was killed) it is started again
after an exponential backoff, continuing after the last entry *received*, so the lines
waiting in the queue are not fetched twice (or, when none was received yet with
``start_at = "end"``, from the second the first journalctl started). A saved cursor
that journalctl rejects (``Failed to seek to cursor``: the journal was wiped, or the
file was edited) is dropped with a warning and the source starts again by its
``start_at`` rule.

Bad input is counted, never fatal: a line that is not a JSON object with a cursor,
an entry over ``max_entry_bytes`` (skipped without being held whole), a binary MESSAGE
(a byte array in journalctl's JSON) that is not UTF-8, a message over
``max_message_chars`` (cut). journalctl prints fields over 4096 bytes as null unless
``--all`` is among ``extra_args``; such messages arrive empty and are counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict

from device.errors import SourceError
from device.logs.linequeue import LineQueue
from device.logs.lines import LineSplitter, decode_line
from device.logs.record import LogLine, LogMeta
from device.logs.statefile import StateFile
from device.sources.backoff import ExponentialBackoff

log = logging.getLogger(__name__)

StartAt = Literal["beginning", "end"]
JournalStatus = Literal["starting", "running", "restarting", "stopped", "failed"]

DEFAULT_COMMAND = ("journalctl", "-f", "-o", "json")
#: A child that ran this long before exiting counts as healthy: the backoff starts over.
HEALTHY_RUN_S = 30.0
#: stderr lines of one child that are logged (the rest only kept for ``stats().detail``).
MAX_LOGGED_STDERR = 20


@dataclass(frozen=True)
class JournalOptions:
    """How the journal is read; see the module docstring."""

    #: The program and its fixed arguments; the cursor and --lines are appended.
    command: tuple[str, ...] = DEFAULT_COMMAND
    #: Filters and flags, e.g. ``("-u", "ssh.service", "--priority=warning")``.
    extra_args: tuple[str, ...] = ()
    start_at: StartAt = "end"
    max_entry_bytes: int = 1_048_576
    max_message_chars: int = 16_384
    checkpoint_interval_s: float = 1.0
    restart_min_s: float = 1.0
    restart_max_s: float = 60.0
    queue_lines: int = 10_000
    queue_chars: int = 4_000_000
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', got {self.start_at!r}")
        if not self.command:
            raise ValueError("the journal command must not be empty")
        if self.max_entry_bytes < 1 or self.max_message_chars < 1:
            raise ValueError("max_entry_bytes and max_message_chars must be >= 1")


class JournalState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    #: Cursor of the last acknowledged entry.
    cursor: str | None = None


@dataclass(frozen=True)
class JournalStats:
    lines: int
    #: Output lines that are not a JSON object with a ``__CURSOR``.
    bad_entries: int
    #: Entries over ``max_entry_bytes``, skipped.
    oversized_entries: int
    #: Entries whose MESSAGE journalctl printed as null (over 4096 bytes without --all).
    empty_messages: int
    invalid_utf8_lines: int
    truncated_lines: int
    #: Times journalctl was started again after it exited.
    restarts: int
    checkpoints: int
    checkpoint_errors: int
    queue_depth: int
    status: JournalStatus
    #: Why the source is not running, or journalctl's last complaint.
    detail: str


class JournalSource:
    """Reads the journal in a background thread; a ``LogSource`` (see record.py)."""

    def __init__(
        self, name: str, state_path: Path | None, options: JournalOptions | None = None
    ) -> None:
        self.name = name
        self.options = options or JournalOptions()
        self._state = StateFile(state_path, self.options.fsync) if state_path else None
        self._queue = LineQueue(self.options.queue_lines, self.options.queue_chars)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._acked: str | None = None
        self._received: str | None = None
        self._first_started: float | None = None
        self._dirty = False
        self._next_checkpoint = 0.0
        self._status: JournalStatus = "starting"
        self._detail = ""
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._c = dict.fromkeys(
            (
                "lines",
                "bad_entries",
                "oversized_entries",
                "empty_messages",
                "invalid_utf8_lines",
                "truncated_lines",
                "restarts",
            ),
            0,
        )
        if self._state is not None:
            saved = self._state.load(JournalState)
            if saved is not None and saved.cursor:
                self._acked = self._received = saved.cursor

    # -- public ---------------------------------------------------------------------------

    def open_check(self) -> None:
        """SourceError when the command cannot run at all (for ``check-config``)."""
        program = self.options.command[0]
        if shutil.which(program) is None:
            raise SourceError(
                f"log source {self.name}: {program} is not installed or not on PATH; the "
                "journal source needs systemd's journalctl (or use a file source)"
            )

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"log source {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"journal-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop journalctl and the reader, save the last acknowledged cursor."""
        self._stop.set()
        self._queue.close(discard=True)
        self._terminate()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("log source %s: reader did not stop in %.1f s", self.name, timeout_s)
        self.checkpoint(force=True)
        with self._lock:
            self._status = "stopped"

    def get(self, timeout: float | None = None) -> LogLine | None:
        return self._queue.get(timeout)

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[LogLine]:
        return self._queue.get_batch(max_lines, timeout)

    def ack(self, lines: LogLine | Sequence[LogLine]) -> None:
        """Lines were processed (in order): a restart resumes after the last of them."""
        last = lines if isinstance(lines, LogLine) else (lines[-1] if lines else None)
        if last is not None and last.cursor is not None:
            with self._lock:
                self._acked = last.cursor
                self._dirty = True

    def checkpoint(self, force: bool = False) -> None:
        """Save the acknowledged cursor when it changed and the interval passed."""
        if self._state is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and (not self._dirty or now < self._next_checkpoint):
                return
            cursor = self._acked
            self._dirty = False
        self._next_checkpoint = now + self.options.checkpoint_interval_s
        self._state.save(JournalState(cursor=cursor))

    @property
    def process_id(self) -> int | None:
        """The running journalctl's pid (None between runs)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command_line(self, cursor: str | None, since: float | None = None) -> list[str]:
        """The command that continues after ``cursor``, else from ``since`` (Unix time),
        else by ``start_at``."""
        args = [*self.options.command, *self.options.extra_args]
        if cursor:
            # --lines=all: with -f journalctl would otherwise stop at 10 entries of backlog.
            return [*args, f"--after-cursor={cursor}", "--lines=all"]
        if since is not None and self.options.start_at == "end":
            return [*args, f"--since=@{int(since)}", "--lines=all"]
        return [*args, "--lines=0" if self.options.start_at == "end" else "--lines=all"]

    def stats(self) -> JournalStats:
        with self._lock:
            counters = dict(self._c)
            status, detail = self._status, self._detail
        return JournalStats(
            lines=counters["lines"],
            bad_entries=counters["bad_entries"],
            oversized_entries=counters["oversized_entries"],
            empty_messages=counters["empty_messages"],
            invalid_utf8_lines=counters["invalid_utf8_lines"],
            truncated_lines=counters["truncated_lines"],
            restarts=counters["restarts"],
            checkpoints=self._state.writes if self._state else 0,
            checkpoint_errors=self._state.write_errors if self._state else 0,
            queue_depth=len(self._queue),
            status=status,
            detail=detail,
        )

    # -- the reader thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = ExponentialBackoff(self.options.restart_min_s, self.options.restart_max_s)
        first = True
        try:
            while not self._stop.is_set():
                if not first:
                    with self._lock:
                        self._c["restarts"] += 1
                first = False
                started = time.monotonic()
                delivered = self._run_once()
                if self._stop.is_set():
                    return
                if delivered or time.monotonic() - started >= HEALTHY_RUN_S:
                    backoff.reset()
                delay = backoff.next_delay()
                with self._lock:
                    self._status = "restarting"
                log.warning(
                    "log source %s: %s; starting journalctl again in %.1f s",
                    self.name,
                    self._detail,
                    delay,
                )
                self._stop.wait(delay)
        except Exception:
            log.exception("log source %s: the journal reader failed", self.name)
            with self._lock:
                self._status = "failed"
                self._detail = "internal error in the journal reader; see the log"

    def _run_once(self) -> bool:
        """Run journalctl until it exits or the source stops; True when it gave entries."""
        with self._lock:
            cursor = self._received
        # A journalctl that ends before its first entry must not skip what was logged
        # until it is started again: continue from when the first one started.
        command = self.command_line(cursor, self._first_started)
        if self._first_started is None:
            self._first_started = time.time()
        self._stderr_tail.clear()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C for the daemon is not journalctl's
            )
        except OSError as exc:
            self._set_detail(f"cannot run {command[0]} ({exc})")
            return False
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        errors = threading.Thread(
            target=self._read_stderr,
            args=(proc.stderr,),
            name=f"journal-{self.name}-err",
            daemon=True,
        )
        errors.start()
        with self._lock:
            self._status = "running"
        try:
            delivered = self._pump(proc.stdout)
        finally:
            self._terminate()
            errors.join(1.0)
            proc.stdout.close()
            self._proc = None
        complaint = " ".join(self._stderr_tail)
        if cursor and not delivered and "seek to cursor" in complaint.lower():
            log.warning(
                "log source %s: journalctl rejected the saved cursor (%s); starting by "
                "start_at = %s instead",
                self.name,
                complaint,
                self.options.start_at,
            )
            with self._lock:
                self._received = None
                if self._acked == cursor:
                    self._acked = None
                    self._dirty = True
        self._set_detail(
            f"journalctl exited with status {proc.returncode}"
            + (f": {complaint}" if complaint else "")
        )
        return delivered

    def _pump(self, stdout: IO[bytes]) -> bool:
        fd = stdout.fileno()
        splitter = LineSplitter(self.options.max_entry_bytes)
        delivered = False
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.25)
            self.checkpoint()
            if not ready:
                continue
            data = os.read(fd, 65_536)
            if not data:
                if splitter.pending_size:
                    with self._lock:
                        self._c["bad_entries"] += 1
                return delivered
            raws, _ = splitter.feed(data)
            now = time.time()
            lines: list[LogLine] = []
            for payload, _used, truncated in raws:
                if truncated:
                    with self._lock:
                        self._c["oversized_entries"] += 1
                    continue
                line = self._parse(payload, now)
                if line is not None:
                    lines.append(line)
            if not lines:
                continue
            while not self._queue.put_wait(lines, self._stop, timeout=0.25):
                if self._stop.is_set() or self._queue.closed:
                    return delivered
                self.checkpoint()
            delivered = True
            with self._lock:
                self._received = lines[-1].cursor
                self._c["lines"] += len(lines)
        return delivered

    def _parse(self, payload: bytes, now: float) -> LogLine | None:
        try:
            entry = json.loads(payload)
        except (ValueError, RecursionError):
            entry = None
        cursor = entry.get("__CURSOR") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(cursor, str) or not cursor:
            with self._lock:
                self._c["bad_entries"] += 1
            return None
        text, invalid = _message_text(entry.get("MESSAGE"))
        truncated = len(text) > self.options.max_message_chars
        if truncated:
            text = text[: self.options.max_message_chars]
        with self._lock:
            self._c["invalid_utf8_lines"] += int(invalid)
            self._c["truncated_lines"] += int(truncated)
            self._c["empty_messages"] += int(entry.get("MESSAGE") is None)
        return LogLine(
            self.name,
            "journal",
            text,
            now,
            cursor=cursor,
            truncated=truncated,
            invalid_utf8=invalid,
            meta=_journal_meta(entry),
        )

    def _read_stderr(self, stream: IO[bytes]) -> None:
        logged = 0
        for raw in iter(lambda: stream.readline(4096), b""):
            text = decode_line(raw.rstrip(b"\n")).text.strip()
            if not text:
                continue
            self._stderr_tail.append(text[:500])
            if logged < MAX_LOGGED_STDERR:
                logged += 1
                log.warning("log source %s: journalctl: %s", self.name, text[:500])
        stream.close()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)

    def _set_detail(self, detail: str) -> None:
        with self._lock:
            self._detail = detail


def _message_text(message: Any) -> tuple[str, bool]:
    """MESSAGE as text: a string, or a byte array (journalctl's JSON for binary data)."""
    if isinstance(message, str):
        return message, False
    if message is None:
        return "", False
    if isinstance(message, list) and all(isinstance(b, int) and 0 <= b < 256 for b in message):
        decoded = decode_line(bytes(message))
        return decoded.text, decoded.invalid_utf8
    return json.dumps(message), False


def _field(entry: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = entry.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _int_field(entry: dict[str, Any], name: str) -> int | None:
    value = entry.get(name)
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _journal_meta(entry: dict[str, Any]) -> LogMeta:
    realtime = _int_field(entry, "__REALTIME_TIMESTAMP")
    return LogMeta(
        format="journal",
        facility=_int_field(entry, "SYSLOG_FACILITY"),
        severity=_int_field(entry, "PRIORITY"),
        hostname=_field(entry, "_HOSTNAME"),
        app=_field(entry, "SYSLOG_IDENTIFIER", "_COMM", "_SYSTEMD_UNIT"),
        procid=_field(entry, "_PID", "SYSLOG_PID"),
        timestamp=realtime / 1_000_000 if realtime is not None else None,
    )
