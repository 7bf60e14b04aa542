"""`edgewatch evaluate` for log-anomaly bundles, through the device's own pipeline.

The bundle is read and verified by the device's reader, loaded by its runtime (tensor
check and golden smoke test), and every line goes through ``LogAnomalyPipeline`` exactly
as in the daemon: templated with the bundle's vocabulary, one history per file, scored in
batches. So the figures are the ones a device would get on the same logs.

Two kinds of folders:

* ``DIR/*.log`` with ``DIR/labels.csv`` (file,line,label): line-level precision, recall
  and F1 (a line is predicted anomalous when the pipeline says so; lines labels.csv does
  not list are normal);
* DeepLog's ``normal.txt`` / ``abnormal.txt`` (for a bundle trained on sessions):
  session-level figures, a session being anomalous when any of its events (or its end)
  is. When ``normal.txt`` is the file the bundle was trained on (same sha256), the
  sessions it learnt from are left out, so only unseen sessions are counted.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from converters.log_folder import ABNORMAL_FILE, NORMAL_FILE, load_log_folder, read_sessions
from device.bundle.reader import Bundle, read_bundle
from device.errors import DatasetError
from device.logs.record import LogLine
from device.pipelines.log_anomaly import LogAnomalyPipeline, LogScore
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.next_event import log_model_parts
from device.runtime import load_for_manifest
from training.datasets.log_labels import LABELS_FILE, read_labels
from training.datasets.log_sessions import file_sha256, is_session_folder, split_sessions

log = logging.getLogger(__name__)

BATCH_LINES = 1000
BATCH_SESSIONS = 5000
Level = Literal["lines", "sessions"]


@dataclass(frozen=True)
class DetectionMetrics:
    """Counts and precision/recall/F1 of "anomalous" as the positive class."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_positive_rate(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @classmethod
    def count(
        cls, truth: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]
    ) -> DetectionMetrics:
        t, p = truth.astype(bool), predicted.astype(bool)
        return cls(
            tp=int(np.sum(t & p)), fp=int(np.sum(~t & p)), fn=int(np.sum(t & ~p)),
            tn=int(np.sum(~t & ~p)),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "false_positive_rate": self.false_positive_rate,
        }  # fmt: skip


@dataclass(frozen=True)
class LogEvaluationResult:
    bundle: Path
    data_dir: Path
    model: str
    quantization: str
    level: Level
    metrics: DetectionMetrics
    top_g: int
    min_probability: float
    #: Verdicts by reason (anomalous and not).
    reasons: dict[str, int]
    #: Lines (or session events) per second through the pipeline, reading excluded.
    items_per_s: float
    #: Per file (lines) or per session file (sessions).
    per_file: dict[str, DetectionMetrics] = field(default_factory=dict)
    #: Normal sessions left out because the bundle was trained on them.
    excluded_training_sessions: int = 0
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "bundle": self.bundle.name,
            "data_dir": self.data_dir.name,
            "model": self.model,
            "quantization": self.quantization,
            "level": self.level,
            "top_g": self.top_g,
            "min_probability": self.min_probability,
            **self.metrics.to_dict(),
            "reasons": self.reasons,
            "items_per_s": self.items_per_s,
            "per_file": {name: m.to_dict() for name, m in self.per_file.items()},
            "excluded_training_sessions": self.excluded_training_sessions,
        }
        if self.report is not None:
            document["report"] = str(self.report)
        return document

    def render_text(self) -> str:
        m = self.metrics
        unit = "line" if self.level == "lines" else "session"
        lines = [
            f"{self.model} ({self.quantization}) on {self.data_dir.name}: {unit}-level "
            f"precision {m.precision:.4f}, recall {m.recall:.4f}, F1 {m.f1:.4f}",
            f"  {m.tp} true and {m.fp} false alarms, {m.fn} missed, {m.tn} quiet; "
            f"false-positive rate {m.false_positive_rate:.4%}",
            f"  top-{self.top_g}"
            + (f", probability floor {self.min_probability:.3g}" if self.min_probability else "")
            + f"; {self.items_per_s:,.0f} {'lines' if self.level == 'lines' else 'events'}/s "
            "through the pipeline",
            "  verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())),
        ]
        if self.excluded_training_sessions:
            lines.append(f"  {self.excluded_training_sessions} normal sessions the bundle was "
                         "trained on were left out")  # fmt: skip
        for name, fm in self.per_file.items():
            lines.append(f"  {name}: P {fm.precision:.3f} R {fm.recall:.3f} F1 {fm.f1:.3f} "
                         f"(tp {fm.tp}, fp {fm.fp}, fn {fm.fn})")  # fmt: skip
        if self.report is not None:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def _pipeline(
    bundle: Bundle, path: Path, threads: int, top_g: int | None, min_probability: float | None
) -> LogAnomalyPipeline:
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, threads=threads,
                                edgetpu="auto")  # fmt: skip
    config = LogAnomalyPipelineConfig(
        source="evaluate", model=path, top_g=top_g, min_probability=min_probability,
        max_reports_per_s=0.0,
    )  # fmt: skip
    return LogAnomalyPipeline("evaluate", config, bundle, runtime)


def evaluate_log_bundle(
    bundle_path: Path,
    data_dir: Path,
    *,
    threads: int = 1,
    public_key: Ed25519PublicKey | None = None,
    out_dir: Path | None = None,
    top_g: int | None = None,
    min_probability: float | None = None,
) -> LogEvaluationResult:
    """Score ``data_dir`` with the bundle the daemon's way; see the module docstring."""
    bundle_path, data_dir = Path(bundle_path), Path(data_dir)
    bundle = read_bundle(bundle_path, public_key=public_key)
    spec, _ = log_model_parts(bundle.manifest)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a directory")
    sessions = is_session_folder(data_dir)
    if spec.input_format == "sessions" and not sessions:
        raise DatasetError(
            f"{bundle.manifest.model_ref} was trained on sessions; evaluate it on a folder "
            f"with {NORMAL_FILE} and {ABNORMAL_FILE}"
        )
    if spec.input_format == "lines" and sessions:
        raise DatasetError(
            f"{data_dir.name} holds sessions of event ids, but {bundle.manifest.model_ref} "
            "templates log lines; evaluate it on DIR/*.log with DIR/labels.csv"
        )
    pipeline = _pipeline(bundle, bundle_path, threads, top_g, min_probability)
    if sessions:
        result = _evaluate_sessions(pipeline, bundle_path, data_dir)
    else:
        result = _evaluate_lines(pipeline, bundle_path, data_dir, out_dir)
    if out_dir is not None:
        result = _write_report(out_dir, result)
    log.info("%s on %s: precision %.4f, recall %.4f, F1 %.4f", bundle.manifest.model_ref,
             data_dir.name, result.metrics.precision, result.metrics.recall,
             result.metrics.f1)  # fmt: skip
    return result


def _evaluate_lines(
    pipeline: LogAnomalyPipeline, bundle_path: Path, data_dir: Path, out_dir: Path | None
) -> LogEvaluationResult:
    labels_path = data_dir / LABELS_FILE
    if not labels_path.is_file():
        raise DatasetError(
            f"{data_dir} has no {LABELS_FILE}; evaluation needs file,line,label rows that "
            "say which lines are anomalous"
        )
    files = load_log_folder(data_dir)
    labels = read_labels(labels_path, {f.name: len(f.lines) for f in files})
    per_file: dict[str, DetectionMetrics] = {}
    truth_all: list[np.ndarray[Any, Any]] = []
    pred_all: list[np.ndarray[Any, Any]] = []
    reasons: Counter[str] = Counter()
    flagged: list[tuple[str, int, LogScore, bool]] = []
    elapsed = 0.0
    for f in files:
        records = [LogLine("evaluate", f.name, text, 0.0) for text in f.lines]
        verdicts: list[LogScore] = []
        started = time.perf_counter()
        for start in range(0, len(records), BATCH_LINES):
            verdicts += pipeline.process_batch(records[start : start + BATCH_LINES])
        elapsed += time.perf_counter() - started
        predicted = np.fromiter((v.anomalous for v in verdicts), dtype=bool, count=len(verdicts))
        truth = labels[f.name]
        per_file[f.name] = DetectionMetrics.count(truth, predicted)
        truth_all.append(truth)
        pred_all.append(predicted)
        reasons.update(v.reason for v in verdicts)
        if out_dir is not None:
            flagged += [(f.name, i + 1, v, bool(truth[i])) for i, v in enumerate(verdicts)
                        if v.anomalous or truth[i]]  # fmt: skip
    lines = sum(len(f.lines) for f in files)
    metrics = DetectionMetrics.count(np.concatenate(truth_all), np.concatenate(pred_all))
    if out_dir is not None:
        _write_flagged(out_dir, flagged)
    return LogEvaluationResult(
        bundle=bundle_path,
        data_dir=data_dir,
        model=pipeline.manifest.model_ref,
        quantization=pipeline.manifest.quantization,
        level="lines",
        metrics=metrics,
        top_g=pipeline.top_g,
        min_probability=pipeline.min_probability,
        reasons=dict(reasons),
        items_per_s=lines / elapsed if elapsed > 0 else 0.0,
        per_file=per_file,
    )


def _training_split(pipeline: LogAnomalyPipeline, path: Path, count: int) -> set[int]:
    """Indices of the normal sessions the bundle learnt from, when ``path`` is its file."""
    provenance = pipeline.manifest.provenance
    if provenance.get("sessions_sha256") != file_sha256(path):
        return set()
    try:
        fraction = float(provenance["train_fraction"])
        seed = int(provenance["split_seed"])
    except (KeyError, ValueError):
        return set()
    return set(split_sessions(count, fraction, seed).train.tolist())


def _evaluate_sessions(
    pipeline: LogAnomalyPipeline, bundle_path: Path, data_dir: Path
) -> LogEvaluationResult:
    normal_path = data_dir / NORMAL_FILE
    normal = read_sessions(normal_path)
    trained = _training_split(pipeline, normal_path, len(normal))
    normal = [s for i, s in enumerate(normal) if i not in trained]
    abnormal_path = data_dir / ABNORMAL_FILE
    abnormal = read_sessions(abnormal_path) if abnormal_path.is_file() else []
    if not normal and not abnormal:
        raise DatasetError(f"{data_dir} holds no sessions to evaluate")
    sessions = normal + abnormal
    started = time.perf_counter()
    verdicts = []
    for start in range(0, len(sessions), BATCH_SESSIONS):  # bounds the keys held at once
        verdicts += pipeline.score_sessions(sessions[start : start + BATCH_SESSIONS])
    elapsed = time.perf_counter() - started
    predicted = np.fromiter((v.anomalous for v in verdicts), dtype=bool, count=len(verdicts))
    truth = np.concatenate([np.zeros(len(normal), bool), np.ones(len(abnormal), bool)])
    events = sum(len(s) + 1 for s in sessions)
    return LogEvaluationResult(
        bundle=bundle_path,
        data_dir=data_dir,
        model=pipeline.manifest.model_ref,
        quantization=pipeline.manifest.quantization,
        level="sessions",
        metrics=DetectionMetrics.count(truth, predicted),
        top_g=pipeline.top_g,
        min_probability=pipeline.min_probability,
        reasons=dict(Counter(v.reason for v in verdicts)),
        items_per_s=events / elapsed if elapsed > 0 else 0.0,
        per_file={
            NORMAL_FILE: DetectionMetrics.count(truth[: len(normal)], predicted[: len(normal)]),
            ABNORMAL_FILE: DetectionMetrics.count(truth[len(normal) :], predicted[len(normal) :]),
        },
        excluded_training_sessions=len(trained),
    )


def _write_flagged(out_dir: Path, rows: list[tuple[str, int, LogScore, bool]]) -> None:
    """anomalies.csv: every line flagged or labelled anomalous, with the verdict's details."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "anomalies.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "line", "labelled", "flagged", "reason", "template_id", "rank",
                         "probability", "expected", "text"])  # fmt: skip
        for name, number, verdict, labelled in rows:
            writer.writerow([
                name, number, int(labelled), int(verdict.anomalous), verdict.reason,
                verdict.template_id, verdict.rank or "",
                f"{verdict.probability:.3g}" if verdict.probability is not None else "",
                " ".join(map(str, verdict.expected)), verdict.text,
            ])  # fmt: skip


def _write_report(out_dir: Path, result: LogEvaluationResult) -> LogEvaluationResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = replace(result, report=out_dir)
    (out_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", "utf-8")
    (out_dir / "report.md").write_text(
        f"# {result.model} on {result.data_dir.name}\n\n```\n{result.render_text()}\n```\n",
        "utf-8",
    )
    return result
