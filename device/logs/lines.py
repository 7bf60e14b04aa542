"""Cutting a byte stream into lines with bounded memory, and decoding them.

Files, the journal's pipe and syslog over TCP all deliver bytes in arbitrary chunks.
A line can span chunks, never end, or be megabytes long (a binary dumped into a log, a
stack trace on one line). The splitter holds at most ``max_line_bytes`` of an unfinished
line: beyond that it keeps counting the line's bytes (so offsets stay exact) but drops
them, and hands the line out cut, flagged ``truncated``, when its newline finally comes.
A 10 MB line therefore costs ``max_line_bytes`` of memory, not 10 MB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: A complete line as the splitter hands it out: the payload (at most ``max_line_bytes``,
#: no newline), the bytes it used in the stream (newline included) and whether it was cut.
RawLine = tuple[bytes, int, bool]


@dataclass(frozen=True)
class DecodedLine:
    text: str
    invalid_utf8: bool


class LineSplitter:
    """Splits a stream on ``\\n``; see the module docstring for the memory bound."""

    __slots__ = ("_discard_first", "_max", "_pending", "_pending_size")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self._max = max_line_bytes
        self._pending = bytearray()
        #: Bytes of the unfinished line seen so far, including those dropped.
        self._pending_size = 0
        self._discard_first = False

    @property
    def max_line_bytes(self) -> int:
        return self._max

    @property
    def pending_size(self) -> int:
        """Bytes of the current unfinished line consumed so far (kept or dropped)."""
        return self._pending_size

    def discard_until_newline(self) -> None:
        """Drop everything up to the next newline (a reader that starts mid-line)."""
        self._discard_first = True

    def reset(self) -> None:
        """Forget the unfinished line (the stream restarts, e.g. a truncated file)."""
        self._pending.clear()
        self._pending_size = 0
        self._discard_first = False

    def feed(self, data: bytes, max_lines: int = 1 << 62) -> tuple[list[RawLine], int]:
        """Complete lines in ``data`` (at most ``max_lines``) and the bytes consumed.

        Bytes after the last newline are kept as the unfinished line and count as
        consumed. When ``max_lines`` stops the split early, the rest of ``data`` is not
        consumed: the caller feeds it again later (files simply re-read from the offset).
        """
        out: list[RawLine] = []
        if max_lines < 1 or not data:
            return out, 0
        pos = 0
        if self._pending_size or self._discard_first:
            newline = data.find(b"\n")
            if newline < 0:
                self._absorb(data)
                return out, len(data)
            self._absorb(data[:newline])
            finished = self._finish(newline_size=1)
            if finished is not None:
                out.append(finished)
                max_lines -= 1
            pos = newline + 1
            if max_lines < 1:
                return out, pos
        rest_of_data = data[pos:] if pos else data
        parts = rest_of_data.split(b"\n", max_lines)
        rest = parts.pop()
        limit = self._max
        append = out.append
        for part in parts:
            size = len(part)
            if size > limit:
                append((part[:limit], size + 1, True))
            else:
                append((part, size + 1, False))
        if len(parts) == max_lines and b"\n" in rest:
            return out, len(data) - len(rest)
        if rest:
            self._absorb(rest)
        return out, len(data)

    def flush(self) -> RawLine | None:
        """Hand out the unfinished line as it is (no newline), or None when there is none."""
        if self._discard_first:
            self.reset()
            return None
        return self._finish(newline_size=0)

    def _absorb(self, chunk: bytes) -> None:
        self._pending_size += len(chunk)
        if self._discard_first:
            return
        room = self._max - len(self._pending)
        if room > 0:
            self._pending += chunk[:room]

    def _finish(self, newline_size: int) -> RawLine | None:
        if self._discard_first:
            self.reset()
            return None
        if not self._pending_size:
            if newline_size:
                return (b"", newline_size, False)
            return None
        line = (bytes(self._pending), self._pending_size + newline_size,
                self._pending_size > self._max)  # fmt: skip
        self._pending.clear()
        self._pending_size = 0
        return line


def cut_incomplete_utf8(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut off at its end (a truncated line's last char).

    Only the last three bytes can belong to an incomplete sequence; cutting it keeps a
    truncated but otherwise valid line from being counted as invalid UTF-8.
    """
    end = len(data)
    back = 0
    while back < 3 and back < end and (data[end - 1 - back] & 0xC0) == 0x80:
        back += 1
    if back >= end:
        return data
    lead = data[end - 1 - back]
    if lead < 0x80:
        return data
    needed = (
        2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
    )
    if needed and back + 1 < needed:
        return data[: end - 1 - back]
    return data


def decode_line(payload: bytes, truncated: bool = False) -> DecodedLine:
    """Text of a line: UTF-8, a trailing ``\\r`` removed, invalid bytes as U+FFFD."""
    try:
        text = payload.decode("utf-8")
        invalid = False
    except UnicodeDecodeError:
        if truncated:
            payload = cut_incomplete_utf8(payload)
        try:
            text = payload.decode("utf-8")
            invalid = False
        except UnicodeDecodeError:
            text = payload.decode("utf-8", "replace")
            invalid = True
    if text.endswith("\r"):
        text = text[:-1]
    return DecodedLine(text, invalid)
