"""The record every sensor source produces, and the interface the daemon reads them by.

A reading is one sample of one *series* (a stream of samples that belong together: a
file, an MQTT topic, this host) at one time, with one value per *column* (a CSV's
value columns, a JSON payload's fields, the host's metrics). A model is trained on
columns by name, so readings carry their column names; a value that was missing or not
a number is NaN, and the windowing code decides what a gap means (docs/sensors.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from device.logs.record import LogLine

SourceStatus = Literal["starting", "running", "reconnecting", "stopped", "failed"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of a series: a timestamp and one float per column (NaN: missing)."""

    #: The configured source name.
    source: str
    #: Which stream the sample belongs to; the pipeline keeps one window per series.
    series: str
    #: Unix time of the sample: the data's own timestamp where it has one, else the time
    #: the source received it.
    timestamp: float
    values: tuple[float, ...]
    columns: tuple[str, ...]
    #: Unix time at which the source read or received the sample.
    received_at: float
    #: Files: the line the sample came from, so ``ack()`` can record the position.
    line: LogLine | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.columns):
            raise ValueError(
                f"reading of {self.series} has {len(self.values)} values for "
                f"{len(self.columns)} columns"
            )

    @property
    def complete(self) -> bool:
        """Whether every value is a finite number."""
        return all(math.isfinite(value) for value in self.values)

    def value(self, column: str) -> float:
        """The value of ``column`` (NaN when the reading lacks it)."""
        try:
            return self.values[self.columns.index(column)]
        except ValueError:
            return math.nan


@dataclass(frozen=True)
class SensorSourceStats:
    """Counters since the source started; the fields that do not apply stay 0."""

    #: Readings handed to the queue.
    readings: int
    #: Rows, lines or payloads that gave no reading (unparsable, no timestamp, no
    #: value at all, wrong shape), each counted once.
    bad_records: int
    #: Values inside otherwise good readings that were missing or not numbers (NaN).
    missing_values: int
    #: Readings dropped because the queue was full (network and host sources; file
    #: sources wait instead, the file being the buffer).
    dropped: int
    #: Header lines recognised (files).
    headers: int
    queue_depth: int
    status: SourceStatus
    #: Source-specific detail (the last error, the broker's address).
    detail: str = ""
    #: MQTT: connections made (the first one included).
    connects: int = 0


class SensorSource(Protocol):
    """What the daemon needs from any sensor source.

    A source reads in its own thread into a bounded queue. The consumer takes readings
    with ``get``/``get_batch`` and calls ``ack`` with what it processed; file sources
    then record their position (so a restart resumes after it), the others ignore it.
    """

    name: str

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...

    def get(self, timeout: float | None = None) -> Reading | None: ...

    def get_batch(self, max_readings: int, timeout: float | None = None) -> list[Reading]: ...

    def ack(self, readings: Reading | Sequence[Reading]) -> None: ...

    def stats(self) -> SensorSourceStats: ...
