"""Which frames are worth keeping for retraining: the decision, without any I/O.

A model learns most from the inputs it is unsure or inconsistent about, so those are
what the device keeps:

low-confidence
    The frame's top label is reportable (not a background or ignored label) and its
    score is below that label's threshold by at most ``margin``:
    ``threshold - margin <= score < threshold``. The model almost said something: either
    the thing is there and the model is weak on it, or it is not and the model is close
    to a false alarm. Both are worth a label.

disputed
    A pipeline's *confident* frames are those whose top label is reportable and at or
    above its threshold (exactly the frames that feed events). A confident frame is
    disputed when the previous confident frame of the same pipeline had another top
    label and was captured at most ``dispute_window_s`` earlier. Frames in between that
    were not confident (background, low scores) do not reset this: "cat, nothing, dog"
    within the window is disputed too, since a real cat rarely turns into a dog that
    fast. The later frame of the pair is kept.

Automatic keeping is rate-limited per pipeline (``min_interval_s`` between kept
examples, by capture time), so a model that is unsure about a whole scene keeps one
frame of it, not one per frame. The `keep` command bypasses all of this.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from device.examples.meta import ExampleReason
from device.pipelines.classification import PipelineResult


@dataclass(frozen=True)
class Verdict:
    """Why a frame is kept; ``note`` explains a dispute."""

    reason: ExampleReason
    note: str | None = None


@dataclass(frozen=True)
class DetectorStats:
    #: Frames that qualified, before the rate limit.
    low_confidence: int
    disputed: int
    #: Qualifying frames not kept because the pipeline kept one too recently.
    rate_limited: int


@dataclass(frozen=True)
class _Confident:
    label: str
    score: float
    captured_at: float


class HardExampleDetector:
    """Judges one pipeline result at a time; per-pipeline state, safe across threads."""

    def __init__(self, margin: float, dispute_window_s: float, min_interval_s: float) -> None:
        self.margin = margin
        self.dispute_window_s = dispute_window_s
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_confident: dict[str, _Confident] = {}
        self._last_kept_at: dict[str, float] = {}
        self._low_confidence = 0
        self._disputed = 0
        self._rate_limited = 0

    def judge(
        self,
        result: PipelineResult,
        thresholds: Mapping[str, float],
        reportable: Collection[str],
    ) -> Verdict | None:
        """The reason to keep this frame, or None; a returned verdict counts as kept
        for the rate limit."""
        label = result.top_label
        if label not in reportable:
            return None
        threshold = thresholds[label]
        with self._lock:
            verdict = self._qualify(result, label, threshold)
            if verdict is None:
                return None
            if verdict.reason == "disputed":
                self._disputed += 1
            else:
                self._low_confidence += 1
            last = self._last_kept_at.get(result.pipeline)
            if last is not None and 0.0 <= result.captured_at - last < self.min_interval_s:
                self._rate_limited += 1
                return None
            self._last_kept_at[result.pipeline] = result.captured_at
            return verdict

    def _qualify(self, result: PipelineResult, label: str, threshold: float) -> Verdict | None:
        score = result.top_score
        if score < threshold:
            if self.margin > 0.0 and score >= threshold - self.margin:
                return Verdict("low-confidence")
            return None
        previous = self._last_confident.get(result.pipeline)
        self._last_confident[result.pipeline] = _Confident(label, score, result.captured_at)
        if previous is None or previous.label == label or self.dispute_window_s <= 0.0:
            return None
        gap = result.captured_at - previous.captured_at
        if not 0.0 <= gap <= self.dispute_window_s:
            return None
        note = (
            f"top label was {previous.label!r} ({previous.score:.2f}) {gap:.2f} s earlier, "
            f"now {label!r} ({score:.2f})"
        )
        return Verdict("disputed", note)

    def stats(self) -> DetectorStats:
        with self._lock:
            return DetectorStats(self._low_confidence, self._disputed, self._rate_limited)
