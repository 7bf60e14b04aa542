"""Held-out and calibration windows of a next-event (log) model folder.

The image folder's ``heldout.npz`` and ``calibration.npz`` hold uint8 pixels; a log
model's hold int32 event-id windows (``x``: ``(n, history)``) and, for held-out data, the
next event of each (``y``). Same file names, same ``allow_pickle=False`` reading, kept
apart from ``model_dir.read_samples`` because that one reads pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DatasetError

IntArray = np.ndarray[Any, np.dtype[np.int32]]


@dataclass(frozen=True)
class WindowSet:
    x: IntArray
    y: IntArray | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def write_windows(path: Path, windows: WindowSet) -> None:
    if windows.y is None:
        np.savez_compressed(path, x=windows.x.astype(np.int32))
    else:
        np.savez_compressed(path, x=windows.x.astype(np.int32), y=windows.y.astype(np.int32))


def read_windows(path: Path, history: int, classes: int) -> WindowSet:
    """Windows of ``path``, checked against the model's history length and classes."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; re-run `edgewatch train log-anomaly`")
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.int32)
            y = np.asarray(data["y"], dtype=np.int32) if "y" in data.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path} is not a window file of a log model: {exc}") from exc
    if x.ndim != 2 or x.shape[1] != history or (y is not None and y.shape != (len(x),)):
        raise DatasetError(f"{path} holds windows of shape {x.shape}, the model reads "
                           f"{history} events")  # fmt: skip
    if x.size and (x.min() < 0 or x.max() >= classes):
        raise DatasetError(f"{path} holds event ids outside the model's {classes} classes")
    return WindowSet(x=x, y=y)
