"""DeepLog's session files: one session a line, its event ids separated by white space.

The HDFS benchmark comes in this form (``normal.txt``, ``abnormal.txt``): each line is
the events of one HDFS block, already parsed into ids. Training reads ``normal.txt`` and
learns from a seeded share of its sessions, as DeepLog trained on a small part of the
normal sessions; evaluation scores the rest and ``abnormal.txt``. The split is a pure
function of the number of sessions, the share and the seed, and the bundle records the
file's sha256 with them, so evaluating a bundle on the folder it was trained on leaves
out exactly the sessions it learnt from.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.log_folder import ABNORMAL_FILE, NORMAL_FILE, Session, read_sessions
from device.errors import DatasetError

log = logging.getLogger(__name__)

__all__ = [
    "ABNORMAL_FILE",
    "NORMAL_FILE",
    "Session",
    "SessionSplit",
    "event_order",
    "file_sha256",
    "is_session_folder",
    "read_sessions",
    "split_sessions",
    "take",
]

IndexArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class SessionSplit:
    train: IndexArray
    rest: IndexArray


def is_session_folder(directory: Path) -> bool:
    """DeepLog's layout: a normal.txt and no *.log files."""
    return (directory / NORMAL_FILE).is_file() and not any(directory.glob("*.log"))


def split_sessions(count: int, fraction: float, seed: int) -> SessionSplit:
    """A seeded ``fraction`` of ``count`` sessions to train on; the rest, both in file order."""
    if not 0.0 < fraction <= 1.0:
        raise DatasetError(f"the training share of the sessions must be in (0, 1], got {fraction}")
    chosen = max(1, round(count * fraction))
    order = np.random.default_rng([seed, 17]).permutation(count)
    return SessionSplit(train=np.sort(order[:chosen]), rest=np.sort(order[chosen:]))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def event_order(sessions: Iterable[Session]) -> tuple[str, ...]:
    """Every event id that occurs, numbers in numeric order, then other names sorted."""
    seen = {event for session in sessions for event in session}
    numeric = sorted((e for e in seen if e.isdigit()), key=int)
    other = sorted(e for e in seen if not e.isdigit())
    return (*numeric, *other)


def take(sessions: Sequence[Session], indices: IndexArray) -> list[Session]:
    return [sessions[int(i)] for i in indices]
