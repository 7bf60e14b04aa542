"""A whole CSV file as arrays: what training, evaluation and the benchmarks read.

It goes through the same ``CsvRowReader`` as the file tail, so a file means the same
samples whether it is replayed live or read at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DatasetError
from device.sensors.parse import CsvOptions, CsvRowReader, ParsedRecord

log = logging.getLogger(__name__)

Float64Array = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class SeriesData:
    """One series: timestamps (Unix s, as read) and values (rows x columns, NaN missing)."""

    name: str
    timestamps: Float64Array
    values: Float64Array
    columns: tuple[str, ...]
    bad_rows: int = 0
    missing_values: int = 0

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def slice(self, start: int, stop: int | None = None) -> SeriesData:
        """Rows ``start:stop`` (counters are not carried over)."""
        return SeriesData(
            self.name,
            self.timestamps[start:stop],
            self.values[start:stop],
            self.columns,
        )


def read_csv_series(
    path: Path, options: CsvOptions | None = None, name: str | None = None
) -> SeriesData:
    """Every good row of ``path``; DatasetError when it holds none or its columns change.

    Rows without a timestamp column are numbered 0, 1, 2... seconds.
    """
    options = options or CsvOptions()
    reader = CsvRowReader(options)
    records: list[ParsedRecord] = []
    bad = 0
    columns: tuple[str, ...] | None = None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for line in text.splitlines():
        outcome = reader.feed(line)
        if isinstance(outcome, ParsedRecord):
            assert reader.layout is not None
            if columns is None:
                columns = reader.layout.columns
            elif reader.layout.columns != columns:
                raise DatasetError(
                    f"{path.name}: the columns change from {list(columns)} to "
                    f"{list(reader.layout.columns)} in the middle of the file"
                )
            records.append(outcome)
        elif outcome == "bad":
            bad += 1
    if not records or columns is None:
        detail = f" ({reader.error})" if reader.error else ""
        raise DatasetError(
            f"{path.name} holds no readable rows{detail}; expected CSV lines like "
            "timestamp,value[,value...]"
        )
    timestamps = np.array(
        [r.timestamp if r.timestamp is not None else float(i) for i, r in enumerate(records)],
        dtype=np.float64,
    )
    values = np.array([r.values for r in records], dtype=np.float64)
    missing = sum(r.missing for r in records)
    if bad or missing:
        log.info("%s: %d bad row(s) skipped, %d missing value(s)", path.name, bad, missing)
    return SeriesData(
        name=name or path.stem,
        timestamps=timestamps,
        values=values,
        columns=columns,
        bad_rows=bad,
        missing_values=missing,
    )
