"""The bounded on-disk store of hard examples: ``<state_dir>/examples/``.

Each example is two files: its data (``<id>.jpg`` for images) and a JSON sidecar
(``<id>.json``, :class:`~device.examples.meta.ExampleMeta`). The sidecar is the commit
record: both files are written to hidden temporary names, flushed to disk and renamed,
data first and sidecar last, so a power cut or a killed process leaves either a whole
example or debris that :class:`ExampleStore` removes when it opens (temporary files,
data without a sidecar, sidecars that do not parse or whose data file is missing or of
the wrong size). A data file whose bytes were damaged later is caught by its sha256
when read, and removed then.

The store is bounded by count and by bytes (sidecars included); the oldest examples go
first and are counted. On a Pi the state folder is on an SD card, so nothing here
rewrites an index file per example: the folder itself is the index.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from device.durable import fsync_dir
from device.errors import EdgewatchError
from device.examples.meta import (
    EXTENSIONS,
    ID_PATTERN,
    MEDIA_TYPES,
    ExampleDraft,
    ExampleMeta,
    format_example_id,
    id_millis,
    random_suffix,
)

log = logging.getLogger(__name__)

SIDECAR = ".json"
TMP_PREFIX = ".tmp-"
_ID = re.compile(ID_PATTERN)


class ExampleStoreError(EdgewatchError):
    """An example cannot be stored or read (too large, gone, disk full)."""


class ExampleDamagedError(ExampleStoreError):
    """An example's data no longer matches its sidecar; it has been removed."""


@dataclass(frozen=True)
class OpenReport:
    """What opening the folder found."""

    #: Whole examples now listed.
    kept: int
    #: Files of unfinished writes removed (temporary files, data without a sidecar).
    partial_removed: int
    #: Examples removed because a sidecar did not parse or did not match its data.
    corrupt_removed: int


@dataclass(frozen=True)
class StoreStats:
    count: int
    bytes: int
    max_items: int
    max_bytes: int
    #: Examples removed since start to stay within the bounds (oldest first).
    evicted: int
    #: Examples removed since start because their files were damaged.
    corrupt_removed: int


@dataclass(frozen=True)
class _Entry:
    meta: ExampleMeta
    #: Data file plus sidecar, what counts against ``max_bytes``.
    size: int


class ExampleStore:
    """Thread-safe: the recorder's writer thread adds while commands list and remove."""

    def __init__(self, root: Path, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("an example store needs room for at least one example")
        self.root = root
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._last_millis = 0
        self._evicted = 0
        self._corrupt = 0
        root.mkdir(parents=True, exist_ok=True)
        self.opened = self._open()
        # A store reopened with smaller bounds sheds its oldest examples now.
        with self._lock:
            self._evict_over_bounds()

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> OpenReport:
        partial = 0
        corrupt = 0
        sidecars: list[Path] = []
        data_files: dict[str, Path] = {}
        for path in self.root.iterdir():
            if not path.is_file():
                continue
            if path.name.startswith(TMP_PREFIX):
                partial += _unlink(path)
            elif path.suffix == SIDECAR:
                sidecars.append(path)
            elif path.suffix in EXTENSIONS.values():
                data_files[path.name] = path
        found: list[_Entry] = []
        for sidecar in sidecars:
            entry = self._read_sidecar(sidecar, data_files)
            if entry is None:
                corrupt += 1
                _unlink(sidecar)
                continue
            data_files.pop(entry.meta.file_name, None)
            found.append(entry)
        for orphan in data_files.values():
            partial += _unlink(orphan)
        for entry in sorted(found, key=lambda e: e.meta.id):
            self._entries[entry.meta.id] = entry
            self._bytes += entry.size
        if self._entries:
            last = next(reversed(self._entries))
            self._last_millis = id_millis(last) or 0
        self._corrupt = corrupt
        report = OpenReport(kept=len(found), partial_removed=partial, corrupt_removed=corrupt)
        if partial or corrupt:
            log.warning(
                "example store %s: removed %d file(s) of unfinished writes and %d damaged "
                "example(s); %d example(s) kept",
                self.root,
                partial,
                corrupt,
                len(found),
            )
        return report

    def _read_sidecar(self, sidecar: Path, data_files: dict[str, Path]) -> _Entry | None:
        """The entry of a sidecar that parses and matches its data file, else None
        (the data file, if any, is then removed as an orphan by the caller)."""
        try:
            meta = ExampleMeta.model_validate_json(sidecar.read_bytes())
        except (OSError, ValidationError, UnicodeDecodeError) as exc:
            log.debug("example sidecar %s unreadable: %s", sidecar.name, exc)
            return None
        if meta.id != sidecar.stem:
            return None
        data = data_files.get(meta.file_name)
        if data is None:
            return None
        try:
            size = data.stat().st_size
            sidecar_size = sidecar.stat().st_size
        except OSError:
            return None
        if size != meta.bytes:
            return None
        return _Entry(meta, size + sidecar_size)

    # -- writing ----------------------------------------------------------------------

    def add(self, draft: ExampleDraft, data: bytes) -> tuple[ExampleMeta, list[str]]:
        """Write one example; returns its sidecar and the ids evicted to make room.

        Raises ExampleStoreError when the example alone exceeds the store's bound or the
        disk refuses it (nothing is left behind then).
        """
        with self._lock:
            millis = max(int(time.time() * 1000), self._last_millis + 1)
            self._last_millis = millis
            meta = ExampleMeta(
                **draft.model_dump(),
                id=format_example_id(millis, random_suffix()),
                stored_at=time.time(),
                media_type=MEDIA_TYPES[draft.kind],
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        sidecar = meta.model_dump_json(by_alias=True).encode("utf-8")
        size = len(data) + len(sidecar)
        if size > self.max_bytes:
            raise ExampleStoreError(
                f"an example of {size} bytes does not fit in the store's {self.max_bytes} "
                "bytes; raise [examples] max_mb"
            )
        data_path = self.root / meta.file_name
        sidecar_path = self.root / f"{meta.id}{SIDECAR}"
        try:
            _write_atomic(data_path, data)
            _write_atomic(sidecar_path, sidecar)
            fsync_dir(self.root)
        except OSError as exc:
            _unlink(sidecar_path)
            _unlink(data_path)
            raise ExampleStoreError(f"cannot write example to {self.root}: {exc}") from exc
        with self._lock:
            self._entries[meta.id] = _Entry(meta, size)
            self._bytes += size
            evicted = self._evict_over_bounds()
        return meta, evicted

    def _evict_over_bounds(self) -> list[str]:
        """Drop the oldest examples until both bounds hold; caller holds the lock."""
        evicted: list[str] = []
        while self._entries and (
            len(self._entries) > self.max_items or self._bytes > self.max_bytes
        ):
            example_id, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            self._delete_files(entry.meta)
            evicted.append(example_id)
        if evicted:
            self._evicted += len(evicted)
            log.info(
                "example store full: removed the %d oldest example(s), %d evicted since start",
                len(evicted),
                self._evicted,
            )
        return evicted

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Delete these examples; returns the ids that existed (and are now gone)."""
        removed = []
        with self._lock:
            for example_id in ids:
                entry = self._entries.pop(example_id, None)
                if entry is None:
                    continue
                self._bytes -= entry.size
                self._delete_files(entry.meta)
                removed.append(example_id)
        return removed

    def _delete_files(self, meta: ExampleMeta) -> None:
        # Sidecar first: without it the data file is an orphan, removed at next open.
        _unlink(self.root / f"{meta.id}{SIDECAR}")
        _unlink(self.root / meta.file_name)

    # -- reading ----------------------------------------------------------------------

    def examples(self, after: str | None = None) -> list[ExampleMeta]:
        """Sidecars oldest first; with ``after``, only examples stored after that id."""
        with self._lock:
            return [e.meta for i, e in self._entries.items() if after is None or i > after]

    def get(self, example_id: str) -> ExampleMeta | None:
        with self._lock:
            entry = self._entries.get(example_id)
        return None if entry is None else entry.meta

    def read(self, example_id: str) -> bytes:
        """The example's data, checked against its sha256; a damaged example is
        removed and reported as an error."""
        if not _ID.match(example_id):
            raise ExampleStoreError(f"{example_id!r} is not an example id")
        meta = self.get(example_id)
        if meta is None:
            raise ExampleStoreError(f"no example {example_id!r}")
        try:
            data = (self.root / meta.file_name).read_bytes()
        except OSError as exc:
            data = b""
            log.debug("example %s unreadable: %s", example_id, exc)
        if len(data) == meta.bytes and hashlib.sha256(data).hexdigest() == meta.sha256:
            return data
        with self._lock:
            evicted_meanwhile = example_id not in self._entries
        if evicted_meanwhile:
            raise ExampleStoreError(f"example {example_id} was removed meanwhile")
        self.remove([example_id])
        with self._lock:
            self._corrupt += 1
        log.warning("example %s was damaged on disk; removed", example_id)
        raise ExampleDamagedError(f"example {example_id} was damaged on disk and is removed")

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                count=len(self._entries),
                bytes=self._bytes,
                max_items=self.max_items,
                max_bytes=self.max_bytes,
                evicted=self._evicted,
                corrupt_removed=self._corrupt,
            )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name, flush to disk, then rename over ``path``."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> int:
    """Remove a file; 1 if it was there, 0 if not."""
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        return 0
    return 1
