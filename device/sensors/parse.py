"""Turning text into readings: timestamps, CSV rows and JSON documents.

One parser for every path a number takes, so the file tail, the MQTT source, training
and evaluation agree on what a row means:

* **Timestamps**: a number is Unix seconds, or milliseconds when above 1e11 (1e11 s is
  the year 5138; 1e11 ms is 1973); text is ISO 8601 (``2024-01-02T03:04:05Z``,
  ``2014-04-01 00:00:00``, with or without fraction and offset). Text without an offset
  is UTC, so a file means the same thing on every machine.
* **Values**: a number, or text that Python's ``float`` reads. Anything else (empty,
  ``n/a``, ``ERR``, ``nan``, ``inf``) is *missing* and becomes NaN; the reading keeps its
  other values, and the window code fills or skips the gap (docs/sensors.md).
* **Bad records**: a row without a readable timestamp (when one is configured), with no
  value at all, or with the wrong number of fields is not a reading; sources count it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

#: Above this a numeric timestamp is taken as milliseconds.
MILLISECONDS_ABOVE = 1e11
#: Timestamp column names recognised in a header when none is configured by name.
TIMESTAMP_NAMES = ("timestamp", "time", "ts", "datetime", "date")

HeaderMode = Literal["auto", "yes", "no"]


def parse_timestamp(raw: object) -> float | None:
    """Unix seconds from a number or ISO 8601 text; None when it is neither."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return _parse_iso(text)
    else:
        return None
    if not math.isfinite(value):
        return None
    return value / 1000.0 if abs(value) > MILLISECONDS_ABOVE else value


def _parse_iso(text: str) -> float | None:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_value(raw: object) -> float:
    """A finite float from a number or numeric text; NaN for anything else."""
    if isinstance(raw, bool) or raw is None:
        return math.nan
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return math.nan
    else:
        return math.nan
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class ParsedRecord:
    """A record that makes a reading: its time and one value per column."""

    #: None when the source has no timestamp (the caller uses the time of receipt).
    timestamp: float | None
    values: tuple[float, ...]
    #: Values that were missing or not numbers (NaN in ``values``).
    missing: int


# -- CSV -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvOptions:
    """How rows of a CSV file (or tailed CSV lines) are read.

    ``timestamp_column`` is a field index or a header name (None: rows carry no time);
    ``columns`` picks and orders the value columns by header name (or names the value
    fields of a headerless file in order); None takes every field but the timestamp,
    named by the header, else ``value`` (one field) or ``value_1``, ``value_2``...
    """

    delimiter: str = ","
    timestamp_column: int | str | None = 0
    columns: tuple[str, ...] | None = None
    #: "auto": a first line (or any line) whose timestamp field is not a time and whose
    #: value fields are not numbers is a header.
    header: HeaderMode = "auto"

    def __post_init__(self) -> None:
        if len(self.delimiter) != 1:
            raise ValueError(f"the CSV delimiter must be one character, got {self.delimiter!r}")
        if self.header not in ("auto", "yes", "no"):
            raise ValueError(f"header must be auto, yes or no, got {self.header!r}")
        if self.columns is not None and not self.columns:
            raise ValueError("columns, when given, must name at least one column")


@dataclass(frozen=True)
class CsvLayout:
    """Where the timestamp and the value columns sit in a row, and their names."""

    timestamp_index: int | None
    value_indices: tuple[int, ...]
    columns: tuple[str, ...]
    #: Fields a row must have (rows with fewer are bad; extra fields are ignored).
    min_fields: int


def split_csv_line(text: str, delimiter: str) -> list[str]:
    """The fields of one CSV line; quoted fields are honoured only when there are quotes
    (the plain split is ten times faster and sensor files rarely quote)."""
    if '"' not in text:
        return text.split(delimiter)
    return next(csv.reader([text], delimiter=delimiter), [])


def looks_like_header(fields: list[str], options: CsvOptions) -> bool:
    """At least a timestamp and a value field (or one value without timestamps), none of
    which reads as a number or (in the timestamp position) a time."""
    needed = 1 if options.timestamp_column is None else 2
    if len(fields) < needed or not any(field.strip() for field in fields):
        return False
    for index, field in enumerate(fields):
        if index == options.timestamp_column and parse_timestamp(field) is not None:
            return False
        if not math.isnan(parse_value(field)):
            return False
    return True


def layout_from_header(fields: list[str], options: CsvOptions) -> CsvLayout:
    """Resolve the configured names against a header row; ValueError names what is
    missing."""
    names = [field.strip() for field in fields]
    ts_index = _timestamp_index(names, options)
    if options.columns is None:
        indices = tuple(i for i in range(len(names)) if i != ts_index)
        columns = tuple(names[i] or f"value_{n + 1}" for n, i in enumerate(indices))
    else:
        missing = [name for name in options.columns if name not in names]
        if missing:
            raise ValueError(f"the header ({', '.join(names)}) lacks the columns {missing}")
        indices = tuple(names.index(name) for name in options.columns)
        columns = options.columns
    if not indices:
        raise ValueError(f"the header ({', '.join(names)}) has no value column")
    return _layout(ts_index, indices, columns)


def _timestamp_index(names: list[str], options: CsvOptions) -> int | None:
    column = options.timestamp_column
    if column is None:
        return None
    if isinstance(column, int):
        return column
    if column in names:
        return names.index(column)
    raise ValueError(f"the header ({', '.join(names)}) has no timestamp column {column!r}")


def headerless_layout(field_count: int, options: CsvOptions) -> CsvLayout:
    """The layout of a file without a header, from the first row's field count."""
    column = options.timestamp_column
    if isinstance(column, str):
        # A name cannot be found without a header; the first field is the usual place.
        column = 0
    indices = tuple(i for i in range(field_count) if i != column)
    if options.columns is not None:
        if len(options.columns) > len(indices):
            raise ValueError(
                f"rows have {len(indices)} value fields but {len(options.columns)} columns "
                "are configured"
            )
        indices = indices[: len(options.columns)]
        columns = options.columns
    elif len(indices) == 1:
        columns = ("value",)
    else:
        columns = tuple(f"value_{n + 1}" for n in range(len(indices)))
    if not indices:
        raise ValueError("rows have no value field")
    return _layout(column, indices, columns)


def _layout(ts_index: int | None, indices: tuple[int, ...], columns: tuple[str, ...]) -> CsvLayout:
    needed = max([*indices, ts_index if ts_index is not None else 0]) + 1
    return CsvLayout(ts_index, indices, tuple(columns), needed)


def parse_csv_fields(fields: list[str], layout: CsvLayout) -> ParsedRecord | None:
    """A row's timestamp and values; None for a bad row (see the module docstring)."""
    if len(fields) < layout.min_fields:
        return None
    timestamp = None
    if layout.timestamp_index is not None:
        timestamp = parse_timestamp(fields[layout.timestamp_index])
        if timestamp is None:
            return None
    values = tuple(parse_value(fields[i]) for i in layout.value_indices)
    missing = sum(1 for value in values if math.isnan(value))
    if missing == len(values):
        return None
    return ParsedRecord(timestamp, values, missing)


RowOutcome = Literal["header", "bad", "blank"]


class CsvRowReader:
    """Reads the rows of one CSV file in order, learning its layout from its header.

    ``feed`` returns a ``ParsedRecord``, or says the line was a header, a bad row or
    blank. With ``header = "auto"`` a header may also appear later in the file (files
    appended to one another); it then replaces the layout. ``error`` holds why the last
    header could not be used (a configured column it lacks).
    """

    def __init__(self, options: CsvOptions) -> None:
        self.options = options
        self.layout: CsvLayout | None = None
        self.error = ""

    def prime(self, first_line: str) -> None:
        """Learn the layout from the file's first line when the reader starts mid-file
        (following from the end, resuming from a saved position)."""
        fields = split_csv_line(_clean(first_line), self.options.delimiter)
        if self.options.header == "yes" or (
            self.options.header == "auto" and looks_like_header(fields, self.options)
        ):
            self._use_header(fields)

    def feed(self, text: str) -> ParsedRecord | RowOutcome:
        line = _clean(text)
        if not line.strip():
            return "blank"
        fields = split_csv_line(line, self.options.delimiter)
        mode = self.options.header
        if self.layout is None:
            if mode == "yes" or (mode == "auto" and looks_like_header(fields, self.options)):
                return self._use_header(fields)
            if self.error:
                # The file's header lacked configured columns: its rows cannot be placed.
                return "bad"
            try:
                self.layout = headerless_layout(len(fields), self.options)
            except ValueError as exc:
                self.error = str(exc)
                return "bad"
        record = parse_csv_fields(fields, self.layout)
        if record is not None:
            return record
        if mode == "auto" and looks_like_header(fields, self.options):
            return self._use_header(fields, keep=True)
        return "bad"

    def _use_header(self, fields: list[str], keep: bool = False) -> RowOutcome:
        """Take ``fields`` as the header; when it cannot be used, ``keep`` leaves the
        layout in force (a stray text line mid-file must not stop the file)."""
        try:
            self.layout = layout_from_header(fields, self.options)
        except ValueError as exc:
            if keep and self.layout is not None:
                return "bad"
            self.error = str(exc)
            self.layout = None
            return "bad"
        self.error = ""
        return "header"


def _clean(text: str) -> str:
    return text.lstrip("\ufeff").rstrip("\r\n")


# -- JSON ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonOptions:
    """How a JSON document (a JSONL line, an MQTT payload) becomes a reading.

    ``fields`` are dot paths into an object (``sensors.temp``, ``readings.0.value``: a
    number segment indexes a list); the column names are the paths. A bare number is
    the value of the single field. ``timestamp_field`` is a dot path too (None, or
    absent from a document: the time of receipt).
    """

    fields: tuple[str, ...] = ("value",)
    timestamp_field: str | None = "timestamp"

    def __post_init__(self) -> None:
        if not self.fields or any(not path.strip() for path in self.fields):
            raise ValueError("fields must name at least one (non-empty) path")


def extract(document: object, path: str) -> object:
    """The value at dot path ``path`` in ``document``; None when absent."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current


def parse_json_document(document: object, options: JsonOptions) -> ParsedRecord | None:
    """A JSON value's timestamp and values; None when it makes no reading."""
    if isinstance(document, int | float) and not isinstance(document, bool):
        if len(options.fields) != 1:
            return None
        value = parse_value(document)
        return None if math.isnan(value) else ParsedRecord(None, (value,), 0)
    if not isinstance(document, dict):
        return None
    timestamp = None
    if options.timestamp_field is not None:
        raw = extract(document, options.timestamp_field)
        if raw is not None:
            timestamp = parse_timestamp(raw)
            if timestamp is None:
                return None
    values = tuple(parse_value(extract(document, path)) for path in options.fields)
    missing = sum(1 for value in values if math.isnan(value))
    if missing == len(values):
        return None
    return ParsedRecord(timestamp, values, missing)


def parse_json_text(text: str | bytes, options: JsonOptions) -> ParsedRecord | None:
    """Parse JSON text (a bare number such as ``21.5`` is valid JSON) into a record."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return parse_json_document(document, options)
