"""Per-source event sequence numbers that only ever go up, across restarts.

A subscriber uses ``seq`` to see lost and duplicated events, so a repeated number is the
one thing that must never happen (it would make a subscriber discard a real event as a
duplicate); a gap only says "events may have been lost", which is true after a crash.

Durability, and what it costs
-----------------------------
Every ``next()`` rewrites the file (write to a temporary file, then ``os.replace``), so
the value on disk is never torn and a process crash, SIGKILL included, loses nothing:
the page cache outlives the process and the next start continues at exactly ``last + 1``.

Only a power cut can lose writes that the kernel had not flushed yet. ``fsync`` on every
event would close that window, but on an SD card an fsync costs milliseconds to tens of
milliseconds and wears the card with one erase a event. So the file is fsynced (file and
folder) at most every ``sync_interval_s`` seconds or every ``sync_every`` values, whichever
comes first, and on ``close()``. At most ``sync_every - 1`` handed-out values can then be
missing from disk after a power cut. The file records whether it was closed cleanly and the
kernel's boot id: a start that finds an unclean file written during a *previous boot*
(power cut, kernel panic, watchdog reset) skips ``sync_every`` numbers per source, so it
can leave a gap but never repeat. An unclean file from the *same* boot means only the
process died, and the count continues without a gap.

A file that cannot be parsed (a power cut mid-way on a filesystem without rename
ordering, a dying card) is kept aside as ``<name>.corrupt-<ms>`` and numbering restarts
from the current Unix time in milliseconds. Counts handed out before were either small
(a count from 1) or were themselves started from an earlier such time and grew by far
less than 1000 a second, so the time is above all of them, provided the clock is right:
on a Pi without a real-time clock, make the service start after time sync
(``time-sync.target``), as deploy/ does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from device.durable import fsync_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


def current_boot_id() -> str | None:
    """The kernel's id for this boot (Linux); ``None`` where there is none."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class SeqStore:
    """Strictly increasing sequence numbers per source, persisted in one JSON file.

    Safe to call from several threads. Use as a context manager, or call ``close()`` at
    shutdown so the next start knows the file was complete.
    """

    def __init__(
        self,
        path: Path,
        sync_every: int = 100,
        sync_interval_s: float = 1.0,
        clock: Clock = time,
    ) -> None:
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.path = Path(path)
        self.sync_every = sync_every
        self.sync_interval_s = sync_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._boot_id = current_boot_id()
        self._last: dict[str, int] = {}
        self._floor = 0
        self._unsynced = 0
        self._last_sync = clock.monotonic()
        self._write_failed = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        # Mark the file as in use (unclean until close) before handing anything out.
        self._write(clean=False, sync=True)

    # -- public -------------------------------------------------------------------------

    def next(self, source: str) -> int:
        """The next number for ``source``: greater than every number it ever returned."""
        with self._lock:
            if self._closed:
                raise RuntimeError("SeqStore is closed")
            value = max(self._last.get(source, 0), self._floor) + 1
            self._last[source] = value
            self._unsynced += 1
            now = self._clock.monotonic()
            due = self._unsynced >= self.sync_every or now - self._last_sync >= self.sync_interval_s
            self._write(clean=False, sync=due)
            return value

    def last(self, source: str) -> int:
        """The last number handed out for ``source`` (0 before the first)."""
        with self._lock:
            return self._last.get(source, 0)

    def sync(self) -> None:
        """Flush to stable storage now (for callers that want a durable point)."""
        with self._lock:
            if not self._closed:
                self._write(clean=False, sync=True)

    def close(self) -> None:
        """Write the file as cleanly closed and flush it; further ``next()`` fails."""
        with self._lock:
            if self._closed:
                return
            self._write(clean=True, sync=True)
            self._closed = True

    def __enter__(self) -> SeqStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- loading --------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no sequence file at %s yet; numbering starts at 1", self.path)
            return
        except OSError as exc:
            self._recover(f"cannot be read ({exc})")
            return
        try:
            document = json.loads(raw.decode("utf-8"))
            last, floor, clean, boot_id = _parse(document)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            self._recover(f"is not a valid sequence file ({exc})")
            return
        self._last = last
        self._floor = floor
        if not clean and (boot_id is None or boot_id != self._boot_id):
            # Written by an earlier boot that never closed it: a power cut may have eaten
            # up to sync_every - 1 values that were handed out; skip past them.
            margin = self.sync_every
            log.warning(
                "%s was not closed cleanly before the last reboot; skipping %d sequence "
                "numbers per source so none can repeat (subscribers will see a gap)",
                self.path,
                margin,
            )
            self._last = {source: value + margin for source, value in last.items()}
            # New-looking sources may have been first used in the lost window too.
            self._floor = floor + margin

    def _recover(self, problem: str) -> None:
        floor = time.time_ns() // 1_000_000
        backup = self.path.with_name(f"{self.path.name}.corrupt-{floor}")
        try:
            os.replace(self.path, backup)
            kept = f"kept as {backup.name}"
        except OSError as exc:
            kept = f"could not keep a copy ({exc})"
        log.warning(
            "sequence file %s %s; %s. Numbering restarts from the current time in ms "
            "(%d) so it stays above the numbers handed out before",
            self.path,
            problem,
            kept,
            floor,
        )
        self._last = {}
        self._floor = floor

    # -- writing ----------------------------------------------------------------------------

    def _write(self, clean: bool, sync: bool) -> None:
        document = {
            "format": FORMAT_VERSION,
            "floor": self._floor,
            "clean": clean,
            "boot_id": self._boot_id,
            "sources": self._last,
        }
        data = json.dumps(document, sort_keys=True).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            if sync:
                fsync_dir(self.path.parent)
                self._unsynced = 0
                self._last_sync = self._clock.monotonic()
        except OSError as exc:
            # Events matter more than their numbering: keep counting in memory (still
            # monotonic in this process) and say once that restarts may now repeat.
            if not self._write_failed:
                log.error(
                    "cannot write sequence file %s (%s); numbers stay increasing until "
                    "the daemon restarts, but may repeat after one. Check free space and "
                    "permissions of the state folder",
                    self.path,
                    exc,
                )
            self._write_failed = True
            return
        if self._write_failed:
            log.info("sequence file %s is writable again", self.path)
            self._write_failed = False


def _parse(document: Any) -> tuple[dict[str, int], int, bool, str | None]:
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise ValueError(f"expected a format {FORMAT_VERSION} object")
    sources = document["sources"]
    if not isinstance(sources, dict):
        raise TypeError("sources is not an object")
    last: dict[str, int] = {}
    for name, value in sources.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"bad entry {name!r}: {value!r}")
        if value < 0:
            raise ValueError(f"negative value for {name!r}")
        last[name] = value
    floor = document["floor"]
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
        raise TypeError(f"bad floor {floor!r}")
    clean = document["clean"]
    if not isinstance(clean, bool):
        raise TypeError(f"bad clean flag {clean!r}")
    boot_id = document.get("boot_id")
    if boot_id is not None and not isinstance(boot_id, str):
        raise TypeError(f"bad boot id {boot_id!r}")
    return last, floor, clean, boot_id
