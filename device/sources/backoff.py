"""Exponential reconnect backoff with jitter.

A camera that vanished is retried quickly at first (a USB replug takes a second) and
then less and less often, so a dead RTSP server is not hammered. Jitter spreads the
retries of many devices that lost the same server at the same moment.
"""

from __future__ import annotations

import logging
import random

log = logging.getLogger(__name__)


class ExponentialBackoff:
    """Delays from ``min_s`` doubling up to ``max_s``; ``reset()`` after a success."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure.

        The delay is drawn from the top quarter below the exponential step, never under
        ``min_s``: enough spread to de-synchronise devices while keeping the schedule
        predictable for someone reading the log.
        """
        step = min(self.max_s, self.min_s * (2.0 ** min(self._failures, 62)))
        self._failures += 1
        return max(self.min_s, step * self._rng.uniform(0.75, 1.0))

    def reset(self) -> None:
        self._failures = 0
