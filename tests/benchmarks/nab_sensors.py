"""The NAB run behind tests/benchmarks/test_sensor_anomaly.py, importable on its own so
the figures can be reproduced (and settings compared) without pytest:

    python -m tests.benchmarks.nab_sensors [FOLDER ...]

For each labelled series: train a model on its first 15% (NAB's probationary period,
assumed normal), convert it to int8, replay the whole file through the device's
pipeline and count recall and precision on the remaining 85% (evaluate_sensors).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from converters.convert import convert_model
from device.bundle.reader import read_bundle
from device.runtime import load_for_manifest
from device.sensors.series import read_csv_series
from training.evaluate_sensors import (
    FileEvaluation,
    evaluate_series,
    read_label_windows,
    sensor_pipeline,
)
from training.train_sensors import SensorTrainOptions, train_sensor_model

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PROBATION = 0.15
#: Folders with labelled anomalies, in NAB's order; those present are used.
DEFAULT_FOLDERS = (
    "artificialWithAnomaly",
    "realAdExchange",
    "realAWSCloudwatch",
    "realKnownCause",
    "realTraffic",
    "realTweets",
)
OPTIONS = SensorTrainOptions(epochs=60, patience=8, progress=False, plots=False)


def nab_dir() -> Path:
    configured = os.environ.get("EDGEWATCH_NAB")
    return Path(configured) if configured else REPO.parent / "shared" / "datasets" / "nab"


@dataclass(frozen=True)
class NabRun:
    files: tuple[FileEvaluation, ...]
    folders: tuple[str, ...]
    windows: int
    score_s: float
    train_s: float

    def total(self, name: str) -> int:
        return int(sum(getattr(f, name) for f in self.files))

    @property
    def recall(self) -> float:
        n = self.total("label_windows")
        return self.total("detected_label_windows") / n if n else 0.0

    @property
    def event_recall(self) -> float:
        n = self.total("label_windows")
        return self.total("evented_label_windows") / n if n else 0.0

    @property
    def event_precision(self) -> float:
        n = self.total("events")
        return self.total("events_in_label") / n if n else 0.0

    @property
    def window_precision(self) -> float:
        n = self.total("anomalous_windows")
        return self.total("anomalous_in_label") / n if n else 0.0

    def folder_rows(self) -> list[str]:
        rows = []
        for folder in self.folders:
            files = [f for f in self.files if f.file.startswith(folder + "/")]
            labels = sum(f.label_windows for f in files)
            found = sum(f.detected_label_windows for f in files)
            evented = sum(f.evented_label_windows for f in files)
            events = sum(f.events for f in files)
            inside = sum(f.events_in_label for f in files)
            rows.append(
                f"{folder:<22} files {len(files):2d}  recall {found:3d}/{labels:<3d}  "
                f"event recall {evented:3d}/{labels:<3d}  events in label {inside:3d}/{events:<3d}"
            )
        return rows


def run_nab(
    root: Path,
    folders: Sequence[str] = DEFAULT_FOLDERS,
    options: SensorTrainOptions = OPTIONS,
    work: Path | None = None,
) -> NabRun:
    labels = read_label_windows(root) or {}
    present = tuple(f for f in folders if (root / f).is_dir())
    rows: list[FileEvaluation] = []
    windows = 0
    score_s = train_s = 0.0
    with tempfile.TemporaryDirectory(prefix="edgewatch-nab-") as tmp:
        base = work or Path(tmp)
        for folder in present:
            for path in sorted((root / folder).glob("*.csv")):
                relative = f"{folder}/{path.name}"
                series = read_csv_series(path, name=relative)
                head = series.slice(0, int(len(series) * PROBATION))
                began = time.perf_counter()
                model_dir = base / path.stem
                train_sensor_model([head], model_dir, replace(options, name="nab"), relative)
                bundle_path = convert_model(model_dir, "int8", base / f"{path.stem}.ewm").out
                train_s += time.perf_counter() - began
                bundle = read_bundle(bundle_path)
                runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
                pipeline = sensor_pipeline(bundle, runtime)
                began = time.perf_counter()
                row = evaluate_series(pipeline, series, labels.get(relative, []), PROBATION,
                                      relative)  # fmt: skip
                score_s += time.perf_counter() - began
                windows += pipeline.stats().inferences
                rows.append(row)
                log.info("%s: %s", relative, row)
    return NabRun(tuple(rows), present, windows, score_s, train_s)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    root = nab_dir()
    folders = tuple(argv) or DEFAULT_FOLDERS
    run = run_nab(root, folders)
    for line in run.folder_rows():
        sys.stdout.write(line + "\n")
    sys.stdout.write(json.dumps({
        "recall": round(run.recall, 4),
        "window_precision": round(run.window_precision, 4),
        "event_recall": round(run.event_recall, 4),
        "event_precision": round(run.event_precision, 4),
        "windows_per_s": round(run.windows / run.score_s, 1) if run.score_s else 0.0,
        "train_s": round(run.train_s, 1),
    }) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
