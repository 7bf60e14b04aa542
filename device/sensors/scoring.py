"""The anomaly score of a window and the threshold rule: defined once, here.

Training calibrates with these functions, the converter re-calibrates the quantized
model with them, and the device scores with them, so "score" means one thing.

Score (``ReconstructionDecoding.score = "mse"``): the mean over the window's steps and
columns of the squared difference between the scaled window and the model's
reconstruction of it, in z units squared. It is computed against the float window,
not the quantized model input: an int8 input saturates at the calibration range, but a
spike far outside it still counts in full.

Threshold: ``quantile(training scores, q) * margin``. The quantile sets how rare a
training window must be to count (0.995: 1 in 200 of the training windows exceeds the
bare quantile), the margin keeps normal data that differs a little from the training
stretch quiet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float32]]

DEFAULT_QUANTILE = 0.995
DEFAULT_MARGIN = 1.5
#: A threshold is never below this (a model that reconstructs its training data
#: perfectly would otherwise flag rounding noise).
MIN_THRESHOLD = 1e-4


def window_scores(windows: FloatArray, reconstructions: FloatArray) -> FloatArray:
    """Mean squared reconstruction error per window; both shaped (N, window, columns)."""
    x = np.asarray(windows, dtype=np.float32)
    r = np.asarray(reconstructions, dtype=np.float32).reshape(x.shape)
    errors = np.mean(np.square(x - r), axis=tuple(range(1, x.ndim)))
    return np.asarray(errors, dtype=np.float32)


def calibrate_threshold(
    scores: FloatArray, quantile: float = DEFAULT_QUANTILE, margin: float = DEFAULT_MARGIN
) -> float:
    """The threshold rule (see the module docstring) over the training windows' scores."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("no training window scores to calibrate a threshold on")
    if not 0.0 < quantile <= 1.0 or margin <= 0.0:
        raise ValueError(f"quantile must be in (0, 1] and margin > 0, got {quantile}, {margin}")
    return max(MIN_THRESHOLD, float(np.quantile(finite, quantile)) * margin)
