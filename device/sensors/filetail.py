"""Numeric series from CSV or JSON Lines files that grow, followed like ``tail -F``.

Following (globs, rotation, truncation, saved positions) is the log follower's
(``device.logs.tail.FileFollower``; its guarantees are in docs/logs.md), run in this
source's one thread; this module only turns lines into readings. A reading carries its
line, and ``ack()`` records the line's position, so a restart resumes after the last
reading the pipeline processed. Bad rows and headers are never handed out; the next
good row's acknowledgement covers them.

CSV files: the layout (which field is the time, which are values, their names) comes
from the header, learned per file: from its first line when the file is read from the
start, else by reading the file's first line when following begins mid-file. A header
that shows up later (files concatenated) replaces it. JSONL files: one JSON object (or
bare number) a line, fields picked by dot paths.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from device.logs.record import LogLine
from device.logs.tail import Clock, FileFollower, TailOptions
from device.sensors.parse import (
    CsvOptions,
    CsvRowReader,
    JsonOptions,
    ParsedRecord,
    parse_json_text,
)
from device.sensors.queue import ReadingQueue
from device.sensors.reading import Reading, SensorSourceStats, SourceStatus

log = logging.getLogger(__name__)

FileFormat = Literal["csv", "jsonl"]
SeriesFrom = Literal["source", "file"]
#: Files whose CSV layout is remembered (more than a follower follows at once).
MAX_LAYOUTS = 512
#: Longest first line read to find a header.
MAX_HEADER_BYTES = 16_384


@dataclass(frozen=True)
class SensorFileOptions:
    """What the lines of the followed files hold; see the module docstring."""

    format: FileFormat = "csv"
    csv: CsvOptions = field(default_factory=CsvOptions)
    json: JsonOptions = field(default_factory=JsonOptions)
    #: "source": every file feeds one series named after the source (rotation and
    #: restarts continue it); "file": one series per file, named by its stem.
    series_from: SeriesFrom = "source"
    queue_readings: int = 10_000

    def __post_init__(self) -> None:
        if self.format not in ("csv", "jsonl"):
            raise ValueError(f"format must be csv or jsonl, got {self.format!r}")
        if self.series_from not in ("source", "file"):
            raise ValueError(f"series_from must be source or file, got {self.series_from!r}")
        if self.queue_readings < 1:
            raise ValueError("queue_readings must be at least 1")


class SensorFileSource:
    """Follows files of readings in one thread, behind a bounded queue (a ``SensorSource``)."""

    def __init__(
        self,
        name: str,
        patterns: Sequence[str | Path],
        state_path: Path | None,
        options: SensorFileOptions | None = None,
        *,
        tail: TailOptions | None = None,
        clock: Clock = time,
    ) -> None:
        self.name = name
        self.options = options or SensorFileOptions()
        self.tail_options = tail or TailOptions()
        self.follower = FileFollower(name, patterns, state_path, self.tail_options, clock)
        self._clock = clock
        self._queue = ReadingQueue(self.options.queue_readings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: SourceStatus = "starting"
        self._readers: OrderedDict[str, CsvRowReader] = OrderedDict()
        self._lock = threading.Lock()
        self._readings = 0
        self._bad = 0
        self._missing = 0
        self._headers = 0
        self._detail = ""

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"sensor source {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading, save the acknowledged positions, close the files."""
        self._stop.set()
        self._queue.close(discard=True)
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("sensor source %s: reader did not stop in %.1f s", self.name, timeout_s)
                return
        self.follower.close()
        if self._status != "failed":
            self._status = "stopped"

    def get(self, timeout: float | None = None) -> Reading | None:
        return self._queue.get(timeout)

    def get_batch(self, max_readings: int, timeout: float | None = None) -> list[Reading]:
        return self._queue.get_batch(max_readings, timeout)

    def ack(self, readings: Reading | Sequence[Reading]) -> None:
        if isinstance(readings, Reading):
            readings = (readings,)
        lines = [r.line for r in readings if r.line is not None]
        if lines:
            self.follower.ack(lines)

    def stats(self) -> SensorSourceStats:
        with self._lock:
            return SensorSourceStats(
                readings=self._readings,
                bad_records=self._bad,
                missing_values=self._missing,
                dropped=0,
                headers=self._headers,
                queue_depth=len(self._queue),
                status=self._status,
                detail=self._detail,
            )

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._status = "running"
        interval = self.tail_options.poll_interval_s
        try:
            while not self._stop.is_set():
                lines = self.follower.poll()
                readings = self.parse_lines(lines)
                while readings and not self._queue.put_wait(readings, self._stop, interval):
                    if self._stop.is_set() or self._queue.closed:
                        return
                    self.follower.discover()
                    self.follower.checkpoint()
                self.follower.checkpoint()
                if len(lines) < self.tail_options.max_batch_lines:
                    self._stop.wait(interval)
        except Exception:
            log.exception("sensor source %s: the reader thread failed", self.name)
            self._status = "failed"

    def parse_lines(self, lines: Sequence[LogLine]) -> list[Reading]:
        """Readings from followed lines, counting bad rows and headers (reader thread;
        public for tools that drive the follower themselves)."""
        readings: list[Reading] = []
        bad = headers = missing = 0
        for line in lines:
            if line.truncated or line.partial:
                bad += 1
                continue
            if self.options.format == "jsonl":
                if not line.text.strip():
                    continue
                record = parse_json_text(line.text, self.options.json)
                columns = self.options.json.fields
            else:
                reader = self._reader_for(line)
                outcome = reader.feed(line.text)
                if outcome == "header":
                    headers += 1
                    continue
                if outcome == "blank":
                    continue
                record = outcome if isinstance(outcome, ParsedRecord) else None
                if record is None and reader.error:
                    self._set_detail(f"{line.origin}: {reader.error}")
                columns = reader.layout.columns if reader.layout is not None else ()
            if record is None:
                bad += 1
                continue
            missing += record.missing
            readings.append(
                Reading(
                    source=self.name,
                    series=self._series(line),
                    timestamp=record.timestamp
                    if record.timestamp is not None
                    else line.received_at,
                    values=record.values,
                    columns=columns,
                    received_at=line.received_at,
                    line=line,
                )
            )
        with self._lock:
            self._readings += len(readings)
            self._bad += bad
            self._headers += headers
            self._missing += missing
        return readings

    def _series(self, line: LogLine) -> str:
        if self.options.series_from == "file":
            return Path(line.origin).name.split(".")[0] or self.name
        return self.name

    def _reader_for(self, line: LogLine) -> CsvRowReader:
        key = line.file_key or line.origin
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        reader = CsvRowReader(self.options.csv)
        if line.offset:
            first = _first_line(line.origin)
            if first is not None:
                reader.prime(first)
        self._readers[key] = reader
        while len(self._readers) > MAX_LAYOUTS:
            self._readers.popitem(last=False)
        return reader

    def _set_detail(self, detail: str) -> None:
        with self._lock:
            if detail != self._detail:
                log.warning("sensor source %s: %s", self.name, detail)
            self._detail = detail


def _first_line(path: str) -> str | None:
    """The first line of ``path`` (for its header), or None when unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.readline(MAX_HEADER_BYTES)
    except OSError as exc:
        log.debug("cannot read the header of %s: %s", path, exc)
        return None
    return head.decode("utf-8", errors="replace")
