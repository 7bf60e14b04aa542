"""Writing files so that a crash at any instant leaves either the old or the new content.

Write a temporary file in the same folder, fsync it, rename it over the target (atomic on
POSIX), then fsync the folder so the rename itself survives a power cut. Readers never
see a half-written file, only one or the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut. Where a folder cannot be opened
    (not POSIX), there is nothing to sync and nothing is done; an fsync that fails is a
    disk error and is raised."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (must not be visible to readers yet) with ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``before_rename`` runs once the temporary file is complete and synced, just before
    the rename: the crash tests kill the process there.
    """
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write_synced(tmp, data)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_leftovers(directory: Path, marks: tuple[str, ...]) -> list[Path]:
    """Delete files whose names contain one of ``marks`` (temporaries of a crashed write)."""
    removed = []
    for entry in directory.iterdir():
        if entry.is_file() and any(mark in entry.name for mark in marks):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d unfinished file(s) in %s", len(removed), directory)
    return removed
