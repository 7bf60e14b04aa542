"""Training an audio classifier: Speech Commands conventions, speaker splits, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from converters.model_dir import read_feature_samples, read_info
from device.bundle.manifest import AudioPreprocessing
from device.errors import DatasetError
from training.audio_augment import AudioAugmentation, _at_snr, _shift
from training.datasets.speech_folder import (
    UNATTRIBUTED,
    index_folder,
    speaker_of,
    split_by_speaker,
)

RATE = 16_000


def test_speaker_of_follows_speech_commands_names() -> None:
    assert speaker_of(Path("yes/0a7c2a8d_nohash_0.wav")) == "0a7c2a8d"
    # The test set's _unknown_ prefixes the word: the speaker is still the hash.
    assert speaker_of(Path("_unknown_/backward_0a7c2a8d_nohash_3.wav")) == "0a7c2a8d"
    assert speaker_of(Path("_silence_/1024.wav")) == "file:_silence_/1024"
    assert speaker_of(Path("_silence_/1024.wav")).startswith(UNATTRIBUTED)


def test_split_keeps_every_speaker_in_one_split() -> None:
    rng = np.random.default_rng(0)
    speakers = [f"s{int(i)}" for i in rng.integers(0, 120, size=1000)]
    split = split_by_speaker(speakers, 0.1, 0.15, seed=3)
    parts = [set(np.asarray(speakers)[idx]) for idx in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(split.train) + len(split.val) + len(split.test) == 1000
    assert 0.08 < len(split.val) / 1000 < 0.12 and 0.13 < len(split.test) / 1000 < 0.17
    again = split_by_speaker(speakers, 0.1, 0.15, seed=3)
    assert np.array_equal(again.test, split.test)
    other = split_by_speaker(speakers, 0.1, 0.15, seed=4)
    assert not np.array_equal(other.test, split.test)
    with pytest.raises(DatasetError):
        split_by_speaker(speakers, 0.6, 0.5, seed=0)


def _folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for label, names in layout.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            soundfile.write(root / label / name, np.zeros(RATE // 4, dtype=np.float32), RATE)
    return root


def test_keywords_fold_other_words_into_unknown(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {
        "yes": ["a_nohash_0.wav", "b_nohash_0.wav"], "no": ["a_nohash_0.wav"],
        "bird": ["c_nohash_0.wav"], "_unknown_": ["dog_d_nohash_0.wav"],
        "_background_noise_": ["white_noise.wav"],
    })  # fmt: skip
    every = index_folder(root)
    assert every.labels == ("_unknown_", "bird", "no", "yes")
    assert every.noise_files == (root / "_background_noise_" / "white_noise.wav",)
    folded = index_folder(root, keywords=["yes", "no"])
    assert folded.labels == ("_unknown_", "no", "yes")
    assert folded.counts() == {"_unknown_": 2, "no": 1, "yes": 2}
    with pytest.raises(DatasetError, match="maybe"):
        index_folder(root, keywords=["yes", "maybe"])
    with pytest.raises(DatasetError, match="no audio files"):
        index_folder(_folder(tmp_path / "empty", {"yes": []}))


def test_augmentation_shifts_mixes_and_masks() -> None:
    clip = np.zeros(RATE, dtype=np.float32)
    clip[8000:8100] = 1.0
    assert _shift(clip, 160)[8160:8260].sum() == 100 and _shift(clip, -160)[7840:7940].sum() == 100
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
    signal = np.sin(np.arange(RATE) / 5).astype(np.float32)
    mixed = _at_snr(signal, noise, 10.0)
    snr = 10 * np.log10(np.mean(signal**2) / np.mean(mixed**2))
    assert snr == pytest.approx(10.0, abs=0.01)
    augmentation = AudioAugmentation()
    rng = np.random.default_rng(1)
    batch = np.stack([signal * 0.1] * 8)
    out = augmentation.waveforms(batch, np.zeros(8, dtype=np.int64), silence=None,
                                 noises=[noise], rng=rng, sample_rate=RATE)  # fmt: skip
    assert out.shape == batch.shape and out.dtype == np.float32 and np.abs(out).max() <= 1.0
    assert not np.array_equal(out[0], out[1])
    features = np.ones((4, 49, 10), dtype=np.float32)
    masked = augmentation.features(features, rng)
    assert masked.shape == features.shape and (masked == 0).any() and (masked == 1).any()


def test_trained_folder_holds_what_convert_needs(keyword_model_dir: Path) -> None:
    """Training writes features computed by the device's code, normalisation stats in
    the preprocessing, generated _silence_ (the espeak folder has none) and a report."""
    info = read_info(keyword_model_dir)
    spec = info.preprocessing
    assert isinstance(spec, AudioPreprocessing) and len(spec.mean) == spec.coefficients
    assert info.task == "audio-classification"
    assert info.labels == ("_silence_", "_unknown_", "left", "stop", "yes")
    assert info.background_labels == ("_silence_", "_unknown_")
    assert info.provenance["generated_silence"] == "true"
    assert info.provenance["split"] == "by speaker"
    heldout = read_feature_samples(keyword_model_dir / "heldout.npz")
    assert heldout.x.shape[1:] == spec.input_shape and heldout.y is not None
    assert set(heldout.y.tolist()) >= {0}  # generated silence is held out too
    listed = (keyword_model_dir / "heldout_files.txt").read_text().splitlines()
    assert listed and all((keyword_model_dir.parent / "data" / line).is_file() for line in listed)
    assert len(listed) == int((heldout.y != 0).sum())  # every held-out clip but silence
    calibration = read_feature_samples(keyword_model_dir / "calibration.npz")
    assert calibration.y is None and len(calibration) > 50
    report = json.loads((keyword_model_dir / "report" / "report.json").read_text())
    assert len(report["confusion_matrix"]) == 5
    assert (keyword_model_dir / "report" / "confusion_matrix.png").is_file()


def test_cli_train_options_for_audio(capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import _given, build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                              "--keywords", "yes,no", "--features", "log-mel"])  # fmt: skip
    assert args.keywords == "yes,no" and args.features == "log-mel" and not _given(args, "epochs")
    args = parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                              "--epochs", "7"])  # fmt: skip
    assert args.epochs == 7 and _given(args, "epochs")
    assert args.ensemble is None  # AudioTrainOptions' default applies
    args = parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                              "--ensemble", "1"])  # fmt: skip
    assert args.ensemble == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                           "--ensemble", "0"])  # fmt: skip
    assert args.val_fraction is None and args.test_fraction is None  # the options' defaults
    args = parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                              "--val-fraction", "0.2", "--test-fraction", "0"])  # fmt: skip
    assert args.val_fraction == 0.2 and args.test_fraction == 0.0
    from device.cli import main

    code = main(["train", "object-detection", "data", "--out", "m", "--test-fraction", "0"])
    assert code == 2
    assert "only audio-classification takes a split share" in capsys.readouterr().err
    for bad in ("1", "-0.1", "half"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "audio-classification", "data", "--out", "m",
                               "--test-fraction", bad])  # fmt: skip


def test_a_model_to_ship_trains_on_every_speaker(tmp_path: Path) -> None:
    """--val-fraction 0 --test-fraction 0: every clip trains; nothing is claimed about
    unheard speakers (no held-out accuracy, an empty held-out list), the report and the
    conversion's parity use a sample of training clips and say so, and int8 conversion
    works as usual. Fractions that leave nothing to train on are refused."""
    from converters.convert import convert_model
    from tests.helpers_audio import make_keyword_folder
    from training.train_audio import AudioTrainOptions, train_audio_classifier

    data = make_keyword_folder(tmp_path / "data")
    options = AudioTrainOptions(
        epochs=2, batch_size=32, width=16, blocks=1, ensemble=1, val_fraction=0.0,
        test_fraction=0.0, progress=False, name="everyone", version="1",
    )  # fmt: skip
    trained = train_audio_classifier(data, tmp_path / "model", options)
    assert trained.test_accuracy is None and trained.test_clips == 0 and trained.val_clips == 0
    info = read_info(trained.out_dir)
    assert info.heldout_accuracy is None
    assert info.provenance["test_speakers"] == "0" and info.provenance["val_speakers"] == "0"
    assert info.provenance["report_and_parity_clips"].startswith("training clips")
    assert (trained.out_dir / "heldout_files.txt").read_text() == ""
    judged = read_feature_samples(trained.out_dir / "heldout.npz")
    assert judged.y is not None and 0 < len(judged) <= trained.train_clips
    report = json.loads((trained.out_dir / "report" / "report.json").read_text())
    assert "training clips" in report["title"]
    converted = convert_model(trained.out_dir, "int8", tmp_path / "everyone-int8.ewm")
    assert converted.parity.samples == len(judged)
    assert any("not on unheard speakers" in warning for warning in converted.warnings)
    with pytest.raises(DatasetError, match="leave clips for training"):
        train_audio_classifier(data, tmp_path / "none", AudioTrainOptions(
            epochs=1, val_fraction=0.5, test_fraction=0.5, progress=False))  # fmt: skip


def test_ensemble_trains_branches_and_exports_their_average(tmp_path: Path) -> None:
    """An ensemble is one Keras model whose output is the mean of its branches' softmax
    outputs; the branches start from different weights, the history reports the
    average's accuracy, and int8 conversion through the device runtime still works."""
    import keras

    from converters.convert import convert_model
    from converters.edgetpu import edgetpu_report
    from device.bundle.reader import read_bundle
    from tests.helpers_audio import make_keyword_folder
    from training.train_audio import AudioTrainOptions, train_audio_classifier

    data = make_keyword_folder(tmp_path / "data")
    options = AudioTrainOptions(
        epochs=3, batch_size=32, width=16, blocks=1, ensemble=2, val_fraction=0.1,
        test_fraction=0.1, progress=False, name="ensemble", version="1",
    )  # fmt: skip
    trained = train_audio_classifier(data, tmp_path / "model", options)
    report = json.loads((trained.out_dir / "report" / "report.json").read_text())
    assert len(report["history"]["val_accuracy"]) == trained.epochs_run
    model = keras.models.load_model(trained.model_path)
    heldout = read_feature_samples(trained.out_dir / "heldout.npz")
    branches = keras.Model(
        model.inputs, [model.get_layer(f"b{i}_scores").output for i in (1, 2)]
    ).predict(heldout.x, verbose=0)
    averaged = model.predict(heldout.x, verbose=0)
    assert averaged.shape == (len(heldout), len(trained.labels))
    np.testing.assert_allclose(averaged, (branches[0] + branches[1]) / 2, atol=1e-6)
    assert not np.allclose(branches[0], branches[1], atol=1e-3)
    assert read_info(trained.out_dir).provenance["architecture"].endswith("ensemble of 2")
    converted = convert_model(trained.out_dir, "int8", tmp_path / "ensemble-int8.ewm")
    bundle = read_bundle(converted.out)
    assert bundle.manifest.labels == trained.labels
    assert converted.parity.top1_agreement >= 0.9
    assert not any("unheard" in warning for warning in converted.warnings)
    ops = edgetpu_report(bundle.model_bytes, run_compiler=False)
    assert ops.all_supported, [op.op_name for op in ops.unsupported]
