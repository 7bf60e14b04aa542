"""A sliding window of latencies, summarised as percentiles for the stats message.

The inference thread adds one sample a frame while the stats thread reads a summary
every interval, so both sides take a lock. A bounded window (not a running mean) is
used because p99 is what shows a stalling Pi, and the window forgets a slow start-up.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles over the samples in the window; all zero when there are none yet.

    Zeros rather than NaN because the summary goes into JSON, where NaN is not valid.
    """

    #: Samples in the window now.
    count: int
    #: Samples ever added (the window's size does not limit this).
    total: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


class LatencyWindow:
    """The last ``size`` latencies in milliseconds; safe to use from two threads."""

    def __init__(self, size: int = 512) -> None:
        if size < 1:
            raise ValueError(f"a latency window needs size >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self._total = 0
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(ms)
            self._total += 1

    def summary(self) -> LatencySummary:
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
            total = self._total
        if samples.size == 0:
            return LatencySummary(0, total, 0.0, 0.0, 0.0, 0.0)
        p50, p99 = np.percentile(samples, (50.0, 99.0))
        return LatencySummary(
            count=int(samples.size),
            total=total,
            p50_ms=float(p50),
            p99_ms=float(p99),
            mean_ms=float(samples.mean()),
            max_ms=float(samples.max()),
        )
