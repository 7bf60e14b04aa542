"""`edgewatch train log-anomaly DIR`: normal logs → a DeepLog-style next-event model folder.

Two input formats:

* ``lines`` (``DIR/*.log``, the dataset contract): templates are mined with the shared
  Drain miner, the frozen vocabulary turns every line into an id exactly as the device
  will, and each file's known events give (last ``history`` events → next event)
  examples. The last ``val_fraction`` of every file's examples is held out (time order:
  the model is judged on what came after what it learned from).
* ``sessions`` (DeepLog's ``normal.txt``: one session a line of event ids): a seeded
  ``train_fraction`` of the sessions is trained on, as DeepLog trained on a small part
  of HDFS's normal sessions; the rest stays for evaluation. Sessions are padded with the
  boundary class at both ends, so their starts and ends are learnt too.

The model (``training.models.sequence``) is trained with early stopping on the held-out
examples. ``top_g`` is then chosen, unless given, as the smallest g for which at least
``target_hit_rate`` of the held-out next events rank within the model's top g: on normal
data, the share of events it would call anomalous is at most ``1 - target_hit_rate``.
A probability floor (``min_probability``) is chosen the same way (see
``choose_min_probability``) for the impossible events that top-g lets through.

The folder written is the one ``edgewatch convert`` reads (converters/model_dir.py), with
int32 windows in heldout.npz and calibration.npz (converters/sequence_samples.py).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.log_folder import ranks
from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    MODEL_FILE,
    REPORT_DIR,
    TrainedModelInfo,
    write_info,
)
from converters.sequence_samples import WindowSet, write_windows
from device.bundle.manifest import LogPreprocessing, NextEventDecoding, ParameterRange
from device.errors import DatasetError, EdgewatchError
from device.logs.templates import DrainParameters
from device.pipelines.log_events import EventMapper, session_windows, stream_windows
from training.datasets.log_lines import (
    line_ids,
    load_log_folder,
    mine_vocabulary,
    parameter_ranges,
)
from training.datasets.log_sessions import (
    NORMAL_FILE,
    event_order,
    file_sha256,
    is_session_folder,
    read_sessions,
    split_sessions,
    take,
)
from training.models.sequence import Architecture, SequenceModelSpec, build_next_event_model
from training.report import plot_history
from training.tf_setup import DeviceInfo, configure_devices, import_keras

log = logging.getLogger(__name__)

IntArray = np.ndarray[Any, np.dtype[np.int32]]
InputFormat = Literal["auto", "lines", "sessions"]
CALIBRATION_WINDOWS = 500
MAX_AUTO_MIN_PROBABILITY = 0.05
HELDOUT_WINDOWS = 5000
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LogTrainOptions:
    """Everything that shapes a log-model training run; recorded in its provenance."""

    epochs: int = 30
    batch_size: int = 256
    seed: int = 0
    #: Events the model looks back on (DeepLog's h).
    history: int = 10
    #: DeepLog's g; None: the smallest g reaching ``target_hit_rate`` on held-out data.
    top_g: int | None = None
    #: Also anomalous below this probability; None: chosen on held-out data (see
    #: ``choose_min_probability``), 0 turns the rule off.
    min_probability: float | None = None
    target_hit_rate: float = 0.999
    architecture: Architecture = "mlp"
    embedding: int = 16
    units: int = 128
    patience: int = 3
    learning_rate: float = 3e-3
    val_fraction: float = 0.1
    input_format: InputFormat = "auto"
    #: Sessions: share of normal.txt trained on (the rest is for evaluation).
    train_fraction: float = 0.1
    drain: DrainParameters = field(default_factory=DrainParameters)
    parameter_checks: bool = True
    #: A numeric slot needs this many values in training to be range-checked.
    parameter_min_samples: int = 50
    #: Decades of magnitude a value may go beyond its trained range.
    parameter_margin: float = 1.0
    name: str | None = None
    version: str = "1"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (1 <= self.history <= 512, f"history must be 1..512 events, got {self.history}"),
            (self.top_g is None or self.top_g >= 1, f"top-g must be at least 1, got {self.top_g}"),
            (self.min_probability is None or 0.0 <= self.min_probability < 1.0,
             f"min probability must be in [0, 1), got {self.min_probability}"),
            (0.5 <= self.target_hit_rate < 1.0,
             f"target hit rate must be in [0.5, 1), got {self.target_hit_rate}"),
            (0.0 <= self.val_fraction < 0.5,
             f"validation share must be in [0, 0.5), got {self.val_fraction}"),
            (0.0 < self.train_fraction <= 1.0,
             f"training share must be in (0, 1], got {self.train_fraction}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
        )  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise EdgewatchError(message)


@dataclass(frozen=True)
class LogCorpus:
    """Training examples and what the bundle needs to reproduce them on the device."""

    spec: LogPreprocessing
    train: WindowSet
    val: WindowSet
    ranges: tuple[ParameterRange, ...]
    provenance: dict[str, str]


@dataclass(frozen=True)
class LogTrainResult:
    out_dir: Path
    model_path: Path
    input_format: Literal["lines", "sessions"]
    templates: int
    epochs_run: int
    train_windows: int
    val_windows: int
    top_g: int
    min_probability: float
    #: Held-out next events the model ranked first, within the top g, and judged normal
    #: by both rules (top g and the probability floor).
    val_top1: float
    val_hit_rate: float
    val_normal_rate: float
    report_dir: Path
    device: DeviceInfo


# -- data --------------------------------------------------------------------------------


def resolve_format(data_dir: Path, requested: InputFormat) -> Literal["lines", "sessions"]:
    if requested != "auto":
        return requested
    return "sessions" if is_session_folder(data_dir) else "lines"


def _concat(parts: Sequence[tuple[IntArray, IntArray]], history: int) -> WindowSet:
    if not parts:
        return WindowSet(np.empty((0, history), np.int32), np.empty(0, np.int32))
    return WindowSet(
        np.concatenate([p[0] for p in parts]).astype(np.int32),
        np.concatenate([p[1] for p in parts]).astype(np.int32),
    )


def prepare_lines(data_dir: Path, options: LogTrainOptions) -> LogCorpus:
    files = load_log_folder(data_dir)
    vocabulary = mine_vocabulary(files, options.drain)
    spec = LogPreprocessing(input_format="lines", history=options.history, vocabulary=vocabulary)
    mapper = EventMapper(spec)
    ids = [line_ids(mapper, f.lines) for f in files]
    train_parts: list[tuple[IntArray, IntArray]] = []
    val_parts: list[tuple[IntArray, IntArray]] = []
    for file_ids in ids:
        x, y = stream_windows(file_ids.tolist(), options.history)
        held = math.ceil(len(x) * options.val_fraction) if len(x) >= 20 else 0
        cut = len(x) - held
        train_parts.append((x[:cut], y[:cut]))
        val_parts.append((x[cut:], y[cut:]))
    train = _concat(train_parts, options.history)
    if len(train) == 0:
        raise DatasetError(
            f"the logs in {data_dir} give no training example: a file needs more than "
            f"history ({options.history}) known, non-blank lines; add more log lines or "
            "lower --history"
        )
    ranges = (
        parameter_ranges(mapper, files, ids, options.parameter_min_samples)
        if options.parameter_checks
        else ()
    )
    lines = sum(len(f.lines) for f in files)
    return LogCorpus(
        spec=spec,
        train=train,
        val=_concat(val_parts, options.history),
        ranges=ranges,
        provenance={
            "input_format": "lines",
            "log_files": str(len(files)),
            "log_lines": str(lines),
            "templates": str(len(vocabulary.templates)),
        },
    )


def prepare_sessions(data_dir: Path, options: LogTrainOptions) -> LogCorpus:
    path = data_dir / NORMAL_FILE
    if not path.is_file():
        raise DatasetError(
            f"{data_dir} has no {NORMAL_FILE}; the session format is DeepLog's: "
            f"{NORMAL_FILE} (and abnormal.txt for evaluation), one session a line of "
            "space-separated event ids"
        )
    sessions = read_sessions(path)
    if not sessions:
        raise DatasetError(f"{path} holds no sessions")
    split = split_sessions(len(sessions), options.train_fraction, options.seed)
    chosen = take(sessions, split.train)
    events = event_order(chosen)
    spec = LogPreprocessing(input_format="sessions", history=options.history, events=events)
    mapper = EventMapper(spec)
    order = np.random.default_rng([options.seed, 23]).permutation(len(chosen))
    held = round(len(chosen) * options.val_fraction) if len(chosen) >= 10 else 0
    val_set = set(order[:held].tolist())
    train_parts: list[tuple[IntArray, IntArray]] = []
    val_parts: list[tuple[IntArray, IntArray]] = []
    for index, session in enumerate(chosen):
        windows = session_windows([mapper.event_id(e) for e in session], options.history,
                                  spec.boundary)  # fmt: skip
        (val_parts if index in val_set else train_parts).append(windows)
    return LogCorpus(
        spec=spec,
        train=_concat(train_parts, options.history),
        val=_concat(val_parts, options.history),
        ranges=(),
        provenance={
            "input_format": "sessions",
            "sessions_file": NORMAL_FILE,
            "sessions_sha256": file_sha256(path),
            "sessions_total": str(len(sessions)),
            "train_fraction": repr(options.train_fraction),
            "train_sessions": str(len(chosen)),
            "split_seed": str(options.seed),
            "events": str(len(events)),
        },
    )


# -- model -------------------------------------------------------------------------------


def choose_top_g(rank_values: IntArray, target: float, classes: int) -> int:
    """The smallest g with at least ``target`` of the ranks within it."""
    if len(rank_values) == 0:
        return min(9, classes - 2)
    ordered = np.sort(rank_values)
    g = int(ordered[min(len(ordered) - 1, math.ceil(target * len(ordered)) - 1)])
    return max(1, min(g, classes - 2))


def choose_min_probability(probabilities: np.ndarray[Any, Any], target: float) -> float:
    """Half the probability below which ``1 - target`` of the held-out events fall.

    Top-g alone cannot see an impossible event when the model's best guesses are few:
    after "job queued" only "worker picked it up" is normal, yet a top-5 rule lets four
    arbitrary events through. A probability floor set from the held-out data catches
    those at the same false-alarm budget on normal data (halved for a margin), and never
    above 0.05, so that it stays a floor for the impossible, not a judgement on the rare.
    """
    if len(probabilities) == 0:
        return 0.0
    floor = 0.5 * float(np.quantile(probabilities, 1.0 - target, method="lower"))
    return min(MAX_AUTO_MIN_PROBABILITY, floor)


def _progress(keras: Any, epochs: int, steps: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    class Progress(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        """One bar over every batch of the run, the latest loss beside it."""

        def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
            self.bar = tqdm(total=epochs * steps, unit="batch", desc="training",
                            disable=None if enabled else True, leave=True)  # fmt: skip

        def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
            self.bar.update(1)
            if logs:
                self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}")

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            text = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                             if isinstance(v, float))  # fmt: skip
            self.bar.set_description(f"epoch {epoch + 1}/{epochs}")
            log.info("epoch %d/%d: %s", epoch + 1, epochs, text)

        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            self.bar.close()

    return Progress()


def _fit(
    keras: Any, corpus: LogCorpus, options: LogTrainOptions, name: str
) -> tuple[Any, dict[str, list[float]]]:
    spec = SequenceModelSpec(
        classes=corpus.spec.classes,
        history=options.history,
        architecture=options.architecture,
        embedding=options.embedding,
        units=options.units,
    )
    model = build_next_event_model(keras, spec, _NAME_CHARS.sub("_", name))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    has_val = len(corpus.val) > 0
    monitor = "val_loss" if has_val else "loss"
    batch = min(options.batch_size, len(corpus.train))
    steps = math.ceil(len(corpus.train) / batch)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=options.patience,
                                      restore_best_weights=True),
        _progress(keras, options.epochs, steps, options.progress),
    ]  # fmt: skip
    log.info(
        "training %s (%s) on %d windows (%d held out), %d classes, history %d",
        name, options.architecture, len(corpus.train), len(corpus.val), corpus.spec.classes,
        options.history,
    )  # fmt: skip
    fitted = model.fit(
        corpus.train.x,
        corpus.train.y,
        batch_size=batch,
        epochs=options.epochs,
        validation_data=(corpus.val.x, corpus.val.y) if has_val else None,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return model, history


# -- the whole run -----------------------------------------------------------------------


def model_name(options: LogTrainOptions, data_dir: Path) -> str:
    if options.name:
        return options.name
    cleaned = _NAME_CHARS.sub("-", data_dir.resolve().name).strip("-._")
    return cleaned or "log-anomaly"


def train_log_anomaly(
    data_dir: Path, out_dir: Path, options: LogTrainOptions | None = None
) -> LogTrainResult:
    """Read, train, choose top-g and write the trained-model folder."""
    options = options or LogTrainOptions()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    input_format = resolve_format(data_dir, options.input_format)
    corpus = (
        prepare_sessions(data_dir, options)
        if input_format == "sessions"
        else prepare_lines(data_dir, options)
    )
    keras = import_keras()
    device = configure_devices(options.seed, mixed_precision=False)
    name = model_name(options, data_dir)
    model, history = _fit(keras, corpus, options, name)
    judged = corpus.val if len(corpus.val) else corpus.train
    logits = np.asarray(model.predict(judged.x, batch_size=1024, verbose=0))
    assert judged.y is not None
    val_ranks = ranks(logits, judged.y)
    classes = corpus.spec.classes
    top_g = options.top_g or choose_top_g(val_ranks, options.target_hit_rate, classes)
    top_g = min(top_g, classes - 1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    val_p = probabilities[np.arange(len(judged.y)), judged.y]
    min_probability = (
        options.min_probability
        if options.min_probability is not None
        else choose_min_probability(val_p[val_ranks <= top_g], options.target_hit_rate)
    )
    val_top1 = float(np.mean(val_ranks == 1)) if len(val_ranks) else 0.0
    hit_rate = float(np.mean(val_ranks <= top_g)) if len(val_ranks) else 0.0
    normal_rate = (
        float(np.mean((val_ranks <= top_g) & (val_p >= min_probability))) if len(val_ranks) else 0.0
    )
    decoding = NextEventDecoding(
        top_g=top_g,
        logits=True,
        min_probability=min_probability,
        parameter_ranges=corpus.ranges,
        parameter_margin=options.parameter_margin,
    )
    epochs_run = len(history.get("loss", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    provenance = {
        **corpus.provenance,
        "data_dir": data_dir.resolve().name,
        "architecture": options.architecture,
        "history": str(options.history),
        "train_windows": str(len(corpus.train)),
        "val_windows": str(len(corpus.val)),
        "epochs_requested": str(options.epochs),
        "epochs_run": str(epochs_run),
        "seed": str(options.seed),
        "top_g": f"{top_g} ({'given' if options.top_g else f'auto, {options.target_hit_rate}'})",
        "min_probability": f"{min_probability:.3g} "
        f"({'given' if options.min_probability is not None else 'auto'})",
        "val_top1": f"{val_top1:.4f}",
        "val_hit_rate": f"{hit_rate:.4f}",
        "val_normal_rate": f"{normal_rate:.4f}",
        "tensorflow": device.tensorflow_version,
        "keras": device.keras_version,
        "trained_on": device.describe(),
    }
    write_info(
        out_dir,
        TrainedModelInfo(
            name=name,
            version=options.version,
            task="log-anomaly",
            labels=corpus.spec.class_labels(),
            preprocessing=corpus.spec,
            decoding=decoding,
            outputs_probabilities=False,
            heldout_accuracy=val_top1 if len(corpus.val) else None,
            provenance=provenance,
        ),
    )
    rng = np.random.default_rng([options.seed, 5])
    write_windows(out_dir / HELDOUT_FILE, _subset(judged, HELDOUT_WINDOWS, rng))
    calibration = _subset(corpus.train, CALIBRATION_WINDOWS, rng)
    write_windows(out_dir / CALIBRATION_FILE, WindowSet(calibration.x, None))
    report_dir = _write_report(
        out_dir / REPORT_DIR, name, history=history, val_ranks=val_ranks, top_g=top_g,
        provenance=provenance,
    )  # fmt: skip
    log.info(
        "%s: %d epochs, held-out top-1 %.3f, %.4f within top-%d; model folder %s",
        name, epochs_run, val_top1, hit_rate, top_g, out_dir,
    )  # fmt: skip
    return LogTrainResult(
        out_dir=out_dir,
        model_path=out_dir / MODEL_FILE,
        input_format=input_format,
        templates=corpus.spec.boundary - 1,
        epochs_run=epochs_run,
        train_windows=len(corpus.train),
        val_windows=len(corpus.val),
        top_g=top_g,
        min_probability=min_probability,
        val_top1=val_top1,
        val_hit_rate=hit_rate,
        val_normal_rate=normal_rate,
        report_dir=report_dir,
        device=device,
    )


def _subset(windows: WindowSet, limit: int, rng: np.random.Generator) -> WindowSet:
    if len(windows) <= limit:
        return windows
    chosen = np.sort(rng.choice(len(windows), limit, replace=False))
    return WindowSet(windows.x[chosen], windows.y[chosen] if windows.y is not None else None)


def _write_report(
    directory: Path,
    name: str,
    *,
    history: Mapping[str, Sequence[float]],
    val_ranks: IntArray,
    top_g: int,
    provenance: Mapping[str, str],
) -> Path:
    """report.json, report.md and the training curves (loss and top-1 accuracy)."""
    directory.mkdir(parents=True, exist_ok=True)
    curves = plot_history(history, directory / "training_curves.png")
    within = {g: float(np.mean(val_ranks <= g)) if len(val_ranks) else 0.0
              for g in sorted({1, 2, 3, 5, top_g, 9, 15, 20})}  # fmt: skip
    document = {
        "model": name,
        **provenance,
        "held_out_share_within_top_g": {str(g): v for g, v in within.items()},
        "history": {k: list(v) for k, v in history.items()},
    }
    (directory / "report.json").write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    lines = [f"# {name}: next-event model", ""]
    lines += [f"- **{k}**: {v}" for k, v in provenance.items()]
    lines += ["", "| g | held-out next events within top g |", "|---:|---:|"]
    lines += [f"| {g}{' (chosen)' if g == top_g else ''} | {v:.4f} |" for g, v in within.items()]
    if curves is not None:
        lines += ["", "![training curves](training_curves.png)"]
    (directory / "report.md").write_text("\n".join(lines) + "\n", "utf-8")
    return directory
