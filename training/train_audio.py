"""`edgewatch train audio-classification`: a Speech Commands-style folder → a model folder.

The output is the trained-model folder ``edgewatch convert`` reads
(``converters.model_dir``). Clips are read by the device's file reader and turned into
features by the device's feature code (``device.audio.features``); the normalisation
statistics are measured on the clean training clips and stored in the manifest's
preprocessing, so the device normalises exactly as training did.

What makes a small dataset go further:

* splits by speaker (``training.datasets.speech_folder``), so validation and test
  accuracy are accuracy on voices the model never heard;
* waveform augmentation (shift, speed, gain, background noise at random SNRs) and
  SpecAugment masks, fresh every epoch (``training.audio_augment``);
* class weights (inverse frequency), so ``_unknown_`` and ``_silence_`` count as much
  as each keyword whatever their share of the folder;
* label smoothing, a cosine learning-rate decay, and early stopping on the validation
  speakers' loss with the best weights restored;
* an ensemble of DS-CNNs averaged inside the one exported model
  (``training.models.dscnn.build_dscnn_ensemble``): models that differ only in their
  initial weights disagree on unseen voices, and their average is better calibrated
  (lower validation log loss) than any of them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    HELDOUT_SPEAKERS,
    INFO_FILE,
    MODEL_FILE,
    PARITY_CLIPS_KEY,
    REPORT_DIR,
    FeatureSamples,
    TrainedModelInfo,
    write_feature_samples,
    write_info,
)
from device.audio.features import FeatureExtractor
from device.bundle.manifest import AudioPreprocessing
from device.errors import DatasetError, EdgewatchError
from training.audio_augment import AudioAugmentation
from training.datasets.speech_folder import (
    BACKGROUND_LABELS,
    SILENCE,
    UNATTRIBUTED,
    ClipIndex,
    LoadedClips,
    index_folder,
    load_clips,
    load_noise,
    split_by_speaker,
)
from training.report import ReportPaths, compute_metrics, write_report
from training.synthetic.noise import noise_bank
from training.tf_setup import DeviceInfo, configure_devices, import_keras
from training.train_image import class_weight_table

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
CALIBRATION_SAMPLES = 300
#: In the model folder: the held-out (test) speakers' clips, one path a line, relative
#: to the data folder, so `edgewatch evaluate` can be pointed at exactly those.
HELDOUT_LIST = "heldout_files.txt"
#: Training clips measured for the report and conversion parity when no speakers
#: are held out at all.
PARITY_TRAINING_CLIPS = 500
#: Seconds of each generated noise colour in the noise bank.
GENERATED_NOISE_S = 20.0
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class AudioTrainOptions:
    """Everything that shapes a training run; recorded in the model's provenance."""

    epochs: int = 80
    batch_size: int = 64
    seed: int = 0
    features: Literal["mfcc", "log-mel"] = "mfcc"
    n_mfcc: int = 10
    n_mels: int = 40
    sample_rate: int = 16_000
    clip_ms: float = 1000.0
    window_ms: float = 40.0
    hop_ms: float = 20.0
    fmin: float = 20.0
    #: Up to Nyquist: /s/ and /f/ ("yes", "stop", "off") carry their energy above 4 kHz,
    #: where MLPerf Tiny's features stop. Speech Commands, validation speakers: 0.864
    #: here and 0.867 with 4 kHz (a tie); held-out speakers 0.878 and 0.842 (docs/audio.md).
    fmax: float = 8000.0
    #: DS-CNN width (filters) and depthwise-separable blocks (64/4 is DS-CNN-S). 128
    #: filters: on Speech Commands' validation speakers 0.845 against 0.783 for 64, at
    #: about 9 M multiply-adds a window (well inside the real-time budget).
    width: int = 128
    blocks: int = 4
    #: DS-CNNs trained side by side (each on its own loss) and averaged inside the one
    #: exported model; 1: a single DS-CNN. Three: on Speech Commands' validation
    #: speakers 0.871 (log loss 0.517) against 0.864 (0.525) for one, for three times
    #: the multiply-adds (still an RTF far below 0.02, docs/audio.md).
    ensemble: int = 3
    dropout: float = 0.2
    learning_rate: float = 3e-3
    label_smoothing: float = 0.1
    #: Mixup: each batch is blended with a shuffled copy of itself, features and labels,
    #: by a Beta(mixup, mixup) weight; 0 turns it off.
    mixup: float = 0.0
    #: Epochs without a validation-loss gain before stopping (best weights restored).
    patience: int = 25
    warmup_epochs: int = 10
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    #: Word folders to keep as classes; every other word becomes ``_unknown_``. None:
    #: every folder is a class.
    keywords: tuple[str, ...] | None = None
    augmentation: AudioAugmentation | None = field(default_factory=AudioAugmentation)
    class_weights: bool = True
    #: Add generated noise colours to the noise bank (always, when the folder has no
    #: ``_background_noise_`` and no ``_silence_`` to take noise from).
    generated_noise: bool = True
    #: espeak-ng voice settings that speak every keyword (and as many other words, as
    #: ``_unknown_``) into the training split only; 0: none. Augmentation, never
    #: evaluation: validation and test stay real recordings.
    synthetic_voices: int = 0
    name: str | None = None
    version: str = "1"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.ensemble >= 1, f"ensemble must be at least 1, got {self.ensemble}"),
            (self.hop_ms > 0 and self.window_ms >= self.hop_ms,
             "window_ms must be at least hop_ms, both positive"),
            (self.clip_ms >= self.window_ms, "clip_ms must hold at least one window"),
        )  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise EdgewatchError(message)

    def preprocessing(self) -> AudioPreprocessing:
        """The feature parameters, before normalisation statistics are known."""
        window = round(self.sample_rate * self.window_ms / 1000.0)
        return AudioPreprocessing(
            sample_rate=self.sample_rate,
            clip_samples=round(self.sample_rate * self.clip_ms / 1000.0),
            n_fft=window,
            win_length=window,
            hop_length=round(self.sample_rate * self.hop_ms / 1000.0),
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=min(self.fmax, self.sample_rate / 2),
            features=self.features,
            n_mfcc=self.n_mfcc,
        )


@dataclass(frozen=True)
class AudioTrainResult:
    out_dir: Path
    model_path: Path
    info_path: Path
    epochs_run: int
    #: On the held-out speakers; None when none were held out (``test_fraction=0``).
    test_accuracy: float | None
    val_accuracy: float
    labels: tuple[str, ...]
    train_clips: int
    val_clips: int
    test_clips: int
    device: DeviceInfo
    report: ReportPaths


@dataclass(frozen=True)
class AudioDataset:
    """Loaded, split clips (waveforms fitted to the window) and the noise bank."""

    root: Path
    labels: tuple[str, ...]
    train: LoadedClips
    val: LoadedClips
    test: LoadedClips
    noises: tuple[FloatArray, ...]
    generated_silence: bool
    speakers: dict[str, int]

    @property
    def silence_index(self) -> int | None:
        return self.labels.index(SILENCE) if SILENCE in self.labels else None


def model_name(options: AudioTrainOptions, data_dir: Path) -> str:
    if options.name:
        return options.name
    cleaned = _NAME_CHARS.sub("-", data_dir.resolve().name).strip("-._")
    return cleaned or "audio-classifier"


def _subset(clips: LoadedClips, keep: IntArray) -> LoadedClips:
    return LoadedClips(
        x=clips.x[keep], y=clips.y[keep], files=tuple(clips.files[i] for i in keep), skipped=()
    )


def _silence_clips(
    noises: tuple[FloatArray, ...], count: int, label: int, length: int, rng: np.random.Generator
) -> LoadedClips:
    """Silence cut from the noise bank at random levels (when the folder has none)."""
    clips = np.zeros((count, length), dtype=np.float32)
    for i in range(count):
        if noises and rng.random() < 0.9:
            noise = noises[int(rng.integers(len(noises)))]
            if noise.shape[0] < length:
                noise = np.tile(noise, length // noise.shape[0] + 1)
            start = int(rng.integers(0, noise.shape[0] - length + 1))
            clips[i] = noise[start : start + length] * 10.0 ** (rng.uniform(-40.0, 0.0) / 20.0)
    return LoadedClips(x=clips, y=np.full(count, label, dtype=np.int64), files=(), skipped=())


def load_audio_dataset(data_dir: Path, options: AudioTrainOptions) -> AudioDataset:
    """Index, split by speaker, read every clip and gather the noise bank."""
    spec = options.preprocessing()
    index: ClipIndex = index_folder(data_dir, options.keywords)
    split = split_by_speaker(index.speakers, options.val_fraction, options.test_fraction,
                             options.seed)  # fmt: skip
    labels = index.labels
    generated_silence = SILENCE not in labels
    if generated_silence:
        labels = tuple(sorted((*labels, SILENCE)))
    remap = np.asarray([labels.index(label) for label in index.labels], dtype=np.int64)
    everything = load_clips(index.files, remap[index.y], spec.sample_rate, spec.clip_samples)
    position = {path: i for i, path in enumerate(everything.files)}
    parts = []
    for chosen in (split.train, split.val, split.test):
        kept = [position[index.files[i]] for i in chosen if index.files[i] in position]
        parts.append(_subset(everything, np.asarray(kept, dtype=np.int64)))
    train, val, test = parts
    if len(train) == 0:
        raise DatasetError(f"{data_dir} left no readable clips for training")
    rng = np.random.default_rng([options.seed, 3])
    noises: list[FloatArray] = load_noise(index.noise_files, spec.sample_rate)
    silence = labels.index(SILENCE)
    if not generated_silence:
        # Real silence clips of the training speakers are recorded background noise.
        noises += [clip for clip, y in zip(train.x, train.y, strict=True) if y == silence]
    if options.generated_noise or not noises:
        noises += noise_bank(GENERATED_NOISE_S, rng, spec.sample_rate)
    bank = tuple(noises)
    if options.synthetic_voices:
        train = _concat(train, _synthetic(labels, options, spec.clip_samples, rng))
    if generated_silence:
        counts = np.bincount(train.y, minlength=len(labels))
        average = int(np.mean(counts[counts > 0]))
        # A split with no speakers (a fraction of 0) stays empty.
        train, val, test = (
            _concat(part, _silence_clips(bank, max(1, average * len(part) // len(train)),
                                         silence, spec.clip_samples, rng))
            if len(part) else part
            for part in (train, val, test)
        )  # fmt: skip
    unattributed = {s for s in index.speakers if s.startswith(UNATTRIBUTED)}
    return AudioDataset(
        root=Path(data_dir),
        labels=labels,
        train=train,
        val=val,
        test=test,
        noises=bank,
        generated_silence=generated_silence,
        # Real speakers only: a file with no speaker id is split on its own but is
        # nobody's voice.
        speakers={
            name: len({index.speakers[i] for i in part} - unattributed)
            for name, part in (("train", split.train), ("val", split.val), ("test", split.test))
        },
    )


def _synthetic(
    labels: tuple[str, ...], options: AudioTrainOptions, length: int, rng: np.random.Generator
) -> LoadedClips:
    from training.synthetic.speech import espeak_available, synthetic_clips, synthetic_voices

    if not espeak_available():
        raise EdgewatchError(
            "synthetic voices need espeak-ng (sudo apt-get install espeak-ng), or train "
            "without them"
        )
    voices = synthetic_voices(options.synthetic_voices, rng)
    clips, y = synthetic_clips(labels, voices, clip_samples=length,
                               sample_rate=options.sample_rate, rng=rng)  # fmt: skip
    log.info("added %d espeak-ng clips (%d voice settings) to the training split", len(y),
             len(voices))  # fmt: skip
    return LoadedClips(x=clips, y=y, files=(), skipped=())


def _concat(a: LoadedClips, b: LoadedClips) -> LoadedClips:
    return LoadedClips(
        x=np.concatenate([a.x, b.x]), y=np.concatenate([a.y, b.y]), files=a.files, skipped=()
    )


def normalised_spec(extractor: FeatureExtractor, clips: FloatArray) -> AudioPreprocessing:
    """The preprocessing with per-feature mean and std of the clean training clips."""
    raw = extractor.raw_clip_features(clips).reshape(-1, extractor.coefficients)
    mean = raw.astype(np.float64).mean(axis=0)
    std = np.maximum(raw.astype(np.float64).std(axis=0), 1e-3)
    return extractor.spec.model_copy(
        update={"mean": tuple(round(float(v), 6) for v in mean),
                "std": tuple(round(float(v), 6) for v in std)}
    )  # fmt: skip


def model_inputs(extractor: FeatureExtractor, clips: FloatArray, batch: int = 512) -> FloatArray:
    """(clips, samples) → (clips, frames, coefficients, 1), in batches to bound memory."""
    parts = [extractor.clip_features(clips[i : i + batch]) for i in range(0, len(clips), batch)]
    if not parts:
        spec = extractor.spec
        return np.zeros((0, *spec.input_shape), dtype=np.float32)
    return np.concatenate(parts)[..., np.newaxis]


def training_batches(
    dataset: AudioDataset,
    extractor: FeatureExtractor,
    *,
    batch_size: int,
    seed: int,
    augmentation: AudioAugmentation | None,
    weights: FloatArray | None,
    classes: int,
    mixup: float = 0.0,
) -> Iterator[tuple[FloatArray, FloatArray, FloatArray]]:
    """Endless (features, one-hot labels, sample weights) batches, epoch after epoch;
    augmentation draws are a function of the seed alone."""
    train = dataset.train
    count = len(train)
    size = min(batch_size, count)
    steps = math.ceil(count / size)
    eye = np.eye(classes, dtype=np.float32)
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        order = np.concatenate([order, order[: steps * size - count]])
        rng = np.random.default_rng([seed, epoch, 1])
        for step in range(steps):
            chosen = np.sort(order[step * size : (step + 1) * size])
            clips, y = train.x[chosen], train.y[chosen]
            if augmentation is not None:
                clips = augmentation.waveforms(
                    clips, y, silence=dataset.silence_index, noises=dataset.noises, rng=rng,
                    sample_rate=extractor.spec.sample_rate,
                )  # fmt: skip
            features = extractor.clip_features(clips)
            if augmentation is not None:
                features = augmentation.features(features, rng)
            w = weights[y] if weights is not None else np.ones(len(y), dtype=np.float32)
            targets = eye[y]
            if mixup > 0:
                share = rng.beta(mixup, mixup, size=len(y)).astype(np.float32)
                partner = rng.permutation(len(y))
                features = _blend(features, features[partner], share)
                targets = _blend(targets, targets[partner], share)
                w = _blend(w, w[partner], share)
            yield features[..., np.newaxis], targets, w.astype(np.float32)
        epoch += 1


def _blend(a: FloatArray, b: FloatArray, share: FloatArray) -> FloatArray:
    weight = share.reshape(-1, *([1] * (a.ndim - 1)))
    blended: FloatArray = (weight * a + (1.0 - weight) * b).astype(np.float32)
    return blended


def train_audio_classifier(
    data_dir: Path, out_dir: Path, options: AudioTrainOptions | None = None
) -> AudioTrainResult:
    """Train, test on the held-out speakers and write the trained-model folder."""
    options = options or AudioTrainOptions()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = load_audio_dataset(data_dir, options)
    spec = normalised_spec(FeatureExtractor(options.preprocessing()), dataset.train.x)
    extractor = FeatureExtractor(spec)
    keras = import_keras()
    device = configure_devices(options.seed, mixed_precision=False)
    name = model_name(options, data_dir)
    model, history = _fit(keras, dataset, extractor, options, name)
    return _write_outputs(
        model, history=history, dataset=dataset, extractor=extractor, options=options,
        device=device, name=name, out_dir=out_dir,
    )  # fmt: skip


def _fit(
    keras: Any,
    dataset: AudioDataset,
    extractor: FeatureExtractor,
    options: AudioTrainOptions,
    name: str,
) -> tuple[Any, dict[str, list[float]]]:
    """Train; returns the model to save (an ensemble's averaging view) and the history."""
    from training.models.dscnn import DsCnnSpec, build_dscnn, build_dscnn_ensemble
    from training.train_image import _progress_callback

    spec = extractor.spec
    classes = len(dataset.labels)
    architecture = DsCnnSpec(
        num_classes=classes, frames=spec.frames, coefficients=spec.coefficients,
        width=options.width, blocks=options.blocks, dropout=options.dropout,
    )  # fmt: skip
    branches = options.ensemble
    if branches > 1:
        ensemble = build_dscnn_ensemble(architecture, branches, name=_NAME_CHARS.sub("_", name))
        trained, model = ensemble.training, ensemble.inference
        metric: Any = _ensemble_accuracy(keras)
    else:
        model = trained = build_dscnn(architecture, name=_NAME_CHARS.sub("_", name))
        metric = "accuracy"
    batch = min(options.batch_size, len(dataset.train))
    steps = math.ceil(len(dataset.train) / batch)
    schedule = keras.optimizers.schedules.CosineDecay(
        options.learning_rate, decay_steps=options.epochs * steps, alpha=0.02
    )
    trained.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        # Over an ensemble's stacked outputs: the mean of the branches' own losses.
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=[metric],
    )
    weights = class_weight_table(dataset.train.y, classes) if options.class_weights else None
    has_val = len(dataset.val) > 0
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=options.patience, restore_best_weights=True,
            start_from_epoch=min(options.warmup_epochs, options.epochs - 1),
        ),
        _progress_callback(keras, options.epochs, steps, options.progress),
    ]  # fmt: skip
    validation = None
    if has_val:
        eye = np.eye(classes, dtype=np.float32)
        validation = (model_inputs(extractor, dataset.val.x),
                      _per_branch(eye[dataset.val.y], branches))  # fmt: skip
    log.info(
        "training %s on %d clips of %d speakers (%d validation, %d test clips), %d classes, "
        "%d steps/epoch, %d DS-CNN branch(es)", name, len(dataset.train),
        dataset.speakers["train"], len(dataset.val), len(dataset.test), classes, steps, branches,
    )  # fmt: skip
    batches = training_batches(
        dataset, extractor, batch_size=batch, seed=options.seed,
        augmentation=options.augmentation, weights=weights, classes=classes,
        mixup=options.mixup,
    )  # fmt: skip
    fitted = trained.fit(
        ((x, _per_branch(y, branches), _per_branch(w, branches)) for x, y, w in batches),
        steps_per_epoch=steps,
        epochs=options.epochs,
        validation_data=validation,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )  # fmt: skip
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return model, history


def _per_branch(values: FloatArray, branches: int) -> FloatArray:
    """Targets or sample weights repeated for each branch of an ensemble (axis 1).

    The loss over the stacked outputs is then the mean of the branches' own losses, so
    each branch is trained on its own (the branches share no weights), while the weight
    decay of every branch is added in full: relative to its data term a branch's weight
    decay is ``branches`` times a single model's. Measured on Speech Commands'
    validation speakers (docs/audio.md), that was better than the sum of the losses
    (exactly independent training): 0.871 against 0.845.
    """
    if branches == 1:
        return values
    repeated: FloatArray = np.repeat(values[:, np.newaxis], branches, axis=1)
    return repeated


def _ensemble_accuracy(keras: Any) -> Any:
    """Accuracy of the branches' average (what the saved model outputs), reported as
    ``accuracy``/``val_accuracy`` like a single model's."""
    ops = keras.ops

    def accuracy(y_true: Any, y_pred: Any) -> Any:
        averaged = ops.mean(y_pred, axis=1)
        hits = ops.equal(ops.argmax(averaged, axis=-1), ops.argmax(y_true[:, 0], axis=-1))
        return ops.cast(hits, "float32")

    return accuracy


def _predict(model: Any, x: FloatArray) -> IntArray:
    if len(x) == 0:
        return np.empty(0, dtype=np.int64)
    return np.asarray(np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1),
                      dtype=np.int64)  # fmt: skip


def _judged_clips(dataset: AudioDataset, seed: int) -> tuple[LoadedClips, str]:
    """The clips the report and ``convert``'s parity check are measured on, and their
    name: the held-out speakers; with none held out (a model trained on every speaker,
    to ship), the validation speakers; with neither, a sample of the training clips,
    which measures only the agreement between the Keras model and its conversions."""
    if len(dataset.test):
        return dataset.test, HELDOUT_SPEAKERS
    if len(dataset.val):
        return dataset.val, "validation speakers (no held-out speakers)"
    count = min(PARITY_TRAINING_CLIPS, len(dataset.train))
    chosen = np.sort(np.random.default_rng([seed, 5]).choice(len(dataset.train), count,
                                                             replace=False))  # fmt: skip
    # Generated silence has no file, so the sample names none.
    sample = LoadedClips(x=dataset.train.x[chosen], y=dataset.train.y[chosen], files=(),
                         skipped=())  # fmt: skip
    return sample, "training clips (no held-out or validation speakers)"


def _write_outputs(
    model: Any,
    *,
    history: Mapping[str, list[float]],
    dataset: AudioDataset,
    extractor: FeatureExtractor,
    options: AudioTrainOptions,
    device: DeviceInfo,
    name: str,
    out_dir: Path,
) -> AudioTrainResult:
    spec = extractor.spec
    judged, judged_name = _judged_clips(dataset, options.seed)
    judged_x = model_inputs(extractor, judged.x)
    val_x = model_inputs(extractor, dataset.val.x)
    metrics = compute_metrics(judged.y, _predict(model, judged_x), dataset.labels)
    val_accuracy = float(np.mean(_predict(model, val_x) == dataset.val.y)) if len(val_x) else 0.0
    has_test = len(dataset.test) > 0
    epochs_run = len(history.get("loss", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    model.save(model_path)
    provenance = {
        "data_dir": dataset.root.resolve().name,
        "split": "by speaker",
        "train_clips": str(len(dataset.train)),
        "val_clips": str(len(dataset.val)),
        "test_clips": str(len(dataset.test)),
        "train_speakers": str(dataset.speakers["train"]),
        "val_speakers": str(dataset.speakers["val"]),
        "test_speakers": str(dataset.speakers["test"]),
        PARITY_CLIPS_KEY: judged_name,
        "generated_silence": str(dataset.generated_silence).lower(),
        "synthetic_voices": str(options.synthetic_voices),
        "mixup": str(options.mixup),
        "noise_recordings": str(len(dataset.noises)),
        "epochs_requested": str(options.epochs),
        "epochs_run": str(epochs_run),
        "seed": str(options.seed),
        "architecture": f"ds-cnn width {options.width} blocks {options.blocks}"
        + (f", ensemble of {options.ensemble}" if options.ensemble > 1 else ""),
        "features": f"{spec.features} {spec.coefficients}x{spec.frames}",
        "tensorflow": device.tensorflow_version,
        "keras": device.keras_version,
        "trained_on": device.describe(),
    }
    info = TrainedModelInfo(
        name=name,
        version=options.version,
        task="audio-classification",
        labels=dataset.labels,
        preprocessing=spec,
        background_labels=tuple(x for x in dataset.labels if x in BACKGROUND_LABELS),
        outputs_probabilities=True,
        default_threshold=0.6,
        heldout_accuracy=metrics.accuracy if has_test and metrics.samples else None,
        provenance=provenance,
    )
    write_info(out_dir, info)
    write_feature_samples(out_dir / HELDOUT_FILE, FeatureSamples(x=judged_x, y=judged.y))
    (out_dir / HELDOUT_LIST).write_text(
        "".join(f"{p.relative_to(dataset.root).as_posix()}\n" for p in dataset.test.files),
        encoding="utf-8",
    )
    chosen = np.sort(
        np.random.default_rng([options.seed, 2]).choice(
            len(dataset.train), min(CALIBRATION_SAMPLES, len(dataset.train)), replace=False
        )
    )
    write_feature_samples(
        out_dir / CALIBRATION_FILE,
        FeatureSamples(x=model_inputs(extractor, dataset.train.x[chosen]), y=None),
    )
    report = write_report(
        out_dir / REPORT_DIR,
        metrics,
        title=f"{name} {options.version}: Keras model on the {judged_name}",
        history=dict(history),
        extra={"data": dataset.root.resolve().name, "epochs run": epochs_run,
               "seed": options.seed, "validation accuracy": round(val_accuracy, 4),
               "speakers (train/val/test)": "/".join(
                   str(dataset.speakers[k]) for k in ("train", "val", "test")),
               "trained on": device.describe()},
    )  # fmt: skip
    log.info("%s: accuracy %.4f (validation %.4f) after %d epochs; %s",
             judged_name, metrics.accuracy, val_accuracy, epochs_run, out_dir)  # fmt: skip
    return AudioTrainResult(
        out_dir=out_dir,
        model_path=model_path,
        info_path=out_dir / INFO_FILE,
        epochs_run=epochs_run,
        test_accuracy=metrics.accuracy if has_test else None,
        val_accuracy=val_accuracy,
        labels=dataset.labels,
        train_clips=len(dataset.train),
        val_clips=len(dataset.val),
        test_clips=len(dataset.test),
        device=device,
        report=report,
    )
