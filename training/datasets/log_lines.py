"""A log-anomaly folder (``DIR/*.log``) turned into what training learns from.

Files are read by ``converters.log_folder`` (the device's own line splitting and
decoding, so training sees the very strings a ``TailSource`` hands to the pipeline; the
converter reads ``--calibration`` folders with it too). Templates are mined with the
shared miner (``add`` over every line, then frozen), and the ids training learns from
are computed afterwards by the device's ``EventMapper`` over the frozen vocabulary,
exactly as the device will compute them.

A file is one stream: histories never run from one file into the next, as on the
device, where each origin keeps its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.log_folder import LogFile, list_log_files, load_log_folder, read_log_file
from device.bundle.manifest import ParameterRange
from device.logs.templates import DrainParameters, TemplateMiner, TemplateVocabulary
from device.pipelines.log_events import EventMapper

log = logging.getLogger(__name__)

__all__ = [
    "LogFile",
    "line_ids",
    "list_log_files",
    "load_log_folder",
    "mine_vocabulary",
    "parameter_ranges",
    "read_log_file",
]

IntArray = np.ndarray[Any, np.dtype[np.int32]]


def mine_vocabulary(files: Sequence[LogFile], parameters: DrainParameters) -> TemplateVocabulary:
    """Mine every non-blank line (``add``), then freeze: the vocabulary a bundle carries."""
    miner = TemplateMiner(parameters)
    for f in files:
        for text in f.lines:
            if text and not text.isspace():
                miner.add(text)
    miner.freeze()
    stats = miner.stats()
    if stats.overflow:
        log.warning(
            "%d line(s) found no template because max_templates (%d) was reached; they "
            "will be unknown (anomalous) on the device", stats.overflow,
            parameters.max_templates,
        )  # fmt: skip
    log.info("mined %d templates from %d lines", stats.templates, stats.lines)
    return miner.vocabulary()


def line_ids(mapper: EventMapper, lines: Sequence[str]) -> IntArray:
    """The device's id of every line: BLANK (-1), UNKNOWN (0) or the template's id."""
    return np.fromiter((mapper.line_id(text) for text in lines), dtype=np.int32,
                       count=len(lines))  # fmt: skip


#: A slot needs this many distinct values to be checked: fewer means a constant (a pid,
#: a host number) or a code (HTTP status), whose next value says nothing about its range.
MIN_DISTINCT = 10
#: A slot whose values go up (or down) at this share of their changes, in file order,
#: is a counter or an id (request numbers): its future values leave any trained range.
COUNTER_SHARE = 0.9


@dataclass
class _Slot:
    low: float = float("inf")
    high: float = float("-inf")
    count: int = 0
    ups: int = 0
    downs: int = 0
    previous: float | None = None
    broken: bool = False
    distinct: set[float] | None = None

    def add(self, value: float) -> None:
        if math.isnan(value):  # the slot is not always a number
            self.broken = True
            return
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if self.previous is not None:
            self.ups += value > self.previous
            self.downs += value < self.previous
        self.previous = value
        if self.distinct is None:
            self.distinct = set()
        if len(self.distinct) < MIN_DISTINCT:
            self.distinct.add(value)

    def checkable(self, min_samples: int) -> bool:
        changes = self.ups + self.downs
        counter = changes > 0 and max(self.ups, self.downs) >= COUNTER_SHARE * changes
        distinct = len(self.distinct or ())
        return not self.broken and self.count >= min_samples and distinct >= MIN_DISTINCT and (
            not counter
        )


def parameter_ranges(
    mapper: EventMapper,
    files: Sequence[LogFile],
    ids: Sequence[IntArray],
    min_samples: int,
) -> tuple[ParameterRange, ...]:
    """Range of every numeric parameter slot that behaves like a measurement.

    Checked slots were numeric in every line of their template, took at least
    ``min_samples`` values, at least ``MIN_DISTINCT`` different ones, and do not only
    grow (or only shrink) from line to line: constants, codes, counters and ids are left
    out, because their next value says nothing about a trained range.
    """
    if mapper.miner is None:
        return ()
    slots: dict[tuple[int, int], _Slot] = {}
    for f, file_ids in zip(files, ids, strict=True):
        for slot in slots.values():
            slot.previous = None  # a new file: no change across the boundary
        for text, template in zip(f.lines, file_ids.tolist(), strict=True):
            if template <= 0:
                continue
            for index, value in enumerate(mapper.numbers(text, template)):
                key = (template, index)
                found = slots.get(key)
                if found is None:
                    found = slots[key] = _Slot()
                found.add(value)
    ranges = tuple(
        ParameterRange(template=k[0], slot=k[1], low=s.low, high=s.high, samples=s.count)
        for k, s in sorted(slots.items())
        if s.checkable(min_samples)
    )
    log.info("parameter ranges for %d numeric slot(s) of %d template(s)", len(ranges),
             len({r.template for r in ranges}))  # fmt: skip
    return ranges
