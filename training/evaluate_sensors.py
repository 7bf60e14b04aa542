"""`edgewatch evaluate FILE.ewm DIR` for sensor-anomaly bundles, against NAB-style labels.

Every ``DIR/**/*.csv`` (``labels/`` excluded) is replayed through the device's own
``SensorAnomalyPipeline`` (windowing, int8 invoke, scoring, debouncing) with the
bundle loaded as the daemon loads it. Labels come from ``DIR/labels/combined_windows.json``
(NAB's format: the CSV's path relative to DIR → ``[[start, end], ...]`` UTC times);
a file it does not list is taken to hold no anomaly.

What is counted (after the first ``probation`` share of each file, which only warms
the windows up, as NAB's probationary period):

* **recall**: labelled windows with at least one anomalous scored window ending inside
  them, over all labelled windows;
* **window precision**: anomalous scored windows ending inside a labelled window, over
  all anomalous windows;
* **event recall** and **event precision**, what a subscriber sees after debouncing:
  labelled windows in which an event was raised (its start), over all labelled windows;
  events raised inside a labelled window, over all events (one raised outside every
  labelled window is a false positive).

TensorFlow is never imported: the figures are the ones a device would produce.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.bundle.manifest import SensorPreprocessing
from device.bundle.reader import Bundle, read_bundle
from device.errors import BundleTaskError, DatasetError
from device.pipelines.sensor_anomaly import SensorAnomalyPipeline, SensorWindowResult
from device.runtime import ModelRuntime, load_for_manifest
from device.sensors.config import SensorAnomalyPipelineConfig
from device.sensors.parse import parse_timestamp
from device.sensors.reading import Reading
from device.sensors.series import SeriesData, read_csv_series

log = logging.getLogger(__name__)

TASK = "sensor-anomaly"
LABELS_FILE = Path("labels") / "combined_windows.json"
Span = tuple[float, float]


@dataclass(frozen=True)
class FileEvaluation:
    """One file's counts (after its probation)."""

    file: str
    samples: int
    windows: int
    anomalous_windows: int
    anomalous_in_label: int
    events: int
    events_in_label: int
    label_windows: int
    detected_label_windows: int
    #: Labelled windows in which an event was raised.
    evented_label_windows: int
    max_score: float


@dataclass(frozen=True)
class SensorEvaluationResult:
    bundle: Path
    data_dir: Path
    model: str
    version: str
    quantization: str
    threshold: float
    probation: float
    labelled: bool
    files: tuple[FileEvaluation, ...]
    #: Windows scored per second through the pipeline (all files, wall clock).
    windows_per_s: float
    threads: int

    def _sum(self, name: str) -> int:
        return int(sum(getattr(f, name) for f in self.files))

    @property
    def recall(self) -> float:
        total = self._sum("label_windows")
        return self._sum("detected_label_windows") / total if total else 0.0

    @property
    def event_recall(self) -> float:
        total = self._sum("label_windows")
        return self._sum("evented_label_windows") / total if total else 0.0

    @property
    def event_precision(self) -> float:
        total = self._sum("events")
        return self._sum("events_in_label") / total if total else 0.0

    @property
    def window_precision(self) -> float:
        total = self._sum("anomalous_windows")
        return self._sum("anomalous_in_label") / total if total else 0.0

    @property
    def event_f1(self) -> float:
        p, r = self.event_precision, self.event_recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle.name,
            "data_dir": self.data_dir.name,
            "model": self.model,
            "version": self.version,
            "quantization": self.quantization,
            "threshold": self.threshold,
            "probation": self.probation,
            "labelled": self.labelled,
            "threads": self.threads,
            "windows_per_s": round(self.windows_per_s, 1),
            "label_windows": self._sum("label_windows"),
            "detected_label_windows": self._sum("detected_label_windows"),
            "evented_label_windows": self._sum("evented_label_windows"),
            "events": self._sum("events"),
            "events_in_label": self._sum("events_in_label"),
            "windows": self._sum("windows"),
            "anomalous_windows": self._sum("anomalous_windows"),
            "recall": self.recall,
            "window_precision": self.window_precision,
            "event_recall": self.event_recall,
            "event_precision": self.event_precision,
            "event_f1": self.event_f1,
            "files": [asdict(f) for f in self.files],
        }

    def render_text(self) -> str:
        lines = [
            f"{self.model}@{self.version} ({self.quantization}) on {self.data_dir.name}: "
            f"{len(self.files)} file(s), {self._sum('windows')} windows scored at "
            f"{self.windows_per_s:,.0f} windows/s, threshold {self.threshold:.4g}",
        ]
        if self.labelled:
            lines.append(
                f"recall {self.recall:.3f} ({self._sum('detected_label_windows')}/"
                f"{self._sum('label_windows')} labelled windows with an anomalous window), "
                f"window precision {self.window_precision:.3f}"
            )
            lines.append(
                f"events: recall {self.event_recall:.3f} "
                f"({self._sum('evented_label_windows')} labelled windows with an event), "
                f"precision {self.event_precision:.3f} ({self._sum('events_in_label')}/"
                f"{self._sum('events')} events inside a labelled window), F1 {self.event_f1:.3f}"
            )
        else:
            lines.append(f"no {LABELS_FILE} in {self.data_dir.name}: detections only")
        if self.probation:
            lines.append(f"(first {self.probation:.0%} of each file not scored: probation)")
        width = max(len("file"), *(len(f.file) for f in self.files))
        lines += ["", f"{'file':<{width}}  labels  found  events  in-label  max score"]
        for f in self.files:
            lines.append(
                f"{f.file:<{width}}  {f.label_windows:6d}  {f.detected_label_windows:5d}  "
                f"{f.events:6d}  {f.events_in_label:8d}  {f.max_score:9.4g}"
            )
        return "\n".join(lines)


def read_label_windows(data_dir: Path) -> dict[str, list[Span]] | None:
    """NAB's combined_windows.json as relative path → spans (Unix s); None when absent."""
    path = data_dir / LABELS_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DatasetError(f"{path} must map CSV paths to lists of [start, end]")
    labels: dict[str, list[Span]] = {}
    for name, spans in document.items():
        parsed = []
        for span in spans if isinstance(spans, list) else [None]:
            start = parse_timestamp(span[0]) if isinstance(span, list) and len(span) == 2 else None
            end = parse_timestamp(span[1]) if start is not None and isinstance(span, list) else None
            if start is None or end is None:
                raise DatasetError(f"{path}: {name} has a window that is not [start, end]")
            parsed.append((start, end))
        labels[str(name)] = parsed
    return labels


def list_series_files(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a directory of CSV files")
    files = sorted(
        p for p in data_dir.rglob("*.csv")
        if p.is_file() and p.relative_to(data_dir).parts[0] != "labels"
    )  # fmt: skip
    if not files:
        raise DatasetError(f"{data_dir} holds no *.csv files to evaluate on")
    return files


def _inside(times: np.ndarray[Any, Any], spans: Sequence[Span]) -> np.ndarray[Any, Any]:
    hit = np.zeros(len(times), dtype=bool)
    for start, end in spans:
        hit |= (times >= start) & (times <= end)
    return hit


def replay(
    pipeline: SensorAnomalyPipeline, series: SeriesData
) -> tuple[list[SensorWindowResult], list[float]]:
    """Feed a whole series through the pipeline as readings; returns every scored window
    and the data time at which each event was raised (its start)."""
    results: list[SensorWindowResult] = []
    raised: list[float] = []
    readings = [
        Reading(source="evaluate", series=series.name, timestamp=t, values=tuple(row),
                columns=series.columns, received_at=t)
        for t, row in zip(series.timestamps.tolist(), series.values.tolist(), strict=True)
    ]  # fmt: skip
    for start in range(0, len(readings), 256):
        transitions = pipeline.process(readings[start : start + 256])
        results.extend(pipeline.last_results)
        raised.extend(t.captured_at for t in transitions if t.type == "start")
    pipeline.flush()
    return results, raised


def evaluate_series(
    pipeline: SensorAnomalyPipeline,
    series: SeriesData,
    spans: Sequence[Span],
    probation: float = 0.0,
    name: str | None = None,
) -> FileEvaluation:
    """One series' counts; see the module docstring."""
    results, raised = replay(pipeline, series)
    cutoff = -math.inf
    if probation > 0 and len(series):
        cutoff = float(series.timestamps[min(len(series) - 1, int(len(series) * probation))])
    ends = np.array([r.window_end for r in results], dtype=np.float64)
    flags = np.array([r.anomalous for r in results], dtype=bool)
    scores = np.array([r.score for r in results], dtype=np.float64)
    scored = ends >= cutoff
    ends, flags, scores = ends[scored], flags[scored], scores[scored]
    counted = [s for s in spans if s[1] >= cutoff]
    events = np.array([t for t in raised if t >= cutoff], dtype=np.float64)
    detected = sum(1 for span in counted if bool(np.any(flags & _inside(ends, [span]))))
    evented = sum(1 for span in counted if bool(np.any(_inside(events, [span]))))
    return FileEvaluation(
        file=name or series.name,
        samples=len(series),
        windows=int(scored.sum()),
        anomalous_windows=int(flags.sum()),
        anomalous_in_label=int((flags & _inside(ends, counted)).sum()),
        events=len(events),
        events_in_label=int(_inside(events, counted).sum()),
        label_windows=len(counted),
        detected_label_windows=detected,
        evented_label_windows=evented,
        max_score=float(scores.max()) if scores.size else 0.0,
    )


def _model_columns(series: SeriesData, spec: SensorPreprocessing) -> SeriesData:
    wanted = spec.column_names
    if all(name in series.columns for name in wanted):
        indices = [series.columns.index(name) for name in wanted]
    elif len(wanted) == 1 and len(series.columns) == 1:
        indices = [0]
    else:
        raise DatasetError(
            f"{series.name} has columns {list(series.columns)}; the model needs {list(wanted)}"
        )
    return SeriesData(series.name, series.timestamps, series.values[:, indices], wanted)


def sensor_pipeline(
    bundle: Bundle, runtime: ModelRuntime, threshold: float | None = None
) -> SensorAnomalyPipeline:
    """A fresh pipeline for one file (its own windows and event state)."""
    config = SensorAnomalyPipelineConfig(source="evaluate", model=Path("bundle.ewm"),
                                         threshold=threshold)  # fmt: skip
    return SensorAnomalyPipeline("evaluate", config, bundle, runtime)


def evaluate_sensor_bundle(
    bundle_path: Path,
    data_dir: Path,
    threads: int = 2,
    *,
    public_key: Ed25519PublicKey | None = None,
    out_dir: Path | None = None,
    probation: float = 0.0,
    threshold: float | None = None,
) -> SensorEvaluationResult:
    """Replay every CSV of ``data_dir`` through the bundle the way the daemon would."""
    bundle_path, data_dir = Path(bundle_path), Path(data_dir)
    if not 0.0 <= probation < 1.0:
        raise DatasetError(f"probation must be in [0, 1), got {probation}")
    bundle = read_bundle(bundle_path, public_key=public_key)
    manifest = bundle.manifest
    spec = manifest.preprocessing
    if manifest.task != TASK or not isinstance(spec, SensorPreprocessing):
        raise BundleTaskError(f"bundle {manifest.model_ref} is a {manifest.task} model")
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads=threads, edgetpu="auto")
    labels = read_label_windows(data_dir)
    rows: list[FileEvaluation] = []
    windows = 0
    elapsed = 0.0
    used_threshold = 0.0
    for path in list_series_files(data_dir):
        relative = path.relative_to(data_dir).as_posix()
        series = _model_columns(read_csv_series(path, name=relative), spec)
        pipeline = sensor_pipeline(bundle, runtime, threshold)
        used_threshold = pipeline.threshold
        spans = labels.get(relative, []) if labels is not None else []
        began = time.perf_counter()
        row = evaluate_series(pipeline, series, spans, probation, relative)
        elapsed += time.perf_counter() - began
        windows += pipeline.stats().inferences
        rows.append(row)
    result = SensorEvaluationResult(
        bundle=bundle_path,
        data_dir=data_dir,
        model=manifest.name,
        version=manifest.version,
        quantization=manifest.quantization,
        threshold=used_threshold,
        probation=probation,
        labelled=labels is not None,
        files=tuple(rows),
        windows_per_s=windows / elapsed if elapsed > 0 else 0.0,
        threads=threads,
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n",
                                             encoding="utf-8")  # fmt: skip
        (out_dir / "report.md").write_text(
            "```\n" + result.render_text() + "\n```\n", encoding="utf-8"
        )
    log.info("%s: recall %.3f, event precision %.3f over %d file(s)", manifest.model_ref,
             result.recall, result.event_precision, len(rows))  # fmt: skip
    return result
