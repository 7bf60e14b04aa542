"""Is a freshly swapped-in model healthy? Judged on the live stream, then kept or undone.

A bundle that passed verification and its golden smoke test can still misbehave on real
input: it may raise, produce NaN, run far slower than the model it replaced, or collapse
to the same output whatever it sees (a broken conversion, a dead calibration). For
``models.health_window_s`` after a swap, the inference thread feeds each result here:

- errors: more than ``health_max_errors`` inference exceptions → unhealthy at once;
- NaN or infinite outputs → unhealthy at once;
- latency: median over the window above ``health_latency_factor`` × the previous model's
  median + ``health_latency_slack_ms`` → unhealthy (the slack keeps a 0.3 ms model from
  failing on scheduler jitter);
- collapse: one identical output for every frame of the window while the inputs varied,
  confirmed by running the *previous* model on a few of those frames: only if it told
  them apart is the new one collapsed (a static scene legitimately gives one output).

The verdict comes once the window has passed and ``health_min_inferences`` results were
seen; until then the watch says nothing.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.config import ModelsSection
from device.sources.camera import Frame

log = logging.getLogger(__name__)

#: Frames with distinct inputs kept for the collapse confirmation, spread evenly over
#: the window (consecutive frames of a still scene could fool the previous model too).
SAMPLE_FRAMES = 8
#: Outputs are compared at this many decimals (int8 outputs step by 1/256).
OUTPUT_DECIMALS = 5

#: Given frames, how many distinct outputs the previous model gives for them.
ReferenceCheck = Callable[[Sequence[Frame]], int]


@dataclass(frozen=True)
class HealthLimits:
    window_s: float
    min_inferences: int
    latency_factor: float
    latency_slack_ms: float
    max_errors: int

    @classmethod
    def from_config(cls, section: ModelsSection) -> HealthLimits:
        return cls(
            window_s=section.health_window_s,
            min_inferences=section.health_min_inferences,
            latency_factor=section.health_latency_factor,
            latency_slack_ms=section.health_latency_slack_ms,
            max_errors=section.health_max_errors,
        )


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    #: Why unhealthy (what the rollback records); a summary when healthy.
    reason: str


def input_fingerprint(frame: Frame) -> int:
    """A cheap identity of a frame's content: a CRC of a coarse pixel grid."""
    return zlib.crc32(np.ascontiguousarray(frame.image[::16, ::16]).tobytes())


def output_fingerprint(scores: np.ndarray[Any, Any]) -> bytes:
    return np.round(scores.astype(np.float64), OUTPUT_DECIMALS).tobytes()


class HealthWatch:
    """One swapped-in pipeline under watch; used on its inference thread only."""

    def __init__(
        self,
        limits: HealthLimits,
        baseline_ms: float,
        reference: ReferenceCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        #: The previous model's median inference time (0: unknown, no latency check).
        self.baseline_ms = baseline_ms
        self._reference = reference
        self._clock = clock
        self._started: float | None = None
        self._latencies: list[float] = []
        self._inputs: set[int] = set()
        self._outputs: set[bytes] = set()
        self._samples: list[Frame] = []
        self._sampled_at = -float("inf")
        self._errors = 0
        self.verdict: Verdict | None = None

    @property
    def inferences(self) -> int:
        return len(self._latencies)

    def error(self, exc: BaseException) -> Verdict | None:
        """An inference raised; unhealthy once more than ``max_errors`` did."""
        self._errors += 1
        if self._errors > self.limits.max_errors:
            return self._decide(False, f"{self._errors} inference error(s), last: {exc!r}")
        return None

    def observe(
        self, frame: Frame, scores: np.ndarray[Any, Any], latency_ms: float
    ) -> Verdict | None:
        """One result of the new model; a verdict once there is one, else None."""
        if self.verdict is not None:
            return self.verdict
        now = self._clock()
        if self._started is None:
            self._started = now
        if not bool(np.all(np.isfinite(scores))):
            return self._decide(False, f"non-finite output (NaN or inf) on frame {frame.index}")
        self._latencies.append(latency_ms)
        fingerprint = input_fingerprint(frame)
        spacing = self.limits.window_s / SAMPLE_FRAMES
        if (
            fingerprint not in self._inputs
            and len(self._samples) < SAMPLE_FRAMES
            and now - self._sampled_at >= spacing
        ):
            self._samples.append(frame)
            self._sampled_at = now
        self._inputs.add(fingerprint)
        if len(self._outputs) < 2:
            self._outputs.add(output_fingerprint(scores))
        enough = len(self._latencies) >= self.limits.min_inferences
        if not enough or now - self._started < self.limits.window_s:
            return None
        return self._final()

    def _final(self) -> Verdict:
        median = float(np.median(self._latencies))
        limit = self.baseline_ms * self.limits.latency_factor + self.limits.latency_slack_ms
        if self.baseline_ms > 0 and median > limit:
            return self._decide(
                False,
                f"latency: median {median:.2f} ms over {len(self._latencies)} inferences, "
                f"limit {limit:.2f} ms ({self.limits.latency_factor:g}x the previous "
                f"model's {self.baseline_ms:.2f} ms + {self.limits.latency_slack_ms:g} ms)",
            )
        if len(self._outputs) == 1 and len(self._samples) >= 2:
            before = self._reference(self._samples) if self._reference is not None else 2
            if before >= 2:
                return self._decide(
                    False,
                    f"output collapse: one identical output for {len(self._latencies)} "
                    f"frames with {len(self._inputs)} different inputs (the previous model "
                    f"gave {before} different outputs for {len(self._samples)} of them)",
                )
        return self._decide(
            True,
            f"healthy after {len(self._latencies)} inferences, median {median:.2f} ms "
            f"(previous {self.baseline_ms:.2f} ms), {self._errors} error(s)",
        )

    def _decide(self, healthy: bool, reason: str) -> Verdict:
        self.verdict = Verdict(healthy, reason)
        self._samples = []  # frames are large; nothing needs them any more
        return self.verdict
