"""Reading log folders: ``DIR/*.log`` the way the device reads log files, and DeepLog's
session files.

Each log file is cut into lines by the device's own ``LineSplitter`` and decoded by its
``decode_line`` (UTF-8 with U+FFFD for invalid bytes, a trailing ``\\r`` removed, lines over
16 KiB cut), so training, calibration and evaluation see the very strings a
``TailSource`` would hand to the pipeline. It lives in converters/ because the converter
reads ``--calibration`` folders with it, and training imports it from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DatasetError
from device.logs.lines import LineSplitter, decode_line

log = logging.getLogger(__name__)

LOG_PATTERN = "*.log"
NORMAL_FILE = "normal.txt"
ABNORMAL_FILE = "abnormal.txt"
#: The file follower's default line limit (TailOptions.max_line_bytes).
MAX_LINE_BYTES = 16_384
#: Bytes looked at to tell a text log from a binary file.
_SNIFF_BYTES = 65_536
Session = tuple[str, ...]
IntArray = np.ndarray[Any, np.dtype[np.int32]]


@dataclass(frozen=True)
class LogFile:
    path: Path
    #: Every physical line, decoded as the device decodes it; line N is ``lines[N - 1]``.
    lines: tuple[str, ...]
    invalid_utf8: int

    @property
    def name(self) -> str:
        return self.path.name


def list_log_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory; expected DIR/*.log")
    files = sorted(p for p in directory.glob(LOG_PATTERN) if p.is_file())
    if not files:
        raise DatasetError(
            f"{directory} holds no *.log files; put the raw log lines of normal operation "
            "there (one or more files, plain text)"
        )
    return files


def read_log_file(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> LogFile:
    """All lines of ``path``, split and decoded by the device's own functions."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    head = data[:_SNIFF_BYTES]
    if b"\x00" in head:
        raise DatasetError(
            f"{path.name} looks like a binary file (it holds NUL bytes), not a text log; "
            "remove it from the folder or give it another extension than .log"
        )
    splitter = LineSplitter(max_line_bytes)
    raw, _ = splitter.feed(data)
    last = splitter.flush()
    if last is not None:
        raw.append(last)
    lines: list[str] = []
    invalid = 0
    for payload, _, truncated in raw:
        decoded = decode_line(payload, truncated)
        invalid += decoded.invalid_utf8
        lines.append(decoded.text)
    if lines and invalid > max(10, len(lines) // 2):
        raise DatasetError(
            f"{path.name}: {invalid} of {len(lines)} lines are not valid UTF-8; it looks "
            "like a binary file, not a text log"
        )
    return LogFile(path=path, lines=tuple(lines), invalid_utf8=invalid)


def load_log_folder(directory: Path) -> list[LogFile]:
    files = [read_log_file(path) for path in list_log_files(directory)]
    if not any(line.strip() for f in files for line in f.lines):
        raise DatasetError(f"the *.log files in {directory} hold no log lines (all empty)")
    for f in files:
        if f.invalid_utf8:
            log.warning("%s: %d line(s) with invalid UTF-8 (read as U+FFFD, as the device "
                        "does)", f.name, f.invalid_utf8)  # fmt: skip
    return files


def read_sessions(path: Path) -> list[Session]:
    """Sessions of a DeepLog file (one a line, ids separated by white space); blank lines
    (no events) are skipped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DatasetError(f"{path.name} holds NUL bytes; a session file is text: one "
                           "session a line, event ids separated by spaces")  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not UTF-8 text ({exc})") from exc
    sessions = [tuple(line.split()) for line in text.splitlines()]
    return [s for s in sessions if s]


def ranks(scores: np.ndarray[Any, Any], targets: IntArray) -> IntArray:
    """DeepLog's rank of each target: 1 + the classes scored strictly higher."""
    if len(targets) == 0:
        return np.empty(0, dtype=np.int32)
    chosen = scores[np.arange(len(targets)), targets][:, np.newaxis]
    counted: IntArray = (np.sum(scores > chosen, axis=1) + 1).astype(np.int32)
    return counted
