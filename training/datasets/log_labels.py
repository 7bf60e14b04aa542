"""``DIR/labels.csv``: which log lines are anomalous (``file,line,label``).

``file`` is the name of a ``*.log`` file in DIR, ``line`` its 1-based line number, and
``label`` says whether that line is anomalous: ``1``, ``anomaly``, ``anomalous``,
``abnormal``, ``true``, ``yes`` (any case) for anomalous; ``0``, ``normal``, ``false``,
``no``, ``-`` for normal. A header row (``file,line,label``) is optional. Lines that are
not listed count as normal, so a file may list only its anomalies.

Every mistake is reported with its row number, because a labels file that silently
misses its lines would make every figure computed from it wrong.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DatasetError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
ANOMALOUS = frozenset({"1", "anomaly", "anomalous", "abnormal", "true", "yes"})
NORMAL = frozenset({"0", "normal", "false", "no", "-"})
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


def read_labels(path: Path, line_counts: Mapping[str, int]) -> dict[str, BoolArray]:
    """One boolean per line of every file in ``line_counts`` (True: anomalous)."""
    labels = {name: np.zeros(count, dtype=np.bool_) for name, count in line_counts.items()}
    seen: dict[tuple[str, int], tuple[int, bool]] = {}
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    with handle:
        try:
            rows = list(csv.reader(handle))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path.name} is not a readable CSV file ({exc})") from exc
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row] == ["file", "line", "label"]:
            continue
        where = f"{path.name} row {number}"
        if len(row) != 3:
            raise DatasetError(f"{where}: expected file,line,label, got {len(row)} field(s)")
        name, line_text, label_text = (cell.strip() for cell in row)
        if name not in labels:
            known = ", ".join(sorted(labels)[:5]) or "none"
            raise DatasetError(
                f"{where}: file {name!r} is not a *.log file in {path.parent.name} "
                f"(files: {known})"
            )
        if not line_text.isdigit() or int(line_text) < 1:
            raise DatasetError(f"{where}: line must be a line number from 1, got {line_text!r}")
        line = int(line_text)
        if line > len(labels[name]):
            raise DatasetError(
                f"{where}: {name} has {len(labels[name])} lines, so line {line} does not exist"
            )
        label = label_text.lower()
        if label not in ANOMALOUS and label not in NORMAL:
            raise DatasetError(
                f"{where}: label {label_text!r} is neither anomalous "
                f"({', '.join(sorted(ANOMALOUS))}) nor normal ({', '.join(sorted(NORMAL))})"
            )
        anomalous = label in ANOMALOUS
        previous = seen.get((name, line))
        if previous is not None and previous[1] != anomalous:
            raise DatasetError(
                f"{where}: {name} line {line} is labelled both ways (also in row {previous[0]})"
            )
        seen[(name, line)] = (number, anomalous)
        labels[name][line - 1] = anomalous
    log.info("%s: %d anomalous line(s) in %d file(s)", path.name,
             sum(int(v.sum()) for v in labels.values()), len(labels))  # fmt: skip
    return labels
