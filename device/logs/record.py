"""The record every log source produces, and the interface the daemon reads sources by.

One record type for files, the journal and syslog keeps the pipeline that templates and
scores lines independent of where they came from. The record is a frozen dataclass with
slots: sources create one per line, tens of thousands a second, so it carries only what
a consumer needs (the text, where it came from, what ``ack()`` needs to resume) and puts
the syslog-style metadata, which files do not have, in one optional field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

MetaFormat = Literal["rfc3164", "rfc5424", "journal"]


@dataclass(frozen=True, slots=True)
class SdElement:
    """One RFC 5424 structured-data element: ``[id name="value" ...]``."""

    id: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LogMeta:
    """What a syslog message or a journal entry says about itself."""

    format: MetaFormat
    #: Syslog facility (0-23) and severity (0 emergency .. 7 debug), when stated.
    facility: int | None = None
    severity: int | None = None
    hostname: str | None = None
    #: RFC 3164 tag / RFC 5424 APP-NAME / journal SYSLOG_IDENTIFIER (or the unit).
    app: str | None = None
    procid: str | None = None
    msgid: str | None = None
    #: Unix time the sender stamped on the message (None when absent or unreadable).
    timestamp: float | None = None
    structured_data: tuple[SdElement, ...] = ()


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log line on its way to a pipeline."""

    #: The configured source name.
    source: str
    #: Where the line came from: a file path, ``journal``, or ``udp:HOST:PORT`` /
    #: ``tcp:HOST:PORT`` for the syslog peer that sent it.
    origin: str
    #: The line without its line ending; for syslog, the message part (MSG) when the
    #: header could be parsed, the whole message otherwise.
    text: str
    #: Unix time the source read the line.
    received_at: float
    #: Files: byte offsets of the line's start and of the byte after its newline.
    offset: int | None = None
    next_offset: int | None = None
    #: Files: which opened file (device, inode, generation) the offsets refer to.
    file_key: str | None = None
    #: Journal: the entry's cursor.
    cursor: str | None = None
    #: The line was longer than the source's limit and was cut (the rest was skipped).
    truncated: bool = False
    #: The bytes were not valid UTF-8; invalid sequences became U+FFFD.
    invalid_utf8: bool = False
    #: The line had no line ending: the writer stopped mid-line for longer than the
    #: partial-line timeout, or the file ended (deleted, rotated) without one.
    partial: bool = False
    meta: LogMeta | None = None


class LogSource(Protocol):
    """What the daemon needs from any log source (files, journal, syslog).

    A source reads in its own thread(s) into a bounded queue. The consumer takes lines
    with ``get``/``get_batch`` and calls ``ack`` for each line (or the last of a batch)
    once it has processed it; ``stop`` saves what was acknowledged, so the next start
    resumes after the last acknowledged line. Sources without a position (syslog)
    accept ``ack`` and ignore it.
    """

    name: str

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...

    def get(self, timeout: float | None = None) -> LogLine | None: ...

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[LogLine]: ...

    def ack(self, lines: LogLine | Sequence[LogLine]) -> None: ...
